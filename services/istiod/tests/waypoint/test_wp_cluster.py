"""The waypoint controller against the REAL API server of the local cluster (e2e/cluster).

A Gateway of class ``istio-waypoint`` in a fresh namespace gets its ServiceAccount, Deployment and Service
(upstream names, labels, owner reference) and an ``Accepted`` status; deleting it removes them. The
controller runs in this process with informers scoped to the test namespace, so it never touches other
tests' objects. The full data-path lifecycle through a deployed mesh is
e2e/tests/scenarios/test_e2e_waypoint.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from istiod.waypoint.controller import DEPLOYMENTS, WaypointController
from istiod.waypoint.publish import register_waypoint_type
from meshkit.drain import TaskOwner
from meshkit.k8s import Informer, KubeClient
from meshkit.k8s import resources as r
from meshtest.fixtures import kube_cluster, kube_namespace  # noqa: F401 - pytest fixtures
from meshtest.kube import KubeCluster

pytestmark = [pytest.mark.cluster, pytest.mark.root]
REPO = Path(__file__).resolve().parents[4]


class _Cache:
    def __init__(self) -> None:
        self.resources: dict[str, dict[str, Any]] = {}
        self.on_change: Callable[[str, set[str]], None] | None = None


@contextlib.contextmanager
def _gateway_api(kube: KubeCluster) -> Iterator[None]:
    """Gateway API CRDs for the test: used as they are when present, else installed from our base chart and
    removed again afterwards (so a later ``helm install`` of the mesh can own them)."""
    if kube.kubectl("get", "crd", "gateways.gateway.networking.k8s.io", check=False).returncode == 0:
        yield
        return
    rendered = kube.helm(
        "template",
        "base",
        str(REPO / "helm" / "base"),
        "--show-only",
        "templates/crds-gateway-api.yaml",
        "--set",
        "gatewayAPI.enabled=true",
    ).stdout
    names = [doc["metadata"]["name"] for doc in yaml.safe_load_all(rendered) if doc]
    kube.kubectl("apply", "-f", "-", input=rendered)
    try:
        for name in names:
            kube.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
        yield
    finally:
        kube.kubectl("delete", "crd", *names, "--wait=true", "--timeout=60s", check=False)


async def _until(
    what: str, informers: list[Informer], check: Callable[[], bool], limit_s: float = 60
) -> None:
    """Wait for ``check`` to hold, re-checking on every event of ``informers`` (bounded)."""
    changed = asyncio.Event()
    for informer in informers:
        informer.subscribe(lambda _batch: changed.set())
    try:
        async with asyncio.timeout(limit_s):
            while not check():
                changed.clear()
                await changed.wait()
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def test_gateway_lifecycle_on_a_real_api_server(kube_cluster: KubeCluster, kube_namespace: str) -> None:  # noqa: F811
    with _gateway_api(kube_cluster):
        await _lifecycle(kube_cluster, kube_namespace)


async def _lifecycle(kube: KubeCluster, ns: str) -> None:
    client = KubeClient.from_config(str(kube.kubeconfig))
    ctl = WaypointController(client, register_waypoint_type(_Cache()), debounce_s=0.05)
    informers = {
        kind: Informer(client, resource, namespace=ns, optional=True)
        for kind, resource in (
            ("gateways", r.GATEWAYS),
            ("services", r.SERVICES),
            ("deployments", DEPLOYMENTS),
            ("pods", r.PODS),
        )
    }
    informers["gatewayclasses"] = Informer(client, r.GATEWAYCLASSES, optional=True)
    for kind, informer in informers.items():
        ctl.watch(kind, informer)
        informer.start()
    owner = TaskOwner("wp-cluster-test")
    owner.spawn(ctl.run(), name="controller")
    try:
        await asyncio.gather(*(i.wait_synced() for i in informers.values()))
        gateway = {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": "waypoint", "labels": {"istio.io/waypoint-for": "service"}},
            "spec": {
                "gatewayClassName": "istio-waypoint",
                "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
            },
        }
        created = await asyncio.to_thread(client.create, r.GATEWAYS, gateway, ns)
        uid = created["metadata"]["uid"]

        deps, svcs, gws = informers["deployments"], informers["services"], informers["gateways"]
        await _until(
            "Deployment and Service",
            [deps, svcs],
            lambda: bool(deps.get(f"{ns}/waypoint") and svcs.get(f"{ns}/waypoint")),
        )
        deployment = deps.get(f"{ns}/waypoint")
        assert deployment is not None
        assert deployment["metadata"]["ownerReferences"][0]["uid"] == uid
        assert deployment["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"] == "waypoint"
        assert deployment["metadata"]["labels"]["istio.io/waypoint-for"] == "service"
        sa = await asyncio.to_thread(client.get, r.SERVICEACCOUNTS, "waypoint", ns)
        assert sa["metadata"]["ownerReferences"][0]["kind"] == "Gateway"

        def accepted() -> bool:
            gw = gws.get(f"{ns}/waypoint") or {}
            return any(
                c["type"] == "Accepted" and c["status"] == "True"
                for c in (gw.get("status") or {}).get("conditions", [])
            )

        await _until("Gateway Accepted", [gws], accepted)
        gc = await asyncio.to_thread(client.get, r.GATEWAYCLASSES, "istio-waypoint")
        assert gc["spec"]["controllerName"] == "istio.io/mesh-controller"

        await asyncio.to_thread(client.delete, r.GATEWAYS, "waypoint", ns)
        await _until(
            "Deployment removed",
            [deps, svcs],
            lambda: deps.get(f"{ns}/waypoint") is None and svcs.get(f"{ns}/waypoint") is None,
        )
    finally:
        await owner.close()
        await asyncio.gather(*(i.stop() for i in informers.values()))
        client.close()
