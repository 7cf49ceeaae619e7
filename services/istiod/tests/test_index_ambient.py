"""The ambient index as derived collections: outputs follow inputs; a change recomputes only what read it."""

from __future__ import annotations

from typing import Any

from istiod.index import records as r
from istiod.index.ambient import AmbientIndex
from istiod.index.krt import Derived, Input
from istiod.index.services import MeshContext


def obj(
    name: str, ns: str | None = None, labels: dict[str, str] | None = None, **rest: Any
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": labels or {}, "resourceVersion": "1"}
    if ns:
        meta["namespace"] = ns
    return {"metadata": meta, **rest}


def pod(
    name: str, ns: str = "app", labels: dict[str, str] | None = None, ip: str = "10.0.0.1"
) -> dict[str, Any]:
    return obj(
        name,
        ns,
        labels or {"app": "web"},
        spec={"nodeName": "n1"},
        status={"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]},
    )


def service(
    name: str, ns: str = "app", selector: dict[str, str] | None = None, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    return obj(name, ns, labels, spec={"selector": selector or {"app": "web"}, "clusterIP": "10.96.0.1",
                                       "ports": [{"port": 80, "targetPort": 8080}]})  # fmt: skip


def feed(index: AmbientIndex, kind: str, *objs: dict[str, Any]) -> None:
    def key(o: dict[str, Any]) -> str:
        m = o["metadata"]
        return f"{m['namespace']}/{m['name']}" if m.get("namespace") else m["name"]

    index.inputs[kind].apply({key(o): o for o in objs})


def make() -> AmbientIndex:
    index = AmbientIndex(MeshContext())
    feed(index, "namespaces", obj("app"), obj("other"))
    feed(index, "pods", pod("a", ip="10.0.0.1"), pod("b", ip="10.0.0.2"), pod("c", "other", ip="10.0.1.1"))
    feed(index, "services", service("web"))
    return index


def workload(index: AmbientIndex, uid: str) -> r.Workload:
    record = index.addresses.get(uid)
    assert isinstance(record, r.Workload)
    return record


def recomputations(index: AmbientIndex) -> int:
    return sum(p.recomputations for p in index.address_parts if isinstance(p, Derived))


def test_outputs_follow_inputs() -> None:
    index = make()
    assert sorted(index.addresses.keys()) == [
        "Kubernetes//Pod/app/a", "Kubernetes//Pod/app/b", "Kubernetes//Pod/other/c",
        "app/web.app.svc.cluster.local",
    ]  # fmt: skip
    assert dict(workload(index, "Kubernetes//Pod/app/a").services) == {
        "app/web.app.svc.cluster.local": (r.Port(80, 8080),)
    }
    assert index.lookup("/10.0.0.2")[0].uid == "Kubernetes//Pod/app/b"  # type: ignore[union-attr]
    index.inputs["pods"].delete("app/a")
    assert "Kubernetes//Pod/app/a" not in index.addresses
    assert index.lookup("/10.0.0.1") == []


def test_service_change_recomputes_only_its_namespace() -> None:
    index = make()
    before = recomputations(index)
    feed(index, "services", service("web", selector={"app": "nothing"}))
    # the service itself + the two pods of its namespace; the pod in "other" was not touched
    assert recomputations(index) - before == 3
    assert workload(index, "Kubernetes//Pod/app/a").services == ()
    assert workload(index, "Kubernetes//Pod/other/c").services == ()


def test_pod_change_recomputes_only_that_pod() -> None:
    index = make()
    before = recomputations(index)
    feed(index, "pods", pod("a", labels={"app": "web", "v": "2"}, ip="10.0.0.1"))
    assert recomputations(index) - before == 1


def test_no_op_change_publishes_nothing() -> None:
    index = make()
    seen: list[Any] = []
    index.addresses.subscribe(seen.append)
    unchanged = pod("a", ip="10.0.0.1")
    unchanged["metadata"]["resourceVersion"] = "2"  # a new object, the same record
    feed(index, "pods", unchanged)
    assert seen == []


def test_waypoint_attachment_follows_gateway_readiness_and_labels() -> None:
    index = make()
    feed(index, "namespaces", obj("app", labels={"istio.io/use-waypoint": "wp"}))
    svc_key = "app/web.app.svc.cluster.local"
    assert index.addresses.get(svc_key).waypoint is None  # type: ignore[union-attr]
    gw = obj("wp", "app", spec={"gatewayClassName": "istio-waypoint", "listeners": []},
             status={"addresses": [{"type": "Hostname", "value": "wp.app.svc.cluster.local"}]})  # fmt: skip
    feed(index, "gateways", gw)
    assert index.addresses.get(svc_key).waypoint == r.GatewayAddress("app", "wp.app.svc.cluster.local")  # type: ignore[union-attr]
    assert workload(index, "Kubernetes//Pod/app/a").waypoint is None  # service-only waypoint
    feed(index, "services", service("web", labels={"istio.io/use-waypoint": "none"}))
    assert index.addresses.get(svc_key).waypoint is None  # type: ignore[union-attr]


def test_policies_attach_to_workloads() -> None:
    index = make()
    feed(index, "authorizationpolicies",
         obj("sel", "app", spec={"selector": {"matchLabels": {"app": "web"}}, "rules": [{}]}),
         obj("ns-wide", "app", spec={"rules": [{}]}))  # fmt: skip
    assert workload(index, "Kubernetes//Pod/app/a").authorization_policies == ("app/sel",)
    assert workload(index, "Kubernetes//Pod/other/c").authorization_policies == ()
    assert sorted(index.authorizations.keys()) == ["app/ns-wide", "app/sel"]
    feed(index, "peerauthentications", obj("default", "istio-system", spec={"mtls": {"mode": "STRICT"}}))
    assert "istio-system/istio_converted_static_strict" in index.authorizations
    assert workload(index, "Kubernetes//Pod/other/c").authorization_policies == (
        "istio-system/istio_converted_static_strict",
    )
    index.inputs["peerauthentications"].delete("istio-system/default")
    assert "istio-system/istio_converted_static_strict" not in index.authorizations
    assert workload(index, "Kubernetes//Pod/other/c").authorization_policies == ()


def test_failing_derivation_is_isolated() -> None:
    source: Input[int] = Input("numbers")
    source.apply({"a": 1, "b": 0})
    derived: Derived[int, float] = Derived(
        "inverse", source, lambda _ctx, n: {"x": 1 / n} if n else {"y": 1 / n}
    )
    assert derived.keys() == ["x"]


def _slice(name: str, endpoints: list[dict[str, Any]]) -> dict[str, Any]:
    ports = [
        {"name": "http", "port": 8080, "protocol": "TCP"},
        {"name": "dns", "port": 53, "protocol": "UDP"},
    ]
    return obj(name, "app", {"kubernetes.io/service-name": "ext"}, endpoints=endpoints, ports=ports)


def test_selectorless_service_endpoint_slices() -> None:
    index = make()
    ext = obj(
        "ext",
        "app",
        spec={"clusterIP": "10.96.0.9", "ports": [{"name": "http", "port": 80}, {"name": "dns", "port": 53}]},
    )
    feed(index, "services", ext)
    feed(index, "endpointslices", _slice("ext-abc", [
        {"addresses": ["10.0.0.2"], "targetRef": {"kind": "Pod", "name": "b", "namespace": "app"}},
        {"addresses": ["192.168.9.9"], "conditions": {"ready": False}},
    ]))  # fmt: skip
    ext_key = "app/ext.app.svc.cluster.local"
    assert dict(workload(index, "Kubernetes//Pod/app/b").services)[ext_key] == (
        r.Port(80, 8080),
        r.Port(53, 53),
    )
    assert ext_key not in dict(workload(index, "Kubernetes//Pod/app/a").services)
    vm = workload(index, "Kubernetes/discovery.k8s.io/EndpointSlice/app/ext-abc/192.168.9.9")
    assert vm.network_mode == r.NETWORK_MODE_HOST
    assert vm.status == r.STATUS_UNHEALTHY
    assert vm.services == ((ext_key, (r.Port(80, 8080),)),)  # TCP ports only
    index.inputs["endpointslices"].delete("app/ext-abc")
    assert ext_key not in dict(workload(index, "Kubernetes//Pod/app/b").services)
    assert "Kubernetes/discovery.k8s.io/EndpointSlice/app/ext-abc/192.168.9.9" not in index.addresses


def test_waypoint_pods_get_an_inbound_binding_not_a_waypoint() -> None:
    index = make()
    feed(index, "namespaces", obj("app", labels={"istio.io/use-waypoint": "wp"}))
    gw = obj("wp", "app", labels={"istio.io/waypoint-for": "all"},
             spec={"gatewayClassName": "istio-waypoint", "listeners": []},
             status={"addresses": [{"type": "Hostname", "value": "wp.app.svc.cluster.local"}]})  # fmt: skip
    gw["metadata"]["annotations"] = {"ambient.istio.io/waypoint-inbound-binding": "PROXY/15088"}
    feed(index, "gateways", gw)
    feed(index, "pods", pod("wp-pod", labels={"gateway.networking.k8s.io/gateway-name": "wp"}, ip="10.0.0.9"))
    waypoint_pod = workload(index, "Kubernetes//Pod/app/wp-pod")
    assert waypoint_pod.waypoint is None
    assert waypoint_pod.application_tunnel == r.ApplicationTunnel(r.APP_TUNNEL_PROXY, 15088)
    assert workload(index, "Kubernetes//Pod/app/a").waypoint == r.GatewayAddress(
        "app", "wp.app.svc.cluster.local"
    )


def test_dry_run_policies_sent_when_enabled() -> None:
    index = AmbientIndex(MeshContext(), dry_run_policies=True)
    policy = obj("dry", "app", spec={"action": "DENY", "rules": [{}]})
    policy["metadata"]["annotations"] = {"istio.io/dry-run": "true"}
    feed(index, "authorizationpolicies", policy)
    assert index.authorizations.get("app/dry").dry_run is True  # type: ignore[union-attr]


def test_weighted_waypoint_canary() -> None:
    index = make()
    for name in ("wp", "wp-v2"):
        address = {"type": "Hostname", "value": f"{name}.app.svc.cluster.local"}
        spec = {"gatewayClassName": "istio-waypoint", "listeners": []}
        feed(index, "gateways", obj(name, "app", spec=spec, status={"addresses": [address]}))
    svc = service("web", labels={"istio.io/use-waypoint": "wp", "istio.io/use-waypoint-canary": "wp-v2"})
    svc["metadata"]["annotations"] = {"istio.io/use-waypoint-canary-weight": "5"}
    feed(index, "services", svc)
    record = index.addresses.get("app/web.app.svc.cluster.local")
    assert isinstance(record, r.Service)
    primary, canary = (
        r.GatewayAddress("app", "wp.app.svc.cluster.local"),
        r.GatewayAddress("app", "wp-v2.app.svc.cluster.local"),
    )
    assert record.waypoint == primary
    assert record.weighted_waypoints == (r.WeightedWaypoint(primary, 95), r.WeightedWaypoint(canary, 5))
    index.inputs["gateways"].delete("app/wp-v2")  # canary not ready: no weights, primary stays
    record = index.addresses.get("app/web.app.svc.cluster.local")
    assert isinstance(record, r.Service)
    assert (record.waypoint, record.weighted_waypoints) == (primary, ())


def test_locality_from_the_node() -> None:
    index = make()
    labels = {"topology.kubernetes.io/region": "eu", "topology.kubernetes.io/zone": "eu-1",
              "topology.istio.io/subzone": "rack7"}  # fmt: skip
    feed(index, "nodes", obj("n1", labels=labels))
    assert workload(index, "Kubernetes//Pod/app/a").locality == r.Locality("eu", "eu-1", "rack7")
    assert workload(index, "Kubernetes//Pod/other/c").locality == r.Locality("eu", "eu-1", "rack7")


def test_network_from_labels() -> None:
    index = make()
    feed(index, "namespaces", obj("istio-system", labels={"topology.istio.io/network": "net-a"}))
    assert workload(index, "Kubernetes//Pod/app/a").network == "net-a"
    service_record = index.addresses.get("app/web.app.svc.cluster.local")
    assert isinstance(service_record, r.Service)
    assert service_record.addresses[0].network == "net-a"
    assert index.lookup("net-a/10.0.0.1")[0].uid == "Kubernetes//Pod/app/a"  # type: ignore[union-attr]
    feed(index, "namespaces", obj("other", labels={"topology.istio.io/network": "net-b"}))
    assert workload(index, "Kubernetes//Pod/other/c").network == "net-b"
    feed(index, "pods", pod("a", labels={"app": "web", "topology.istio.io/network": "net-c"}, ip="10.0.0.1"))
    assert workload(index, "Kubernetes//Pod/app/a").network == "net-c"
