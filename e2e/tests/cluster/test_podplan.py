"""Pod spec → process plan: env, downward API, quantities, volumes, image mapping."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from meshtest.cluster import images, podplan

POD: dict[str, Any] = {
    "metadata": {
        "name": "echo-1",
        "namespace": "ns1",
        "uid": "u-1",
        "labels": {"app": "echo"},
        "annotations": {"a": "b"},
    },
    "spec": {
        "nodeName": "amb-w1",
        "serviceAccountName": "sa1",
        "containers": [
            {
                "name": "app",
                "image": "localhost:5000/app:istio-testing",
                "args": ["--port", "$(PORT)", "$$(PORT)"],
                "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}},
                "envFrom": [
                    {"configMapRef": {"name": "cm"}, "prefix": "CM_"},
                    {"secretRef": {"name": "sec"}},
                ],
                "env": [
                    {"name": "PORT", "value": "8080"},
                    {"name": "URL", "value": "http://$(POD_NAME):$(PORT)/$(MISSING)"},
                    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                    {"name": "SA", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
                    {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                    {
                        "name": "CPU",
                        "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}},
                    },
                    {
                        "name": "MEM",
                        "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
                    },
                    {"name": "REQ_CPU", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu"}}},
                    {"name": "KEY", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k1"}}},
                    {"name": "SKEY", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "token"}}},
                    {
                        "name": "OPT",
                        "valueFrom": {"secretKeyRef": {"name": "nope", "key": "x", "optional": True}},
                    },
                ],
                "volumeMounts": [
                    {"name": "cfg", "mountPath": "/etc/cfg", "readOnly": True},
                    {"name": "host", "mountPath": "/var/run/ztunnel"},
                ],
            }
        ],
        "volumes": [
            {"name": "cfg", "configMap": {"name": "cm", "items": [{"key": "k1", "path": "sub/one"}]}},
            {"name": "host", "hostPath": {"path": "/var/run/ztunnel", "type": "DirectoryOrCreate"}},
            {"name": "netns", "hostPath": {"path": "/var/run/netns"}},
            {
                "name": "tok",
                "projected": {
                    "sources": [
                        {
                            "serviceAccountToken": {
                                "audience": "istio-ca",
                                "expirationSeconds": 43200,
                                "path": "istio-token",
                            }
                        },
                        {
                            "configMap": {
                                "name": "kube-root-ca.crt",
                                "items": [{"key": "ca.crt", "path": "ca.crt"}],
                            }
                        },
                        {
                            "downwardAPI": {
                                "items": [
                                    {"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}
                                ]
                            }
                        },
                    ]
                },
            },
            {
                "name": "pod-info",
                "downwardAPI": {
                    "items": [
                        {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                        {
                            "path": "cpu",
                            "resourceFieldRef": {
                                "containerName": "app",
                                "resource": "limits.cpu",
                                "divisor": "1m",
                            },
                        },
                    ]
                },
            },
        ],
    },
    "status": {"podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}]},
}


def sources() -> podplan.Sources:
    return podplan.Sources(
        configmaps={
            "cm": {"data": {"k1": "v1", "k2": "v2"}},
            "kube-root-ca.crt": {"data": {"ca.crt": "PEM"}},
        },
        secrets={"sec": {"data": {"token": base64.b64encode(b"s3cret").decode()}}},
        tokens={("istio-ca", 43200): "jwt"},
        node_cpu=2,
        node_memory=2 * 1024**3,
    )


def test_references_collects_everything() -> None:
    refs = podplan.references(POD)
    assert refs.configmaps == {"cm", "kube-root-ca.crt"}
    assert refs.secrets == {"sec", "nope"}
    assert refs.tokens == {("istio-ca", 43200)}


def test_env_resolution_follows_kubelet_rules() -> None:
    env = podplan.container_env(POD, POD["spec"]["containers"][0], sources())
    assert env["CM_k1"] == "v1"
    assert env["CM_k2"] == "v2"
    assert env["token"] == "s3cret"
    assert env["URL"] == "http://$(POD_NAME):8080/$(MISSING)"  # POD_NAME is defined later: not expanded
    assert (env["POD_NAME"], env["NS"], env["NODE"], env["IP"], env["SA"]) == (
        "echo-1",
        "ns1",
        "amb-w1",
        "10.244.1.5",
        "sa1",
    )
    assert env["APP"] == "echo"
    assert (env["CPU"], env["MEM"], env["REQ_CPU"]) == ("500", "128", "1")  # request defaults to the limit
    assert env["KEY"] == "v1"
    assert env["SKEY"] == "s3cret"
    assert "OPT" not in env
    assert env["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"


def test_missing_required_configmap_is_a_plan_error() -> None:
    src = sources()
    del src.configmaps["cm"]
    with pytest.raises(podplan.PlanError) as err:
        podplan.container_env(POD, POD["spec"]["containers"][0], src)
    assert err.value.reason == "CreateContainerConfigError"


def test_container_plan_maps_image_expands_args_and_mounts() -> None:
    plan = podplan.container_plan(
        POD,
        POD["spec"]["containers"][0],
        sources(),
        volume_dirs={"cfg": "/pod/volumes/cfg", "host": "/node/root/var/run/ztunnel"},
        python="/venv/python",
    )
    assert plan.argv == ("/venv/python", "-m", "meshtest.echo", "server", "--port", "8080", "$(PORT)")
    assert plan.mounts == (
        podplan.Mount("/pod/volumes/cfg", "/etc/cfg", True),
        podplan.Mount("/node/root/var/run/ztunnel", "/var/run/ztunnel", False),
    )


def test_unknown_image_fails_loudly() -> None:
    container = {"name": "x", "image": "docker.io/library/nginx:1.27"}
    with pytest.raises(podplan.PlanError) as err:
        podplan.container_plan(POD, container, sources(), volume_dirs={})
    assert err.value.reason == "ErrImagePull"
    assert "nginx" in str(err.value)


def test_image_command_table() -> None:
    assert images.repository_name("localhost:5000/istio/ztunnel:1.2@sha256:ab") == "ztunnel"
    argv = images.resolve("hub/install-cni:t", ["install-cni"], ["--log_output_level=info"], python="py")
    assert argv == ["py", "-m", "istio_cni", "--log_output_level=info"]
    with pytest.raises(images.UnknownImage):
        images.resolve("hub/install-cni:t", ["bash"], [])


def test_volume_files() -> None:
    src = sources()
    volumes = {v["name"]: v for v in POD["spec"]["volumes"]}
    assert podplan.volume_files(POD, volumes["cfg"], src) == {"sub/one": (b"v1", 0o644)}
    projected = podplan.volume_files(POD, volumes["tok"], src)
    assert projected == {
        "istio-token": (b"jwt", 0o644),
        "ca.crt": (b"PEM", 0o644),
        "namespace": (b"ns1", 0o644),
    }
    info = podplan.volume_files(POD, volumes["pod-info"], src)
    assert info == {"labels": (b'app="echo"', 0o644), "cpu": (b"500", 0o644)}
    assert podplan.volume_files(POD, volumes["host"], src) is None


def test_host_paths_resolve_inside_the_node_root_except_shared_ones() -> None:
    volumes = {v["name"]: v for v in POD["spec"]["volumes"]}
    assert podplan.host_path(volumes["host"], "/run/nodes/amb-w1/root") == (
        "/run/nodes/amb-w1/root/var/run/ztunnel",
        "DirectoryOrCreate",
    )
    assert podplan.host_path(volumes["netns"], "/run/nodes/amb-w1/root") == ("/var/run/netns", "")


@pytest.mark.parametrize(
    ("text", "value"), [("500m", "0.5"), ("2", "2"), ("1Gi", str(1024**3)), ("1k", "1000")]
)
def test_quantity(text: str, value: str) -> None:
    assert podplan.quantity(text) == podplan.Decimal(value)


def test_expand() -> None:
    assert podplan.expand("$(A)-$$(A)-$(B)-$", {"A": "x"}) == "x-$(A)-$(B)-$"


def test_resolv_conf() -> None:
    cluster = podplan.resolv_conf({}, "ns1", "10.96.0.10", "nameserver 1.1.1.1\n")
    search = "search ns1.svc.cluster.local svc.cluster.local cluster.local"
    assert cluster == f"{search}\nnameserver 10.96.0.10\noptions ndots:5\n"
    assert podplan.resolv_conf({"hostNetwork": True}, "ns1", "10.96.0.10", "host\n") == "host\n"
    with_host_net = {"hostNetwork": True, "dnsPolicy": "ClusterFirstWithHostNet"}
    assert "nameserver 10.96.0.10" in podplan.resolv_conf(with_host_net, "ns1", "10.96.0.10", "host\n")
    custom = {
        "dnsPolicy": "None",
        "dnsConfig": {
            "nameservers": ["1.2.3.4"],
            "searches": ["a.b"],
            "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}],
        },
    }
    assert podplan.resolv_conf(custom, "ns1", "10.96.0.10", "") == (
        "search a.b\nnameserver 1.2.3.4\noptions ndots:2 edns0\n"
    )
    merged = podplan.resolv_conf(
        {"dnsConfig": {"options": [{"name": "ndots", "value": "1"}]}}, "n", "10.96.0.10", ""
    )
    assert merged.endswith("options ndots:1\n")


def test_hosts_file() -> None:
    spec = {"hostAliases": [{"ip": "10.1.2.3", "hostnames": ["foo.local", "bar.local"]}]}
    text = podplan.hosts_file(spec, "pod-a", ["10.244.1.5"])
    assert "10.244.1.5\tpod-a\n" in text
    assert text.endswith("10.1.2.3\tfoo.local bar.local\n")


@pytest.mark.parametrize(
    ("context", "expected"),
    [
        ({}, sorted(podplan.DEFAULT_CAPABILITIES)),
        ({"privileged": True}, None),
        (
            {"capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "CAP_SYS_ADMIN"]}},
            ["NET_ADMIN", "SYS_ADMIN"],
        ),
        ({"capabilities": {"drop": ["NET_RAW"]}}, sorted(podplan.DEFAULT_CAPABILITIES - {"NET_RAW"})),
        ({"capabilities": {"add": ["ALL"]}}, None),
    ],
)
def test_capabilities(context: dict[str, Any], expected: list[str] | None) -> None:
    caps = podplan.capabilities({"securityContext": context})
    assert (None if caps is None else list(caps)) == expected


def test_service_links() -> None:
    services = [
        {
            "metadata": {"name": "echo-v1"},
            "spec": {"clusterIP": "10.96.3.4", "ports": [{"name": "http", "port": 80}, {"port": 9090}]},
        },
        {"metadata": {"name": "headless"}, "spec": {"clusterIP": "None", "ports": [{"port": 80}]}},
    ]
    src = sources()
    src.services = services
    env = podplan.container_env(POD, {"name": "app"}, src)
    assert env["ECHO_V1_SERVICE_HOST"] == "10.96.3.4"
    assert env["ECHO_V1_SERVICE_PORT"] == "80"
    assert env["ECHO_V1_SERVICE_PORT_HTTP"] == "80"
    assert env["ECHO_V1_PORT"] == "tcp://10.96.3.4:80"
    assert env["ECHO_V1_PORT_9090_TCP_ADDR"] == "10.96.3.4"
    assert not any(key.startswith("HEADLESS_") for key in env)
    assert env["KUBERNETES_SERVICE_HOST"] == "10.96.0.1"
    no_links = dict(POD, spec={**POD["spec"], "enableServiceLinks": False})
    env = podplan.container_env(no_links, {"name": "app"}, src)
    assert "ECHO_V1_SERVICE_HOST" not in env
    assert env["KUBERNETES_PORT_443_TCP"] == "tcp://10.96.0.1:443"
