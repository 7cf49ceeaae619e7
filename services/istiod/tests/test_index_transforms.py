"""Unit tests of the pure transformations: pods, WorkloadEntries, ServiceEntries, Services, waypoints."""

from __future__ import annotations

import ipaddress
from typing import Any

from istiod.index import records as r
from istiod.index import waypoints as wp
from istiod.index.services import MeshContext, k8s_service, load_balancing, service_entry_services
from istiod.index.workloads import (
    k8s_service_ports,
    pod_workload,
    service_entry_workloads,
    services_map,
    workload_entry_workload,
    workload_name,
)

CTX = MeshContext(cluster_id="Kubernetes", network="net1")


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def pod(name: str = "web-5d8f-abcde", ns: str = "app", **kw: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "metadata": {"name": name, "namespace": ns, "labels": {"app": "web", "pod-template-hash": "5d8f"},
                     "generateName": "web-5d8f-",
                     "annotations": {}, "ownerReferences": [{"kind": "ReplicaSet", "name": "web-5d8f",
                                                             "controller": True}]},
        "spec": {"nodeName": "node1", "serviceAccountName": "web-sa",
                 "containers": [{"ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIP": "10.0.0.5", "podIPs": [{"ip": "10.0.0.5"}, {"ip": "fd00::5"}],
                   "conditions": [{"type": "Ready", "status": "True"}]},
    }  # fmt: skip
    for key, value in kw.items():
        section, _, field = key.partition("__")
        obj[section][field] = value
    return obj


def test_pod_workload_fields() -> None:
    w = pod_workload(pod(), CTX)
    assert w is not None
    assert w.uid == "Kubernetes//Pod/app/web-5d8f-abcde"
    assert w.addresses == (ip("10.0.0.5"), ip("fd00::5"))
    assert (w.node, w.service_account, w.network, w.cluster_id) == ("node1", "web-sa", "net1", "Kubernetes")
    assert w.trust_domain == ""  # cluster.local is sent empty
    assert (w.workload_name, w.workload_type) == ("web", r.WORKLOAD_TYPE_POD)
    assert (w.canonical_name, w.canonical_revision) == ("web", "latest")
    assert w.status == r.STATUS_HEALTHY
    assert w.tunnel_protocol == r.TUNNEL_NONE
    assert w.network_mode == r.NETWORK_MODE_STANDARD


def test_pod_skipped_without_ip_or_terminal() -> None:
    assert pod_workload(pod(status__podIPs=[], status__podIP=""), CTX) is None
    assert pod_workload(pod(status__phase="Succeeded"), CTX) is None
    assert pod_workload(pod(status__phase="Failed"), CTX) is None


def test_pod_status_from_readiness_and_deletion() -> None:
    not_ready = pod(status__conditions=[{"type": "Ready", "status": "False"}])
    assert pod_workload(not_ready, CTX).status == r.STATUS_UNHEALTHY  # type: ignore[union-attr]
    deleting = pod()
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert pod_workload(deleting, CTX).status == r.STATUS_UNHEALTHY  # type: ignore[union-attr]


def test_tunnel_protocol_only_with_redirection_annotation() -> None:
    enrolled = pod(metadata__annotations={"ambient.istio.io/redirection": "enabled"})
    assert pod_workload(enrolled, CTX).tunnel_protocol == r.TUNNEL_HBONE  # type: ignore[union-attr]
    other = pod(metadata__annotations={"ambient.istio.io/redirection": "disabled"})
    assert pod_workload(other, CTX).tunnel_protocol == r.TUNNEL_NONE  # type: ignore[union-attr]
    native = pod()
    native["metadata"]["labels"]["networking.istio.io/tunnel"] = "http"
    w = pod_workload(native, CTX)
    assert w is not None
    assert (w.tunnel_protocol, w.native_tunnel) == (r.TUNNEL_HBONE, True)
    native["metadata"]["labels"]["networking.istio.io/tunnel"] = "h2c,http"
    assert pod_workload(native, CTX).native_tunnel is True  # type: ignore[union-attr]
    native["metadata"]["labels"]["networking.istio.io/tunnel"] = "https"  # a list of names, not a substring
    assert pod_workload(native, CTX).tunnel_protocol == r.TUNNEL_NONE  # type: ignore[union-attr]


def test_host_network_and_trust_domain() -> None:
    w = pod_workload(pod(spec__hostNetwork=True), MeshContext(trust_domain="example.org"))
    assert w is not None
    assert w.network_mode == r.NETWORK_MODE_HOST
    assert w.trust_domain == "example.org"


def test_canonical_labels_precedence() -> None:
    p = pod()
    p["metadata"]["labels"].update({"app.kubernetes.io/name": "n1", "version": "v2",
                                     "service.istio.io/canonical-name": "canon"})  # fmt: skip
    w = pod_workload(p, CTX)
    assert w is not None
    assert (w.canonical_name, w.canonical_revision) == ("canon", "v2")
    p["metadata"]["labels"]["service.istio.io/canonical-revision"] = ""  # present wins, even when empty
    assert pod_workload(p, CTX).canonical_revision == ""  # type: ignore[union-attr]


def test_workload_name_from_owners() -> None:
    assert workload_name(pod()) == "web"
    job = pod()
    job["metadata"]["ownerReferences"] = [{"kind": "Job", "name": "backup-28712345", "controller": True}]
    assert workload_name(job) == "backup"
    bare = pod()
    bare["metadata"]["ownerReferences"] = []
    assert workload_name(bare) == "web-5d8f-abcde"
    not_controller = pod()
    not_controller["metadata"]["ownerReferences"][0]["controller"] = False
    assert workload_name(not_controller) == "web-5d8f-abcde"  # only a controller owner names the workload
    named = pod()
    del named["metadata"]["generateName"]  # a pod whose name was not generated is its own workload
    assert workload_name(named) == "web-5d8f-abcde"
    job["metadata"]["ownerReferences"][0]["name"] = "migrate-1234"  # not a CronJob's timestamp suffix
    assert workload_name(job) == "migrate-1234"


def svc(name: str = "web", ns: str = "app", **spec: Any) -> dict[str, Any]:
    base = {"selector": {"app": "web"}, "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}, {"port": 9000, "targetPort": 9001}],
            "ipFamilies": ["IPv4"]}  # fmt: skip
    base.update(spec)
    return {"metadata": {"name": name, "namespace": ns, "labels": {}}, "spec": base}


def test_named_target_port_resolution_per_pod() -> None:
    assert k8s_service_ports(svc(), pod()) == (r.Port(80, 8080), r.Port(9000, 9001))
    other = pod()
    other["spec"]["containers"] = [{"ports": [{"name": "grpc", "containerPort": 7070}]}]
    assert k8s_service_ports(svc(), other) == (r.Port(9000, 9001),)  # name missing on this pod ⇒ omitted
    udp = pod()
    udp["spec"]["containers"] = [{"ports": [{"name": "http", "containerPort": 8080, "protocol": "UDP"}]}]
    assert k8s_service_ports(svc(), udp) == (r.Port(9000, 9001),)  # FindPortName matches TCP ports only


def test_services_map_selects_by_labels_and_service_entries() -> None:
    se = {"metadata": {"name": "ext", "namespace": "app"},
          "spec": {"hosts": ["a.example.com"], "workloadSelector": {"labels": {"app": "web"}},
                   "ports": [{"name": "http", "number": 80, "targetPort": 8081}]}}  # fmt: skip
    unselected = svc("db", spec_selector=None)
    unselected["spec"]["selector"] = {"app": "db"}
    got = services_map(
        CTX, pod(), labels={"app": "web"}, k8s_services=[svc(), unselected], service_entries=[se]
    )
    assert dict(got) == {
        "app/web.app.svc.cluster.local": (r.Port(80, 8080), r.Port(9000, 9001)),
        "app/a.example.com": (r.Port(80, 8081),),
    }


def test_k8s_service_record() -> None:
    s = k8s_service(svc(), CTX, None, None)
    assert s is not None
    assert s.hostname == "web.app.svc.cluster.local"
    assert s.resource_name == "app/web.app.svc.cluster.local"
    assert s.addresses == (r.NetworkAddress("net1", ip("10.96.0.10")),)
    assert s.ports == (r.Port(80, 0, r.APP_PROTOCOL_HTTP11), r.Port(9000, 9001))  # named ⇒ 0
    assert (s.canonical, s.ip_families) == (True, r.IP_FAMILIES_IPV4)
    headless = k8s_service(svc(clusterIP="None", clusterIPs=["None"]), CTX, None, None)
    assert headless is not None
    assert headless.addresses == ()
    assert k8s_service(svc(type="ExternalName"), CTX, None, None) is None


def test_load_balancing_mapping() -> None:
    assert load_balancing(svc(internalTrafficPolicy="Local"), None) == r.LoadBalancing(
        (r.SCOPE_NODE,), r.LB_MODE_STRICT
    )
    close = load_balancing(svc(trafficDistribution="PreferClose"), None)
    assert close == r.LoadBalancing((r.SCOPE_NETWORK, r.SCOPE_REGION, r.SCOPE_ZONE), r.LB_MODE_FAILOVER)
    ns = {"metadata": {"annotations": {"networking.istio.io/traffic-distribution": "PreferSameNode"}}}
    assert load_balancing(svc(), ns).routing_preference[-1] == r.SCOPE_NODE  # type: ignore[union-attr]
    assert load_balancing(svc(), None) is None


def se_obj(**spec: Any) -> dict[str, Any]:
    base = {"hosts": ["a.example.com", "b.example.com"], "ports": [{"name": "http", "number": 80}],
            "resolution": "STATIC"}  # fmt: skip
    base.update(spec)
    return {"metadata": {"name": "ext", "namespace": "app"}, "spec": base,
            "status": {"addresses": [{"host": "a.example.com", "value": "240.240.0.1"}]}}  # fmt: skip


def test_service_entry_one_service_per_host() -> None:
    got = service_entry_services(
        se_obj(addresses=["192.168.0.0/24"], subjectAltNames=["spiffe://x"]), CTX, None
    )
    assert [s.hostname for s in got] == ["a.example.com", "b.example.com"]
    assert got[0].addresses == (r.NetworkAddress("net1", ip("192.168.0.0"), 24),)
    assert got[0].subject_alt_names == ("spiffe://x",)
    assert got[0].ports == (r.Port(80, 80, r.APP_PROTOCOL_HTTP11),)
    auto = service_entry_services(se_obj(), CTX, None)
    assert auto[0].addresses == (r.NetworkAddress("net1", ip("240.240.0.1")),)
    assert auto[1].addresses == ()
    passthrough = service_entry_services(se_obj(resolution="NONE"), CTX, None)
    assert passthrough[0].load_balancing == r.LoadBalancing((), r.LB_MODE_PASSTHROUGH)
    assert passthrough[0].addresses == ()  # no auto-allocation for resolution NONE


def test_service_entry_inline_endpoints() -> None:
    se = se_obj(endpoints=[{"address": "1.2.3.4", "ports": {"http": 8080}, "serviceAccount": "x",
                            "labels": {"app": "ext"}}])  # fmt: skip
    (w,) = service_entry_workloads(se, CTX)
    assert w.uid == "Kubernetes/networking.istio.io/ServiceEntry/app/ext/1.2.3.4"
    assert dict(w.services) == {
        "app/a.example.com": (r.Port(80, 8080),),
        "app/b.example.com": (r.Port(80, 8080),),
    }
    assert (w.service_account, w.canonical_name, w.status) == ("x", "ext", r.STATUS_HEALTHY)


def test_workload_entry() -> None:
    we = {
        "metadata": {"name": "vm1", "namespace": "app"},
        "spec": {"address": "10.1.1.1", "serviceAccount": "vm", "labels": {"app": "vm"}, "network": "n2"},
    }
    w = workload_entry_workload(we, CTX)
    assert w.uid == "Kubernetes/networking.istio.io/WorkloadEntry/app/vm1"
    assert (w.addresses, w.network, w.service_account, w.status) == (
        (ip("10.1.1.1"),),
        "n2",
        "vm",
        r.STATUS_HEALTHY,
    )
    by_name = workload_entry_workload({"metadata": {"name": "vm2", "namespace": "app"},
                                       "spec": {"address": "vm.example.com"}}, CTX)  # fmt: skip
    assert (by_name.addresses, by_name.hostname) == ((), "vm.example.com")


def gateway(
    name: str = "wp",
    ns: str = "app",
    addresses: list[dict[str, str]] | None = None,
    labels: dict[str, str] | None = None,
    allowed: dict[str, Any] | None = None,
) -> dict[str, Any]:
    listener: dict[str, Any] = {"name": "mesh", "port": 15008, "protocol": "HBONE"}
    if allowed:
        listener["allowedRoutes"] = {"namespaces": allowed}
    return {"metadata": {"name": name, "namespace": ns, "labels": labels or {}},
            "spec": {"gatewayClassName": "istio-waypoint", "listeners": [listener]},
            "status": {"addresses": addresses if addresses is not None else
                       [{"type": "Hostname", "value": f"{name}.{ns}.svc.cluster.local"}]}}  # fmt: skip


def test_waypoint_requires_status_address_and_prefers_hostname() -> None:
    assert wp.waypoint_from_gateway(gateway(addresses=[]), None, "") is None
    w = wp.waypoint_from_gateway(gateway(), None, "")
    assert w is not None
    assert w.address == r.GatewayAddress("app", "wp.app.svc.cluster.local")
    assert w.traffic_type == "service"
    by_ip = wp.waypoint_from_gateway(
        gateway(addresses=[{"type": "IPAddress", "value": "10.0.0.9"}]), None, "n"
    )
    assert by_ip is not None
    assert by_ip.address == r.GatewayAddress(address=r.NetworkAddress("n", ip("10.0.0.9")))
    odd = [{"type": "Hostname", "value": ""}, {"type": "IPAddress", "value": "bogus"},
           {"type": "IPAddress", "value": "10.0.0.8"}]  # fmt: skip
    first_usable = wp.waypoint_from_gateway(gateway(addresses=odd), None, "n")
    assert first_usable is not None
    assert first_usable.address == r.GatewayAddress(address=r.NetworkAddress("n", ip("10.0.0.8")))
    assert wp.waypoint_from_gateway(gateway(addresses=odd[:2]), None, "n") is None  # no usable destination
    cls = {"metadata": {"labels": {"istio.io/waypoint-for": "all"}}}
    assert wp.waypoint_from_gateway(gateway(), cls, "").traffic_type == "all"  # type: ignore[union-attr]
    own = gateway(labels={"istio.io/waypoint-for": "workload"})
    assert wp.waypoint_from_gateway(own, cls, "").traffic_type == "workload"  # type: ignore[union-attr]


def _resolve(
    obj_labels: dict[str, str],
    ns_labels: dict[str, str],
    kind: str,
    gw: dict[str, Any] | None = None,
    obj_ns: str = "app",
) -> r.GatewayAddress | None:
    waypoint = wp.waypoint_from_gateway(gw or gateway(), None, "")
    table = {waypoint.key: waypoint} if waypoint else {}
    ref = wp.requested(obj_labels, obj_ns, ns_labels)
    return wp.resolve(ref, kind, obj_ns, ns_labels, table.get)


def test_waypoint_precedence_and_none() -> None:
    use = {"istio.io/use-waypoint": "wp"}
    assert _resolve(use, {}, "service") is not None
    assert _resolve({}, use, "service") is not None  # namespace fallback
    assert _resolve({"istio.io/use-waypoint": "none"}, use, "service") is None  # opt-out, no fallback
    assert _resolve({"istio.io/use-waypoint": "missing"}, use, "service") is None  # not ready ⇒ direct
    assert _resolve(use, {}, "workload") is None  # a service waypoint serves no workloads


def test_waypoint_cross_namespace_and_allowed_routes() -> None:
    cross = {"istio.io/use-waypoint": "wp", "istio.io/use-waypoint-namespace": "app"}
    assert _resolve(cross, {}, "service", obj_ns="other") is None  # default allowedRoutes: Same
    assert _resolve(cross, {}, "service", gateway(allowed={"from": "All"}), obj_ns="other") is not None
    selector = {"from": "Selector", "selector": {"matchLabels": {"team": "a"}}}
    assert _resolve(cross, {"team": "a"}, "service", gateway(allowed=selector), obj_ns="other") is not None
    assert _resolve(cross, {"team": "b"}, "service", gateway(allowed=selector), obj_ns="other") is None


def test_inbound_binding() -> None:
    gw = {"metadata": {"annotations": {"ambient.istio.io/waypoint-inbound-binding": "PROXY/15088"}}}
    cls = {"metadata": {"annotations": {"ambient.istio.io/waypoint-inbound-binding": "PROXY"}}}
    assert wp.inbound_binding(gw, cls) == r.ApplicationTunnel(r.APP_TUNNEL_PROXY, 15088)
    assert wp.inbound_binding(None, cls) == r.ApplicationTunnel(r.APP_TUNNEL_PROXY, 0)
    assert wp.inbound_binding(None, None) is None
