"""Waypoint deployment: rendered objects, statuses, and the controller against a fake client (pure/unit)."""

from __future__ import annotations

import asyncio
from typing import Any

from istiod.waypoint import deployment as dep
from istiod.waypoint.controller import WaypointController
from istiod.waypoint.publish import WAYPOINT_TYPE, register_waypoint_type
from meshkit.drain import TaskOwner
from meshkit.k8s import ApiError, NotFound
from meshkit.k8s.resources import Resource
from meshproto.ambient.waypoint.v1 import waypoint_pb2 as pb

Obj = dict[str, Any]


def gw(name: str = "waypoint", ns: str = "app", **labels: str) -> Obj:
    return {
        "metadata": {"name": name, "namespace": ns, "uid": "u-1", "generation": 3, "labels": labels},
        "spec": {
            "gatewayClassName": "istio-waypoint",
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
        },
    }


def test_rendered_objects_follow_upstream_names_labels_and_owner() -> None:
    objs = dict(dep.desired_objects(gw(**{"istio.io/waypoint-for": "service"}), dep.DeploySettings()))
    for kind in ("ServiceAccount", "Deployment", "Service"):
        m = objs[kind]["metadata"]
        assert m["name"] == "waypoint"
        assert m["namespace"] == "app"
        assert m["ownerReferences"] == [
            {
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "Gateway",
                "name": "waypoint",
                "uid": "u-1",
            }
        ]
        assert m["labels"]["gateway.networking.k8s.io/gateway-name"] == "waypoint"
        assert m["labels"]["gateway.istio.io/managed"] == "istio.io-mesh-controller"
        assert m["labels"]["istio.io/waypoint-for"] == "service"
    pod = objs["Deployment"]["spec"]["template"]
    assert pod["metadata"]["labels"]["istio.io/dataplane-mode"] == "none"
    assert pod["metadata"]["labels"]["sidecar.istio.io/inject"] == "false"
    assert pod["spec"]["serviceAccountName"] == "waypoint"
    assert pod["spec"]["containers"][0]["readinessProbe"]["httpGet"] == {
        "path": "/healthz/ready",
        "port": 15021,
    }
    svc = objs["Service"]
    assert svc["spec"]["selector"] == {"gateway.networking.k8s.io/gateway-name": "waypoint"}
    assert [(p["name"], p["port"], p["appProtocol"]) for p in svc["spec"]["ports"]] == [
        ("status-port", 15021, "tcp"),
        ("mesh", 15008, "all"),
    ]
    assert svc["metadata"]["annotations"]["networking.istio.io/traffic-distribution"] == "PreferClose"


def test_name_overrides() -> None:
    g = gw()
    g["metadata"]["annotations"] = {
        "gateway.istio.io/name-override": "wp",
        "gateway.istio.io/service-account": "wp-sa",
    }
    objs = dict(dep.desired_objects(g, dep.DeploySettings()))
    assert objs["Deployment"]["metadata"]["name"] == "wp"
    assert objs["ServiceAccount"]["metadata"]["name"] == "wp-sa"


def test_gateway_status_programmed_only_when_ready() -> None:
    svc = {"metadata": {"name": "waypoint"}, "spec": {"clusterIPs": ["10.96.3.3"]}}
    not_ready = dep.gateway_status(gw(), svc, {"status": {}}, dep.DeploySettings(), "t")
    assert [(c["type"], c["status"]) for c in not_ready["conditions"]] == [
        ("Accepted", "True"),
        ("Programmed", "False"),
    ]
    assert not_ready["addresses"] == []
    ready = dep.gateway_status(gw(), svc, {"status": {"readyReplicas": 1}}, dep.DeploySettings(), "t")
    assert [(c["type"], c["status"]) for c in ready["conditions"]] == [
        ("Accepted", "True"),
        ("Programmed", "True"),
    ]
    assert ready["addresses"] == [
        {"type": "IPAddress", "value": "10.96.3.3"},
        {"type": "Hostname", "value": "waypoint.app.svc.cluster.local"},
    ]
    assert ready["conditions"][0]["observedGeneration"] == 3
    bad = gw()
    bad["spec"]["listeners"][0]["protocol"] = "HTTP"
    assert dep.gateway_status(bad, svc, None, dep.DeploySettings(), "t")["conditions"][0]["status"] == "False"


class FakeSource:
    def __init__(self, objs: list[Obj] | None = None) -> None:
        self.store = {
            f"{o['metadata'].get('namespace', '')}/{o['metadata']['name']}".lstrip("/"): o for o in objs or []
        }
        self.handlers: list[Any] = []

    def subscribe(self, handler: Any) -> None:
        self.handlers.append(handler)

    def objects(self) -> list[Obj]:
        return list(self.store.values())

    def get(self, key: str) -> Obj | None:
        return self.store.get(key)


class FakeClient:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], Obj] = {}
        self.status: dict[tuple[str, str, str], Obj] = {}
        self.calls: list[tuple[str, str, str]] = []

    def get(self, res: Resource, name: str, ns: str | None = None) -> Obj:
        try:
            return self.objects[(res.kind, ns or "", name)]
        except KeyError:
            raise NotFound(404, "NotFound") from None

    def create(self, res: Resource, obj: Obj, ns: str | None = None) -> Obj:
        obj["metadata"]["resourceVersion"] = "1"
        self.objects[(res.kind, ns or "", obj["metadata"]["name"])] = obj
        self.calls.append(("create", res.kind, obj["metadata"]["name"]))
        return obj

    def replace(self, res: Resource, obj: Obj, ns: str | None = None) -> Obj:
        self.objects[(res.kind, ns or "", obj["metadata"]["name"])] = obj
        self.calls.append(("replace", res.kind, obj["metadata"]["name"]))
        return obj

    def delete(self, res: Resource, name: str, ns: str | None = None) -> Obj:
        self.calls.append(("delete", res.kind, name))
        return self.objects.pop((res.kind, ns or "", name))

    def patch_status(self, res: Resource, name: str, patch: Obj, ns: str | None = None) -> Obj:
        self.status[(res.kind, ns or "", name)] = patch["status"]
        self.calls.append(("status", res.kind, name))
        return patch


class FakeCache:
    def __init__(self) -> None:
        self.resources: dict[str, dict[str, Any]] = {}
        self.pushed: list[tuple[str, set[str]]] = []
        self.on_change = lambda t, names: self.pushed.append((t, names))


def _bound_sources() -> dict[str, FakeSource]:
    """A Gateway ``app/waypoint`` and a Service ``app/reviews`` bound to it through its namespace label."""
    sources = {k: FakeSource() for k in ("gatewayclasses", "pods", "deployments")}
    sources["gateways"] = FakeSource([gw()])
    sources["namespaces"] = FakeSource(
        [{"metadata": {"name": "app", "labels": {"istio.io/use-waypoint": "waypoint"}}}]
    )
    sources["services"] = FakeSource(
        [
            {
                "metadata": {"name": "reviews", "namespace": "app"},
                "spec": {
                    "clusterIP": "10.79.0.10",
                    "selector": {"app": "reviews"},
                    "ports": [{"name": "http", "port": 80}],
                },
            }
        ]
    )
    return sources


async def test_controller_reconciles_class_objects_status_config_and_cleanup() -> None:
    client, cache = FakeClient(), FakeCache()
    ctl = WaypointController(client, register_waypoint_type(cache), debounce_s=0)  # type: ignore[arg-type]
    sources = _bound_sources()
    for kind, src in sources.items():
        ctl.watch(kind, src)  # type: ignore[arg-type]
    await ctl.reconcile()
    assert ("create", "GatewayClass", "istio-waypoint") in client.calls
    assert {("create", k, "waypoint") for k in ("ServiceAccount", "Deployment", "Service")} <= set(
        client.calls
    )
    assert client.status[("Gateway", "app", "waypoint")]["conditions"][0]["type"] == "Accepted"
    assert client.status[("Service", "app", "reviews")]["conditions"][0]["type"] == "istio.io/WaypointBound"
    assert cache.pushed == [(WAYPOINT_TYPE, {"app/waypoint"})]
    cfg = pb.WaypointConfig()
    assert cache.resources[WAYPOINT_TYPE]["app/waypoint"].any_bytes
    del cfg

    # A second reconcile with nothing changed writes nothing and pushes nothing.
    client.calls.clear()
    sources["gatewayclasses"].store["istio-waypoint"] = client.objects[("GatewayClass", "", "istio-waypoint")]
    sources["gatewayclasses"].store["istio-waypoint"]["status"] = client.status[
        ("GatewayClass", "", "istio-waypoint")
    ]
    sources["gateways"].store["app/waypoint"]["status"] = client.status[("Gateway", "app", "waypoint")]
    await ctl.reconcile()
    assert client.calls == []
    assert len(cache.pushed) == 1

    # The Gateway is deleted: its objects go, its config is withdrawn.
    sources["deployments"].store["app/waypoint"] = client.objects[("Deployment", "app", "waypoint")]
    del sources["gateways"].store["app/waypoint"]
    await ctl.reconcile()
    assert {("delete", k, "waypoint") for k in ("Deployment", "Service", "ServiceAccount")} <= set(
        client.calls
    )
    assert cache.pushed[-1] == (WAYPOINT_TYPE, {"app/waypoint"})
    assert "app/waypoint" not in cache.resources[WAYPOINT_TYPE]


async def test_followers_publish_config_but_do_not_write() -> None:
    client, cache = FakeClient(), FakeCache()
    ctl = WaypointController(client, register_waypoint_type(cache), debounce_s=0)  # type: ignore[arg-type]
    ctl.watch("gateways", FakeSource([gw()]))  # type: ignore[arg-type]
    ctl.set_leader(False)
    await ctl.reconcile()
    assert client.calls == []
    assert cache.pushed == [(WAYPOINT_TYPE, {"app/waypoint"})]
    ctl.set_leader(True)
    await ctl.reconcile()
    assert ("create", "Deployment", "waypoint") in client.calls


class ForbiddenStatusClient(FakeClient):
    """Service status is forbidden (istiod's RBAC may lack services/status); everything else works."""

    def patch_status(self, res: Resource, name: str, patch: Obj, ns: str | None = None) -> Obj:
        if res.kind == "Service":
            self.calls.append(("forbidden", res.kind, name))
            raise ApiError(403, "Forbidden", "cannot patch services/status")
        return super().patch_status(res, name, patch, ns)


class BrokenClient(FakeClient):
    def create(self, res: Resource, obj: Obj, ns: str | None = None) -> Obj:
        raise ApiError(500, "InternalError")


async def test_forbidden_status_is_not_a_failure_and_not_retried() -> None:
    client, cache = ForbiddenStatusClient(), FakeCache()
    ctl = WaypointController(client, register_waypoint_type(cache), debounce_s=0)  # type: ignore[arg-type]
    for kind, src in _bound_sources().items():
        ctl.watch(kind, src)  # type: ignore[arg-type]
    await ctl.reconcile()
    assert ctl.failed_writes == 0
    assert ("forbidden", "Service", "reviews") in client.calls
    client.calls.clear()
    await ctl.reconcile()
    assert ("forbidden", "Service", "reviews") not in client.calls


async def test_changes_are_pushed_at_once_while_failed_writes_wait_for_their_retry() -> None:
    client, cache = BrokenClient(), FakeCache()
    # A one-hour retry back-off: if the change below waited for the retry, the test would time out.
    ctl = WaypointController(
        client,  # type: ignore[arg-type]
        register_waypoint_type(cache),
        debounce_s=0,
        retry_initial_s=3600,
    )
    sources = _bound_sources()
    for kind, src in sources.items():
        ctl.watch(kind, src)  # type: ignore[arg-type]
    owner = TaskOwner("ctl-test")
    owner.spawn(ctl.run(), name="run")
    try:
        async with asyncio.timeout(5):
            while not cache.pushed:
                await ctl.wait_reconciled()
        assert ctl.failed_writes > 0  # the Deployment create failed: a retry is scheduled, not slept on
        second = gw("waypoint2")
        sources["gateways"].store["app/waypoint2"] = second
        for handler in sources["gateways"].handlers:
            handler([])
        async with asyncio.timeout(30):  # far below the retry back-off: the change was not held back
            while not any("app/waypoint2" in names for _, names in cache.pushed):
                await ctl.wait_reconciled()
    finally:
        await owner.close()
