"""Waypoint lifecycle: a Gateway of class istio-waypoint gets deployed and Programmed; a Service labelled
``istio.io/use-waypoint`` is then served through it (L7: x-request-id added, 403 from an L7 DENY, HTTPRoute
weighted split, ``istio_requests_total{reporter="waypoint"}``); deleting the waypoint returns traffic to
L4."""

from __future__ import annotations

import pytest
from meshtest.e2e import apps, steps
from meshtest.e2e.mesh import Mesh
from meshtest.e2e.traffic import PodRef, forward, metrics
from meshtest.echo import EchoResponse
from meshtest.kube import KubeCluster

pytestmark = [pytest.mark.cluster, pytest.mark.root, pytest.mark.slow]


def via_waypoint(responses: list[EchoResponse]) -> bool:
    return bool(responses) and all(r.code == "200" and "x-request-id" in r.request_headers for r in responses)


def programmed(kube: KubeCluster, ns: str, name: str) -> bool:
    gw = kube.get("gateway", name, ns)
    return any(
        c.get("type") == "Programmed" and c.get("status") == "True"
        for c in gw.get("status", {}).get("conditions", [])
    )


def test_waypoint_lifecycle_l7_deny_and_weighted_split(
    kube: KubeCluster, mesh: Mesh, make_namespace: object, image: str, workers: list[str]
) -> None:
    ns = make_namespace("wp", ambient=True)  # type: ignore[operator]
    objs = (
        apps.echo("reviews", image, version="v1", service="reviews", node=workers[1])
        + apps.echo("reviews", image, version="v2", service="", account="reviews", node=workers[1])
        + [
            apps.svc("reviews-v1", {"app": "reviews", "version": "v1"}),
            apps.svc("reviews-v2", {"app": "reviews", "version": "v2"}),
        ]
        + apps.echo("cli", image, node=workers[0])
    )
    steps.deploy(kube, ns, objs)
    cli = steps.pod(kube, ns, "app=cli")
    kube.ready_pods(ns, "app=reviews", 2)
    steps.wait_redirection(kube, cli, "enabled")
    url = f"http://reviews.{ns}"
    steps.wait_traffic(kube, cli, url, steps.all_ok, "L4 traffic before any waypoint")

    kube.apply(apps.waypoint(), ns)
    kube.wait_for("waypoint Gateway Programmed", lambda: programmed(kube, ns, "waypoint"), 120)
    wp = PodRef.of(kube.ready_pods(ns, "gateway.networking.k8s.io/gateway-name=waypoint", 1)[0])
    kube.kubectl("label", "service", "reviews", "-n", ns, "istio.io/use-waypoint=waypoint")
    steps.wait_traffic(kube, cli, url, via_waypoint, "requests served through the waypoint", timeout=90)

    kube.apply(apps.deny_path("deny-admin", "reviews", "/admin"), ns)
    steps.wait_traffic(
        kube,
        cli,
        url + "/admin",
        lambda rs: [r.code for r in rs] == ["403"] * len(rs),
        "L7 DENY answers 403 at the waypoint",
    )
    assert steps.all_ok(forward(kube, cli, url + "/ok", 3)), "other paths stay allowed"

    kube.apply(apps.weighted_route("reviews", {"reviews-v1": 80, "reviews-v2": 20}), ns)
    steps.wait_traffic(
        kube,
        cli,
        url,
        lambda rs: {r.version for r in rs} == {"v1", "v2"},
        "both versions reachable through the route",
        count=20,
    )
    split = forward(kube, cli, url, 200)
    versions = [r.version for r in split]
    assert steps.all_ok(split), steps.codes(split)[:10]
    share = versions.count("v1") / len(versions)
    assert 0.65 <= share <= 0.93, f"v1 share {share:.2f} for an 80/20 split"

    text = metrics(kube, wp)
    assert "istio_requests_total{" in text, text[:2000]
    assert 'reporter="waypoint"' in text, text[:2000]

    kube.kubectl("delete", "gateway", "waypoint", "-n", ns)
    steps.wait_traffic(
        kube,
        cli,
        url + "/admin",
        lambda rs: steps.all_ok(rs) and not via_waypoint(rs),
        "back to L4 once the waypoint is gone (no L7 policy, no x-request-id)",
        timeout=90,
    )
