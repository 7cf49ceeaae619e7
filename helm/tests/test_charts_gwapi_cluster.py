"""``helm install ambient`` on a cluster that already has a Gateway API CRD it does not own (GKE, or a user
who applied upstream's standard-install.yaml): the install succeeds, the existing CRD is left exactly as it
was, the others are installed and owned by the release, and the release notes name the one left alone.

helm is called directly, not through :meth:`Mesh.install`, which first adopts unowned CRDs of our charts (the
e2e suite's convenience for CRDs its own tests applied) and would hide the behaviour under test.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from meshtest.e2e import charts
from meshtest.e2e.mesh import NAMESPACE, RELEASE, Mesh, exclusive
from meshtest.e2e.tools import chart
from meshtest.fixtures import kube_cluster  # noqa: F401 - fixture used by name
from meshtest.kube import KubeCluster

pytestmark = [pytest.mark.cluster, pytest.mark.root]
Obj = dict[str, Any]

GROUP = "gateway.networking.k8s.io"
FOREIGN = f"gateways.{GROUP}"
#: marks the CRD this test creates, standing in for another owner's (and checked unchanged afterwards)
MARK = {"pk-gwapi-test/owner": "someone-else"}
HELM_NAME = "meta.helm.sh/release-name"
HELM_NAMESPACE = "meta.helm.sh/release-namespace"


def foreign_gateway_crd() -> Obj:
    """A minimal but real Gateway CRD (v1, status subresource) of another owner: no Helm metadata."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": FOREIGN,
            "labels": MARK,
            # *.k8s.io groups are protected: the API server wants the approving review named
            "annotations": {
                "api-approved.kubernetes.io": "https://github.com/kubernetes-sigs/gateway-api/pull/1538"
            },
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": "Gateway",
                "listKind": "GatewayList",
                "plural": "gateways",
                "singular": "gateway",
            },
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                    },
                }
            ],
        },
    }


def gateway_api_crd_names() -> list[str]:
    return [
        c["metadata"]["name"]
        for c in charts.by_kind(charts.render("ambient"), "CustomResourceDefinition")
        if c["spec"]["group"] == GROUP
    ]


def live_crds(kube: KubeCluster) -> dict[str, Obj]:
    return {c["metadata"]["name"]: c for c in kube.get("crd")["items"]}


def clear_leftovers(kube: KubeCluster, names: list[str]) -> None:
    """Remove Gateway API CRDs an earlier install of this release left behind (they are kept on uninstall), so
    this test sees them created; refuse to touch any other owner's."""
    live = live_crds(kube)
    for name in names:
        if name not in live:
            continue
        annotations = live[name]["metadata"].get("annotations") or {}
        if (annotations.get(HELM_NAME), annotations.get(HELM_NAMESPACE)) != (RELEASE, NAMESPACE):
            pytest.fail(
                f"CRD {name} exists and is not a leftover of release {RELEASE}: refusing to delete it"
            )
        kube.kubectl("delete", "crd", name, "--wait=true", timeout=120)


def test_install_leaves_an_existing_unowned_gateway_api_crd_alone(kube_cluster: KubeCluster) -> None:  # noqa: F811
    assert kube_cluster.layout is not None
    names = gateway_api_crd_names()
    assert FOREIGN in names
    assert len(names) > 1
    with exclusive(kube_cluster.layout.cache, timeout=600):
        mesh = Mesh(kube_cluster)
        if mesh.installed():
            pytest.fail("a mesh release is installed (scripts/demo?): uninstall it before running this test")
        clear_leftovers(kube_cluster, names)
        kube_cluster.kubectl("create", "-f", "-", input=yaml.safe_dump(foreign_gateway_crd()))
        try:
            kube_cluster.kubectl("wait", "--for=condition=Established", f"crd/{FOREIGN}", "--timeout=60s")
            before = kube_cluster.get("crd", FOREIGN)["metadata"]
            try:
                proc = kube_cluster.helm(
                    "install",
                    RELEASE,
                    str(chart("ambient")),
                    "-n",
                    NAMESPACE,
                    "--create-namespace",
                    check=False,
                    timeout=300,
                )
                assert proc.returncode == 0, proc.stderr
                after = live_crds(kube_cluster)
                meta = after[FOREIGN]["metadata"]
                assert (meta["uid"], meta["resourceVersion"]) == (before["uid"], before["resourceVersion"])
                assert HELM_NAME not in (meta.get("annotations") or {})
                assert meta["labels"] == MARK
                for name in names:
                    if name == FOREIGN:
                        continue
                    annotations = after[name]["metadata"].get("annotations") or {}
                    assert (annotations.get(HELM_NAME), annotations.get(HELM_NAMESPACE)) == (
                        RELEASE,
                        NAMESPACE,
                    )
                notes = kube_cluster.helm("get", "notes", RELEASE, "-n", NAMESPACE).stdout
                skipped = [line for line in notes.splitlines() if FOREIGN in line]
                assert skipped, notes
                assert not any(n in line for n in names if n != FOREIGN for line in skipped), notes
                assert FOREIGN in proc.stdout  # what the user saw
                mesh.wait_ready()  # istiod serves with the other owner's Gateway CRD
            finally:
                mesh.uninstall()
        finally:
            kube_cluster.kubectl("delete", "crd", FOREIGN, "--wait=true", check=False, timeout=120)


def test_e2e_harness_adopts_only_copies_of_our_crds(kube_cluster: KubeCluster) -> None:  # noqa: F811
    """:meth:`Mesh.adopt_crds` (run before the e2e suite's install) takes over our own CRDs that a test
    applied by hand, never another owner's: that would be the forced take-over the chart now avoids."""
    assert kube_cluster.layout is not None
    names = gateway_api_crd_names()
    ours = charts.one(
        charts.by_kind(charts.render("ambient"), "CustomResourceDefinition"),
        "CustomResourceDefinition",
        f"httproutes.{GROUP}",
    )
    assert HELM_NAME not in ours["metadata"].get("annotations", {})  # as `helm template | kubectl apply` does
    with exclusive(kube_cluster.layout.cache, timeout=600):
        if Mesh(kube_cluster).installed():
            pytest.fail("a mesh release is installed (scripts/demo?): uninstall it before running this test")
        clear_leftovers(kube_cluster, names)
        created = [FOREIGN, ours["metadata"]["name"]]
        try:
            kube_cluster.kubectl("create", "-f", "-", input=yaml.safe_dump_all([foreign_gateway_crd(), ours]))
            adopted = Mesh(kube_cluster).adopt_crds()
            assert ours["metadata"]["name"] in adopted
            assert FOREIGN not in adopted
            meta = kube_cluster.get("crd", FOREIGN)["metadata"]
            assert HELM_NAME not in (meta.get("annotations") or {})
        finally:
            kube_cluster.kubectl("delete", "crd", *created, "--wait=true", check=False, timeout=120)
