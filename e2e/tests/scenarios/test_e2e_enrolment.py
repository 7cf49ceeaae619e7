"""Enrol and unenrol a namespace live: labelling it redirects its running pods (annotation, HBONE in ztunnel's
view, mTLS metrics), removing the label takes them out again; traffic works throughout."""

from __future__ import annotations

import pytest
from meshtest.e2e import apps, steps
from meshtest.e2e.mesh import Mesh
from meshtest.e2e.traffic import PodRef, config_dump
from meshtest.kube import KubeCluster

pytestmark = [pytest.mark.cluster, pytest.mark.root, pytest.mark.slow]


def protocol_seen(kube: KubeCluster, mesh: Mesh, node: str, pod_ip: str) -> str:
    zt = PodRef.of(kube.get("pod", mesh.ztunnel_on(node), mesh.namespace))
    for wl in config_dump(kube, zt).get("workloads", []):
        if pod_ip in wl.get("workloadIps", []):
            return str(wl.get("protocol", ""))
    return ""


def test_live_enrol_and_unenrol(
    kube: KubeCluster, mesh: Mesh, make_namespace: object, image: str, workers: list[str]
) -> None:
    ns = make_namespace("live")  # type: ignore[operator]
    steps.deploy(
        kube, ns, apps.echo("srv", image, node=workers[1]) + apps.echo("cli", image, node=workers[0])
    )
    srv, cli = steps.pod(kube, ns, "app=srv"), steps.pod(kube, ns, "app=cli")
    url = f"http://srv.{ns}"
    steps.wait_traffic(kube, cli, url, steps.all_ok, "plain traffic before enrolment")
    assert steps.redirection(kube, srv) == ""

    kube.kubectl("label", "namespace", ns, "istio.io/dataplane-mode=ambient")
    for ref in (srv, cli):
        steps.wait_redirection(kube, ref, "enabled")
    kube.wait_for(
        "ztunnel sees the server as HBONE", lambda: protocol_seen(kube, mesh, srv.node, srv.ip) == "HBONE", 60
    )
    steps.wait_traffic(kube, cli, url, steps.all_ok, "traffic once enrolled")

    kube.kubectl("label", "namespace", ns, "istio.io/dataplane-mode-")
    for ref in (srv, cli):
        steps.wait_redirection(kube, ref, "")
    kube.wait_for(
        "ztunnel sees the server as plain TCP",
        lambda: protocol_seen(kube, mesh, srv.node, srv.ip) == "TCP",
        60,
    )
    steps.wait_traffic(kube, cli, url, steps.all_ok, "traffic once unenrolled")
