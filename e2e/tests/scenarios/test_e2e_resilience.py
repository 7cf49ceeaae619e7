"""The data plane under control-plane and node-agent churn: a ztunnel DaemonSet rollout restart under
continuous load with zero failed requests; an istiod restart while traffic keeps flowing; a CNI agent restart
that reconciles (enrolled pods stay enrolled, a pod created afterwards is enrolled)."""

from __future__ import annotations

import pytest
from meshtest.e2e import apps, steps
from meshtest.e2e.mesh import Mesh
from meshtest.e2e.traffic import PodRef, forward
from meshtest.kube import KubeCluster

pytestmark = [pytest.mark.cluster, pytest.mark.root, pytest.mark.slow]


def mesh_pair(kube: KubeCluster, ns: str, image: str, workers: list[str]) -> tuple[PodRef, PodRef]:
    steps.deploy(
        kube, ns, apps.echo("srv", image, node=workers[1]) + apps.echo("cli", image, node=workers[0])
    )
    srv, cli = steps.pod(kube, ns, "app=srv"), steps.pod(kube, ns, "app=cli")
    for ref in (srv, cli):
        steps.wait_redirection(kube, ref, "enabled")
    steps.wait_traffic(kube, cli, f"http://srv.{ns}", steps.all_ok, "mesh traffic")
    return srv, cli


def test_ztunnel_rollout_restart_under_load(
    kube: KubeCluster, mesh: Mesh, make_namespace: object, image: str, workers: list[str]
) -> None:
    ns = make_namespace("roll", ambient=True)  # type: ignore[operator]
    _, cli = mesh_pair(kube, ns, image, workers)
    with steps.Load(kube, cli, f"http://srv.{ns}") as load:
        before = load.sent
        kube.kubectl("rollout", "restart", "daemonset/ztunnel", "-n", mesh.namespace)
        mesh.wait_rollout("daemonset", "ztunnel")
        during = load.sent - before
    assert load.errors == [], f"{len(load.errors)} failed of {load.sent}: {load.errors[:5]}"
    assert during > 0, "no request completed during the rollout"


def test_istiod_restart_data_plane_keeps_serving(
    kube: KubeCluster, mesh: Mesh, make_namespace: object, image: str, workers: list[str]
) -> None:
    ns = make_namespace("cp", ambient=True)  # type: ignore[operator]
    _, cli = mesh_pair(kube, ns, image, workers)
    old = {p["metadata"]["name"] for p in mesh.pods("app=istiod")}  # type: ignore[index]
    with steps.Load(kube, cli, f"http://srv.{ns}") as load:
        kube.kubectl("delete", "pod", "-n", mesh.namespace, "-l", "app=istiod", "--wait=true", timeout=120)
        new = kube.ready_pods(mesh.namespace, "app=istiod", 1, 180)
    assert {p["metadata"]["name"] for p in new}.isdisjoint(old)
    assert load.errors == [], f"{len(load.errors)} failed of {load.sent}: {load.errors[:5]}"
    # a workload created after the restart is served too (the new istiod pushes it, its CA signs it)
    steps.deploy(kube, ns, apps.echo("late", image, node=workers[1]))
    late = steps.pod(kube, ns, "app=late")
    steps.wait_redirection(kube, late, "enabled")
    steps.wait_traffic(
        kube, cli, f"http://late.{ns}", steps.all_ok, "new workload served after istiod restart"
    )


def test_cni_agent_restart_reconciles(
    kube: KubeCluster, mesh: Mesh, make_namespace: object, image: str, workers: list[str]
) -> None:
    ns = make_namespace("cni", ambient=True)  # type: ignore[operator]
    _, cli = mesh_pair(kube, ns, image, workers)
    agent = next(p for p in mesh.pods("k8s-app=istio-cni-node") if p["spec"]["nodeName"] == cli.node)  # type: ignore[index]
    with steps.Load(kube, cli, f"http://srv.{ns}") as load:
        kube.kubectl(
            "delete",
            "pod",
            "-n",
            mesh.namespace,
            agent["metadata"]["name"],
            "--wait=true",  # type: ignore[index]
            timeout=120,
        )
        mesh.wait_rollout("daemonset", "istio-cni-node")
    assert load.errors == [], f"{len(load.errors)} failed of {load.sent}: {load.errors[:5]}"
    assert steps.redirection(kube, cli) == "enabled", "an enrolled pod lost its enrolment across the restart"
    steps.deploy(kube, ns, apps.echo("after", image, node=cli.node))
    after = steps.pod(kube, ns, "app=after")
    steps.wait_redirection(kube, after, "enabled")
    assert steps.all_ok(forward(kube, after, f"http://srv.{ns}", 3))
