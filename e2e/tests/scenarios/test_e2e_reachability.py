"""Reachability across nodes (mesh↔mesh, mesh→non-mesh, non-mesh→mesh) with a capture on the client node's
link proving the mesh hop is mTLS: only port 15008, TLS records, and the request's marker never in
clear, while
the same marker is visible on the plaintext (non-mesh) hop of the same capture."""

from __future__ import annotations

import secrets

import pytest
from meshtest.e2e import apps, capture, steps
from meshtest.e2e.mesh import Mesh
from meshtest.e2e.traffic import forward
from meshtest.kube import KubeCluster

pytestmark = [pytest.mark.cluster, pytest.mark.root, pytest.mark.slow]


def test_reachability_matrix_with_mtls_on_the_wire(
    kube: KubeCluster, mesh: Mesh, make_namespace: object, image: str, workers: list[str]
) -> None:
    client_node, server_node = workers
    mesh_ns = make_namespace("mesh", ambient=True)  # type: ignore[operator]
    plain_ns = make_namespace("plain")  # type: ignore[operator]
    steps.deploy(
        kube, mesh_ns, apps.echo("srv", image, node=server_node) + apps.echo("cli", image, node=client_node)
    )
    steps.deploy(
        kube,
        plain_ns,
        apps.echo("psrv", image, node=server_node) + apps.echo("pcli", image, node=client_node),
    )
    srv, cli = steps.pod(kube, mesh_ns, "app=srv"), steps.pod(kube, mesh_ns, "app=cli")
    psrv, pcli = steps.pod(kube, plain_ns, "app=psrv"), steps.pod(kube, plain_ns, "app=pcli")
    for ref in (srv, cli):
        steps.wait_redirection(kube, ref, "enabled")
    assert steps.redirection(kube, psrv) == ""

    to_srv, to_psrv = f"http://srv.{mesh_ns}", f"http://psrv.{plain_ns}"
    matrix = {
        "mesh->mesh": (cli, to_srv),
        "mesh->non-mesh": (cli, to_psrv),
        "non-mesh->mesh": (pcli, to_srv),
        "non-mesh->non-mesh": (pcli, to_psrv),
    }
    results = {name: steps.codes(forward(kube, src, url, 3)) for name, (src, url) in matrix.items()}
    assert all(codes == ["200"] * 3 for codes in results.values()), results

    if kube.layout is None:
        pytest.fail(
            "the node-link capture is implemented for the local provider only (kind nodes lack tcpdump)"
        )
    marker = f"pk-marker-{secrets.token_hex(6)}"
    link = kube.layout.node(client_node).host_veth
    with capture.tcpdump(link, f"tcp and (host {srv.ip} or host {psrv.ip})") as cap:
        mesh_hop = forward(kube, cli, to_srv, 2, headers={"X-Marker": marker})
        plain_hop = forward(kube, pcli, to_psrv, 2, headers={"X-Marker": marker})
    assert steps.codes(mesh_hop) == ["200", "200"]
    assert steps.codes(plain_hop) == ["200", "200"]
    mesh_flows = cap.between(cli.ip, srv.ip)
    assert mesh_flows, f"no packets between {cli.ip} and {srv.ip} on {link} ({cap.packets} captured)"
    assert {f.dport for f in mesh_flows if f.src == cli.ip} == {15008}, [
        (f.sport, f.dport) for f in mesh_flows
    ]
    to_server = b"".join(bytes(f.payload) for f in mesh_flows if f.src == cli.ip)
    assert capture.tls_records(to_server), to_server[:16]
    assert marker.encode() not in b"".join(bytes(f.payload) for f in mesh_flows)
    # the capture can see the marker: the non-mesh hop carries it in clear
    assert any(marker.encode() in f.payload for f in cap.between(pcli.ip, psrv.ip))
