"""The charts against the components they deploy: every environment variable a chart sets is one the
component reads and parses (loaded through its own settings classes), probes hit the ports the components
serve, images are ones the local cluster's image table runs, istiod's RBAC covers services/istiod/rbac.yaml,
and the workload fields upstream fixes (capabilities, tokens, hostPaths, priority) are as upstream has
them."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import yaml
from meshkit import settings as meshkit_settings
from meshkit.identity.caclient import CaClientSettings
from meshtest.cluster.images import IMAGES, repository_name
from meshtest.e2e import charts
from meshtest.e2e.tools import REPO

Obj = dict[str, Any]
#: upstream variable names the charts keep for operators and tools, though our components do not read them
UPSTREAM_ONLY = {
    "PILOT_ENABLE_AMBIENT",
    "PILOT_CERT_PROVIDER",
    "SERVICE_ACCOUNT",
    "TERMINATION_GRACE_PERIOD_SECONDS",
    "CURRENT_AGENT_VERSION",
    "ZTUNNEL_CPU_LIMIT",
}


@pytest.fixture(scope="module")
def rendered() -> list[Obj]:
    return charts.render("ambient")


def container(objects: list[Obj], kind: str, name: str) -> Obj:
    return dict(charts.one(objects, kind, name)["spec"]["template"]["spec"]["containers"][0])


def literal_env(objects: list[Obj], c: Obj) -> dict[str, str]:
    env = {}
    for ref in c.get("envFrom", []):
        env.update(charts.one(objects, "ConfigMap", ref["configMapRef"]["name"])["data"])
    for var in c.get("env", []):
        env[var["name"]] = var.get("value", "dummy-from-fieldref")
    return env


def settings_vars(*classes: type) -> set[str]:
    key = meshkit_settings._META_VAR  # the variable name env() records on each field
    return {f.metadata[key] for cls in classes for f in dataclasses.fields(cls) if key in f.metadata}


def component_settings() -> dict[tuple[str, str], tuple[type, ...]]:
    from istio_cni.settings import Settings as CniSettings
    from istiod.ca.settings import CaSettings
    from istiod.settings import Settings as IstiodSettings
    from istiod.waypoint.deployment import DeploySettings
    from ztunnel.settings import Settings as ZtunnelSettings

    return {
        ("Deployment", "istiod"): (IstiodSettings, CaSettings, DeploySettings),
        ("DaemonSet", "ztunnel"): (ZtunnelSettings, CaClientSettings),
        ("DaemonSet", "istio-cni-node"): (CniSettings,),
    }


@pytest.mark.parametrize(
    "workload", [("Deployment", "istiod"), ("DaemonSet", "ztunnel"), ("DaemonSet", "istio-cni-node")]
)
def test_every_env_var_is_read_and_parses(rendered: list[Obj], workload: tuple[str, str]) -> None:
    classes = component_settings()[workload]
    env = literal_env(rendered, container(rendered, *workload))
    unknown = set(env) - settings_vars(*classes) - UPSTREAM_ONLY
    assert unknown == set(), f"{workload[1]} sets variables nothing reads: {sorted(unknown)}"
    for cls in classes:  # raises, naming the variable, on a value the component cannot parse
        meshkit_settings.load(cls, env)


def test_probes_hit_the_ports_components_serve(rendered: list[Obj]) -> None:
    from istio_cni.settings import Settings as CniSettings
    from istiod.settings import Settings as IstiodSettings
    from ztunnel.settings import Settings as ZtunnelSettings

    istiod = container(rendered, "Deployment", "istiod")["readinessProbe"]["httpGet"]
    assert (istiod["path"], f":{istiod['port']}") == (
        "/ready",
        ":" + IstiodSettings().readiness_addr.split(":")[-1],
    )
    zt = container(rendered, "DaemonSet", "ztunnel")["readinessProbe"]["httpGet"]
    assert (zt["path"], str(zt["port"])) == (
        "/healthz/ready",
        ZtunnelSettings().readiness_addr.split(":")[-1],
    )
    cni = container(rendered, "DaemonSet", "istio-cni-node")["readinessProbe"]["httpGet"]
    assert (cni["path"], cni["port"]) == ("/readyz", CniSettings().readiness_port)
    assert "livenessProbe" not in zt, (
        "upstream has no liveness probe on ztunnel (restarts would drop traffic)"
    )


def test_images_run_on_the_local_cluster(rendered: list[Obj]) -> None:
    images = {
        c["image"]
        for o in rendered
        if o["kind"] in ("Deployment", "DaemonSet")
        for c in o["spec"]["template"]["spec"]["containers"]
    }
    assert {repository_name(i) for i in images} == {"pilot", "ztunnel", "install-cni"}
    assert all(repository_name(i) in IMAGES for i in images)
    env = literal_env(rendered, container(rendered, "Deployment", "istiod"))
    assert repository_name(env["WAYPOINT_IMAGE"]) in IMAGES


def test_istiod_rbac_covers_the_services_declaration(rendered: list[Obj]) -> None:
    declared = [d for d in yaml.safe_load_all((REPO / "services/istiod/rbac.yaml").read_text()) if d]
    granted: dict[str, set[tuple[str, str, str]]] = {"ClusterRole": set(), "Role": set()}
    for o in rendered:
        if o["kind"] in granted and o["metadata"]["name"].startswith("istiod"):
            granted[o["kind"]] |= expand(o["rules"])
    for decl in declared:
        missing = (
            expand(decl["rules"])
            - granted[decl["kind"]]
            - (granted["ClusterRole"] if decl["kind"] == "Role" else set())
        )
        assert missing == set(), f"{decl['kind']} lacks {sorted(missing)}"


def expand(rules: list[Obj]) -> set[tuple[str, str, str]]:
    return {
        (g, r, v)
        for rule in rules
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


def test_upstream_workload_fields(rendered: list[Obj]) -> None:
    zt_pod = charts.one(rendered, "DaemonSet", "ztunnel")["spec"]["template"]["spec"]
    cni_pod = charts.one(rendered, "DaemonSet", "istio-cni-node")["spec"]["template"]["spec"]
    istiod_pod = charts.one(rendered, "Deployment", "istiod")["spec"]["template"]["spec"]
    assert zt_pod["priorityClassName"] == cni_pod["priorityClassName"] == "system-node-critical"
    zsc = zt_pod["containers"][0]["securityContext"]
    assert sorted(zsc["capabilities"]["add"]) == ["NET_ADMIN", "NET_RAW", "SYS_ADMIN"]
    assert (zsc["runAsUser"], zsc["runAsGroup"], zsc["privileged"]) == (0, 1337, False)
    csc = cni_pod["containers"][0]["securityContext"]
    assert sorted(csc["capabilities"]["add"]) == [
        "DAC_OVERRIDE",
        "NET_ADMIN",
        "NET_RAW",
        "SYS_ADMIN",
        "SYS_PTRACE",
    ]
    isc = istiod_pod["containers"][0]["securityContext"]
    assert isc["runAsNonRoot"]
    assert isc["readOnlyRootFilesystem"]
    assert isc["capabilities"] == {"drop": ["ALL"]}
    for pod in (zt_pod, istiod_pod):
        tokens = [
            s["serviceAccountToken"]
            for v in pod["volumes"]
            for s in v.get("projected", {}).get("sources", [])
            if "serviceAccountToken" in s
        ]
        assert tokens == [{"audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"}]
    zt_paths = {v["hostPath"]["path"] for v in zt_pod["volumes"] if "hostPath" in v}
    cni_paths = {v["hostPath"]["path"] for v in cni_pod["volumes"] if "hostPath" in v}
    assert zt_paths == {"/var/run/ztunnel"}
    assert {"/var/run/ztunnel", "/var/run/istio-cni", "/opt/cni/bin", "/etc/cni/net.d", "/proc"} <= cni_paths
    strategy = charts.one(rendered, "DaemonSet", "ztunnel")["spec"]["updateStrategy"]["rollingUpdate"]
    assert strategy == {"maxSurge": 1, "maxUnavailable": 0}


def test_pdb_only_with_more_than_one_replica() -> None:
    assert not charts.by_kind(charts.render("istiod"), "PodDisruptionBudget")
    ha = charts.render("istiod", values={"autoscaleEnabled": False, "replicaCount": 2})
    assert charts.one(ha, "PodDisruptionBudget", "istiod")["spec"]["minAvailable"] == 1


def test_revision_renames_and_ztunnel_follows() -> None:
    objects = charts.render("ambient", values={"istiod.revision": "canary", "ztunnel.revision": "canary"})
    deploy = charts.one(objects, "Deployment", "istiod-canary")
    assert deploy["spec"]["selector"]["matchLabels"]["istio.io/rev"] == "canary"
    assert charts.one(objects, "Service", "istiod-canary")
    env = literal_env(objects, container(objects, "DaemonSet", "ztunnel"))
    assert env["XDS_ADDRESS"] == env["CA_ADDRESS"] == "istiod-canary.istio-system.svc:15012"
    assert literal_env(objects, deploy["spec"]["template"]["spec"]["containers"][0])["REVISION"] == "canary"


def test_profile_switches_ambient_on() -> None:
    plain = charts.render("cni")
    assert charts.one(plain, "ConfigMap", "istio-cni-config")["data"]["AMBIENT_ENABLED"] == "false"
    ambient = charts.render("cni", values={"profile": "ambient"})
    assert charts.one(ambient, "ConfigMap", "istio-cni-config")["data"]["AMBIENT_ENABLED"] == "true"
    env = literal_env(ambient, container(ambient, "DaemonSet", "istio-cni-node"))
    assert env["HOST_NETNS_PATH"] == ""  # hostNetwork by default: the node namespace is the agent's own


# -- the waypoint Deployment istiod renders, configured by the istiod chart's environment -------------------

#: upstream waypoint variables our waypoint does not read (spec deploy-and-e2e.md §1.5, waypoint template)
WAYPOINT_UPSTREAM_ONLY = {"ISTIO_META_INTERCEPTION_MODE"}


def waypoint_objects(values: dict[str, Any] | None = None) -> dict[str, Obj]:
    """ServiceAccount/Deployment/Service istiod creates for a Gateway, with the settings the chart sets."""
    from istiod.waypoint.deployment import CLASS_NAME, DeploySettings, desired_objects

    objects = charts.render("ambient", values=values or {})
    deploy = meshkit_settings.load(
        DeploySettings, literal_env(objects, container(objects, "Deployment", "istiod"))
    )
    gateway = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "waypoint", "namespace": "apps", "uid": "0b5c9a4e"},
        "spec": {
            "gatewayClassName": CLASS_NAME,
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
        },
    }
    return {kind: obj for kind, obj in desired_objects(gateway, deploy)}


def waypoint_port(addr: str) -> int:
    return int(addr.rsplit(":", 1)[1])


def test_waypoint_objects_fit_kubernetes_schema() -> None:
    from meshtest.e2e import k8sschema

    problems = [p for o in waypoint_objects().values() for p in k8sschema.validate(o)]
    assert problems == []


def test_waypoint_env_is_read_by_the_waypoint() -> None:
    from meshkit.hbone.settings import HboneSettings
    from waypoint.settings import Settings as WaypointSettings

    classes = (WaypointSettings, CaClientSettings, HboneSettings)
    pod = waypoint_objects()["Deployment"]["spec"]["template"]["spec"]
    env = {v["name"]: v.get("value", "dummy-from-fieldref") for v in pod["containers"][0]["env"]}
    unknown = set(env) - settings_vars(*classes) - WAYPOINT_UPSTREAM_ONLY
    assert unknown == set(), f"the waypoint Deployment sets variables nothing reads: {sorted(unknown)}"
    for cls in classes:
        meshkit_settings.load(cls, env)


def test_waypoint_probes_ports_and_scrape_hit_what_the_waypoint_serves() -> None:
    from meshkit.admin import READY_PATH
    from meshkit.metrics import METRICS_PATHS
    from waypoint.settings import Settings as WaypointSettings

    served = WaypointSettings()
    objects = waypoint_objects()
    template = objects["Deployment"]["spec"]["template"]
    c = template["spec"]["containers"][0]
    for probe in ("readinessProbe", "startupProbe"):
        get = c[probe]["httpGet"]
        assert (get["path"], get["port"]) == (READY_PATH, waypoint_port(served.readiness_addr)), probe
    ports = {p["containerPort"] for p in c["ports"]}
    assert ports == {waypoint_port(a) for a in (served.hbone_addr, served.stats_addr, served.readiness_addr)}
    annotations = template["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == waypoint_port(served.stats_addr)
    assert annotations["prometheus.io/path"] in METRICS_PATHS
    service_ports = {p["port"] for p in objects["Service"]["spec"]["ports"]}
    assert service_ports == {waypoint_port(served.hbone_addr), waypoint_port(served.readiness_addr)}


def test_waypoint_image_is_the_proxyv2_image_the_chart_names() -> None:
    objects = waypoint_objects({"global.hub": "reg.test/mesh", "global.tag": "t1"})
    c = objects["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert (c["image"], c["imagePullPolicy"]) == ("reg.test/mesh/proxyv2:t1", "IfNotPresent")
    assert repository_name(c["image"]) in IMAGES


def test_waypoint_security_context_as_upstream() -> None:
    """Upstream's waypoint template: non-root 1337, read-only root filesystem, no privileges. Our waypoint
    writes its certificate and key to a private temporary directory (``ssl`` loads keys only from files), so a
    read-only root needs a writable ``/tmp``."""
    pod = waypoint_objects()["Deployment"]["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["securityContext"] == {
        "privileged": False,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": 1337,
        "runAsGroup": 1337,
        "capabilities": {"drop": ["ALL"]},
    }
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "/tmp" in mounts, "read-only root filesystem without a writable /tmp"
    assert "emptyDir" in volumes[mounts["/tmp"]]
