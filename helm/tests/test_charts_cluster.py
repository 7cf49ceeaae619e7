"""Validation by the real kube-apiserver (OpenAPI v3 and CRD structural schemas, strict field validation):
``kubectl apply --dry-run=server --validate=strict`` of every object the charts render, of the custom
resources the suite and the samples apply, and of the Argo CD Applications (against our Application CRD,
installed for the test and removed afterwards)."""

from __future__ import annotations

import copy
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from meshtest.e2e import charts
from meshtest.e2e.samples import ARGO_CRD, applications, scenario_resources, workloads
from meshtest.e2e.tools import REPO
from meshtest.fixtures import kube_cluster  # noqa: F401 - fixture used by name
from meshtest.kube import KubeCluster

pytestmark = [pytest.mark.cluster, pytest.mark.root]
Obj = dict[str, Any]
#: Helm adopts existing objects carrying these, so CRDs created here are taken over by a later install
ADOPT = {"meta.helm.sh/release-name": "ambient", "meta.helm.sh/release-namespace": "istio-system"}


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
    crd = yaml.safe_load(ARGO_CRD.read_text())
    existing = {c["metadata"]["name"] for c in kube_cluster.get("crd")["items"]}
    if crd["metadata"]["name"] in existing:
        pytest.fail("an Application CRD already exists (a real Argo CD?): refusing to replace it in a test")
    kube_cluster.apply(crd)
    try:
        kube_cluster.kubectl(
            "wait", "--for=condition=Established", "crd/applications.argoproj.io", "--timeout=60s"
        )
        dry_run(kube_cluster, in_namespace(applications(), scratch), scratch)
    finally:
        kube_cluster.kubectl("delete", "crd", "applications.argoproj.io", "--wait=false", check=False)


def test_repo_root_found() -> None:
    assert (REPO / "helm" / "ambient" / "Chart.yaml").is_file()
