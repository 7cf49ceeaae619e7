"""Istio's metric names with the right labels on the destination ztunnel after mesh traffic."""

from __future__ import annotations

import re

import pytest
from meshtest.e2e import apps, steps
from meshtest.e2e.mesh import Mesh
from meshtest.e2e.traffic import PodRef, forward, metrics
from meshtest.kube import KubeCluster

pytestmark = [pytest.mark.cluster, pytest.mark.root, pytest.mark.slow]


def series(text: str, name: str) -> list[dict[str, str]]:
    out = []
    for line in text.splitlines():
        if line.startswith(name + "{"):
            body = line[len(name) + 1 : line.rindex("}")]
            out.append(dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', body)))
    return out


def test_l4_metrics_names_and_labels(
    kube: KubeCluster, mesh: Mesh, make_namespace: object, image: str, workers: list[str]
) -> None:
    ns = make_namespace("metrics", ambient=True)  # type: ignore[operator]
    steps.deploy(
        kube, ns, apps.echo("srv", image, node=workers[1]) + apps.echo("cli", image, node=workers[0])
    )
    srv, cli = steps.pod(kube, ns, "app=srv"), steps.pod(kube, ns, "app=cli")
    for ref in (srv, cli):
        steps.wait_redirection(kube, ref, "enabled")
    steps.wait_traffic(kube, cli, f"http://srv.{ns}", steps.all_ok, "mesh traffic")
    assert steps.all_ok(forward(kube, cli, f"http://srv.{ns}", 5))
    zt = PodRef.of(kube.get("pod", mesh.ztunnel_on(srv.node), mesh.namespace))
    want = {
        "reporter": "destination",
        "source_workload": "cli",
        "destination_workload": "srv",
        "source_workload_namespace": ns,
        "destination_workload_namespace": ns,
        "source_principal": f"spiffe://cluster.local/ns/{ns}/sa/cli",
        "destination_principal": f"spiffe://cluster.local/ns/{ns}/sa/srv",
        "connection_security_policy": "mutual_tls",
    }

    def matching() -> list[dict[str, str]]:
        found = series(metrics(kube, zt), "istio_tcp_connections_opened_total")
        return [s for s in found if all(s.get(k) == v for k, v in want.items())]

    kube.wait_for("istio_tcp_connections_opened_total with the mesh labels", matching, 60)
    text = metrics(kube, zt)
    for name in (
        "istio_tcp_connections_closed_total",
        "istio_tcp_received_bytes_total",
        "istio_tcp_sent_bytes_total",
    ):
        assert any(s.get("destination_workload") == "srv" for s in series(text, name)), name
