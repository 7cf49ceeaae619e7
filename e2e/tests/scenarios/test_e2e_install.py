"""``helm install ambient`` (then ``helm upgrade`` from the previous chart) yields a ready mesh: istiod, one
ztunnel and one CNI agent per node, the waypoint GatewayClass, and the mesh root in every namespace."""

from __future__ import annotations

import json
import re

import pytest
from meshtest.e2e.mesh import Mesh
from meshtest.kube import KubeCluster

pytestmark = [pytest.mark.cluster, pytest.mark.root, pytest.mark.slow]


def test_release_deployed_and_upgraded(kube: KubeCluster, mesh: Mesh) -> None:
    history = json.loads(kube.helm("history", mesh.release, "-n", mesh.namespace, "-o", "json").stdout)
    assert history[-1]["status"] == "deployed", history
    assert history[-1]["chart"].startswith("ambient-")
    nodes = len(mesh.nodes())
    assert len(mesh.pods("app=ztunnel")) >= nodes
    assert len(mesh.pods("k8s-app=istio-cni-node")) >= nodes


def test_waypoint_gatewayclass_created_by_istiod(kube: KubeCluster, mesh: Mesh) -> None:
    cls = kube.wait_for(
        "GatewayClass istio-waypoint", lambda: kube.get("gatewayclasses")["items"], timeout=60
    )
    names = {c["metadata"]["name"]: c for c in cls}
    assert "istio-waypoint" in names, sorted(names)
    assert names["istio-waypoint"]["spec"]["controllerName"] == "istio.io/mesh-controller"


def test_root_cert_published_to_new_namespace(kube: KubeCluster, mesh: Mesh, make_namespace: object) -> None:
    ns = make_namespace("root")  # type: ignore[operator]
    cm = kube.wait_for(
        f"istio-ca-root-cert in {ns}", lambda: kube.get("configmap", "istio-ca-root-cert", ns), timeout=60
    )
    assert "BEGIN CERTIFICATE" in cm["data"]["root-cert.pem"]


def test_cni_plugin_runs_from_the_runtime_copied_onto_each_node(mesh: Mesh) -> None:
    """A real node has no Python: the agent copies the plugin's own runtime next to the launcher, and the
    launcher runs that (on the local provider too, which builds the runtime the image would carry)."""
    for node in mesh.nodes():
        launcher = mesh.node_files(node, "/opt/cni/bin", "istio-cni").get("istio-cni", "")
        found = re.search(r'rt="\$d/istio-cni\.d/([0-9a-f]+)"', launcher)
        assert found, f"{node}: the launcher does not use a node runtime:\n{launcher}"
        version = mesh.node_files(node, f"/opt/cni/bin/istio-cni.d/{found[1]}", "VERSION").get("VERSION")
        assert version, f"{node}: the launcher's runtime istio-cni.d/{found[1]} is not on the node"
        assert json.loads(version)["hash"] == found[1]
