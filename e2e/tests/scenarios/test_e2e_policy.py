"""L4 AuthorizationPolicy allow/deny at the destination ztunnel, and PeerAuthentication STRICT against a
plaintext (non-mesh) client."""

from __future__ import annotations

import pytest
from meshtest.e2e import apps, steps
from meshtest.e2e.mesh import Mesh
from meshtest.kube import KubeCluster

pytestmark = [pytest.mark.cluster, pytest.mark.root, pytest.mark.slow]


def test_l4_authorization_allow_and_deny(
    kube: KubeCluster, mesh: Mesh, make_namespace: object, image: str, workers: list[str]
) -> None:
    ns = make_namespace("authz", ambient=True)  # type: ignore[operator]
    objs = apps.echo("srv", image, node=workers[1]) + apps.echo("good", image, node=workers[0])
    steps.deploy(kube, ns, objs + apps.echo("bad", image, node=workers[0]))
    good, bad = steps.pod(kube, ns, "app=good"), steps.pod(kube, ns, "app=bad")
    for ref in (good, bad, steps.pod(kube, ns, "app=srv")):
        steps.wait_redirection(kube, ref, "enabled")
    url = f"tcp://srv.{ns}:9090"
    steps.wait_traffic(kube, bad, url, steps.all_ok, "both allowed before any policy")

    kube.apply(apps.allow_from("only-good", "srv", [apps.principal(ns, "good")]), ns)
    steps.wait_traffic(kube, bad, url, steps.all_failed, "the other identity denied")
    steps.wait_traffic(kube, good, url, steps.all_ok, "the allowed identity still served")

    kube.kubectl("delete", "authorizationpolicy", "only-good", "-n", ns)
    steps.wait_traffic(kube, bad, url, steps.all_ok, "allowed again once the policy is gone")


def test_peer_authentication_strict_rejects_plaintext(
    kube: KubeCluster, mesh: Mesh, make_namespace: object, image: str, workers: list[str]
) -> None:
    srv_ns = make_namespace("strict", ambient=True)  # type: ignore[operator]
    cli_ns = make_namespace("meshcli", ambient=True)  # type: ignore[operator]
    plain_ns = make_namespace("plaincli")  # type: ignore[operator]
    steps.deploy(kube, srv_ns, apps.echo("srv", image, node=workers[1]))
    steps.deploy(kube, cli_ns, apps.echo("cli", image, node=workers[0]))
    steps.deploy(kube, plain_ns, apps.echo("pcli", image, node=workers[0]))
    srv, cli, pcli = (
        steps.pod(kube, srv_ns, "app=srv"),
        steps.pod(kube, cli_ns, "app=cli"),
        steps.pod(kube, plain_ns, "app=pcli"),
    )
    for ref in (srv, cli):
        steps.wait_redirection(kube, ref, "enabled")
    url = f"http://srv.{srv_ns}"
    steps.wait_traffic(kube, pcli, url, steps.all_ok, "plaintext accepted while PERMISSIVE")

    kube.apply(apps.strict(), srv_ns)
    steps.wait_traffic(kube, pcli, url, steps.all_failed, "plaintext refused under STRICT")
    steps.wait_traffic(kube, cli, url, steps.all_ok, "mesh (mTLS) client still served under STRICT")
