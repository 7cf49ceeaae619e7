"""Validation by the real kube-apiserver (OpenAPI v3 and CRD structural schemas, strict field validation):
``kubectl apply --dry-run=server --validate=strict`` of every object the charts render, of the custom
resources the suite and the samples apply, and of the Argo CD Applications (against our Application CRD,
installed for the test and removed afterwards)."""

from __future__ import annotations

import copy
import json
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from meshtest.e2e import charts
from meshtest.e2e.mesh import Mesh, exclusive, previous_charts
from meshtest.e2e.samples import applications, scenario_resources, upstream_argo_crds, workloads
from meshtest.e2e.tools import REPO, chart
from meshtest.fixtures import kube_cluster  # noqa: F401 - fixture used by name
from meshtest.kube import KubeCluster

pytestmark = [pytest.mark.cluster, pytest.mark.root]
Obj = dict[str, Any]
#: Helm adopts existing objects carrying these, so CRDs created here are taken over by a later install
ADOPT = {"meta.helm.sh/release-name": "ambient", "meta.helm.sh/release-namespace": "istio-system"}
#: the previous chart release (same commit the e2e suite upgrades from)
PREVIOUS_CHARTS = "12b2449"


@pytest.fixture
def scratch(kube_cluster: KubeCluster) -> Iterator[str]:  # noqa: F811
    name = f"pk-helm-{secrets.token_hex(3)}"
    kube_cluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        kube_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def dry_run(kube: KubeCluster, objects: list[Obj], namespace: str | None = None) -> None:
    args = ["apply", "--dry-run=server", "--validate=strict", "-f", "-"]
    proc = kube.kubectl(
        *args,
        *(["-n", namespace] if namespace else []),
        input=yaml.safe_dump_all(objects),
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr


def in_namespace(objects: list[Obj], namespace: str) -> list[Obj]:
    out = []
    for obj in objects:
        if obj["kind"] == "Namespace":
            continue
        moved = copy.deepcopy(obj)
        if "namespace" in moved["metadata"]:
            moved["metadata"]["namespace"] = namespace
        out.append(moved)
    return out


def ensure_crds(kube: KubeCluster) -> None:
    crds = charts.by_kind(charts.render("ambient"), "CustomResourceDefinition")
    existing = {c["metadata"]["name"] for c in kube.get("crd")["items"]}
    missing = [c for c in crds if c["metadata"]["name"] not in existing]
    for crd in missing:
        crd["metadata"].setdefault("annotations", {}).update(ADOPT)
    if missing:
        kube.apply(missing)
    for crd in crds:
        kube.kubectl("wait", "--for=condition=Established", f"crd/{crd['metadata']['name']}", "--timeout=60s")


@pytest.mark.parametrize(
    "values",
    [
        {},
        {
            "istiod.revision": "canary",
            "ztunnel.revision": "canary",
            "istiod.autoscaleEnabled": False,
            "istiod.replicaCount": 2,
        },
    ],
)
def test_every_rendered_object_passes_server_validation(
    kube_cluster: KubeCluster,  # noqa: F811
    scratch: str,
    values: dict[str, Any],
) -> None:
    objects = charts.render("ambient", namespace=scratch, values=values)
    assert {o["kind"] for o in objects} >= {
        "CustomResourceDefinition",
        "Deployment",
        "DaemonSet",
        "ClusterRole",
    }
    dry_run(kube_cluster, objects)


def test_custom_resources_pass_the_installed_crds(kube_cluster: KubeCluster, scratch: str) -> None:  # noqa: F811
    ensure_crds(kube_cluster)
    dry_run(kube_cluster, in_namespace(scenario_resources() + workloads(), scratch), scratch)
    bad = scenario_resources()[2]
    bad["spec"]["action"] = "PERMIT"
    proc = kube_cluster.kubectl(
        "apply", "--dry-run=server", "-n", scratch, "-f", "-", input=yaml.safe_dump(bad), check=False
    )
    assert proc.returncode != 0
    assert "PERMIT" in proc.stderr


def test_argo_applications_pass_server_validation(kube_cluster: KubeCluster, scratch: str) -> None:  # noqa: F811
    """Server-side dry-run of the sample's Applications against Argo CD's own Application CRD."""
    crd = next(c for c in upstream_argo_crds() if c["spec"]["names"]["kind"] == "Application")
    existing = {c["metadata"]["name"] for c in kube_cluster.get("crd")["items"]}
    if crd["metadata"]["name"] in existing:
        pytest.fail("an Application CRD already exists (a real Argo CD?): refusing to replace it in a test")
    kube_cluster.kubectl("create", "-f", "-", input=yaml.safe_dump(crd))  # too big for apply's annotation
    try:
        kube_cluster.wait_for(  # not `kubectl wait`: it errors while a fresh CRD has no conditions yet
            "the Application CRD to be established",
            lambda: any(
                c["type"] == "Established" and c["status"] == "True"
                for c in (kube_cluster.get("crd", crd["metadata"]["name"]).get("status") or {}).get(
                    "conditions"
                )
                or []
            ),
            timeout=60,
        )
        dry_run(kube_cluster, in_namespace(applications(), scratch), scratch)
    finally:
        kube_cluster.kubectl("delete", "crd", crd["metadata"]["name"], "--wait=false", check=False)


def test_repo_root_found() -> None:
    assert (REPO / "helm" / "ambient" / "Chart.yaml").is_file()


def test_helm_upgrade_from_the_previous_chart(kube_cluster: KubeCluster) -> None:  # noqa: F811
    """``helm install`` of the previous chart commit, ``helm upgrade`` to this one: the release is deployed at
    revision 2 and the cluster has this version's objects (component readiness is the e2e suite's job)."""
    assert kube_cluster.layout is not None
    with exclusive(kube_cluster.layout.cache, timeout=600):
        mesh = Mesh(kube_cluster)
        if mesh.installed():
            pytest.fail("a mesh release is installed (scripts/demo?): uninstall it before running this test")
        mesh.adopt_crds()
        try:
            with tempfile.TemporaryDirectory(prefix="pk-helm-prev-") as tmp:
                mesh.helm_install(previous_charts(PREVIOUS_CHARTS, Path(tmp)))
            mesh.helm_install(chart("ambient"), upgrade=True)
            mesh.wait_ready()  # the rollout finishes before the uninstall, as an operator would wait
            history = json.loads(
                kube_cluster.helm("history", "ambient", "-n", "istio-system", "-o", "json").stdout
            )
            assert [h["status"] for h in history] == ["superseded", "deployed"]
            current = charts.render("ambient")
            for kind, name in (
                ("DaemonSet", "ztunnel"),
                ("DaemonSet", "istio-cni-node"),
                ("Deployment", "istiod"),
            ):
                live = kube_cluster.get(kind.lower(), name, "istio-system")
                want = charts.one(current, kind, name)["spec"]["template"]["spec"]["containers"][0]["env"]
                have = live["spec"]["template"]["spec"]["containers"][0]["env"]
                assert literal(have) == literal(want), f"{kind}/{name} not upgraded"
            gw_crd = kube_cluster.get("crd", "gateways.gateway.networking.k8s.io")
            assert "api-approved.kubernetes.io" in gw_crd["metadata"]["annotations"]
        finally:
            mesh.uninstall()


def literal(env: list[Obj]) -> dict[str, str]:
    """name → value of the literal entries (the API server adds defaults to fieldRef entries)."""
    return {e["name"]: e["value"] for e in env if e.get("value")}  # the API server drops empty values
