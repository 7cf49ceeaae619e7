"""Everything istiod encodes is something a real (Rust) ztunnel accepts (wire-contracts.md §1.2-§1.5, §2).

ztunnel converts enums strictly and rejects a whole resource for one bad field, so one wrong value NACKs a
workload. A rich index (every kind of input, waypoints by hostname and IP, inbound binding, every load
balancing mapping, ServiceEntry CIDRs, port-level PeerAuthentication) is built, and each encoded resource is
checked field by field against the rules ztunnel applies.
"""

from __future__ import annotations

from typing import Any

from istiod.index.ambient import AmbientIndex
from istiod.index.services import MeshContext
from istiod.xds.cache import ResourceCache
from meshkit.xds.types import ADDRESS_TYPE, AUTHORIZATION_TYPE
from meshproto.istio.security import authorization_pb2 as apb
from meshproto.istio.workload import workload_pb2 as wpb

READY = [{"type": "Ready", "status": "True"}]
Obj = dict[str, Any]
RULE = {
    "from": [{"source": {"ipBlocks": ["10.0.0.0/8", "fd00::1"], "principals": ["*", "a*", "*b"]}}],
    "to": [{"operation": {"ports": ["80"]}}],
    "when": [{"key": "destination.ip", "values": ["10.0.0.1"]}],
}


def _o(name: str, ns: str | None = None, labels: dict[str, str] | None = None,
       annotations: dict[str, str] | None = None, **rest: Any) -> Obj:  # fmt: skip
    meta: Obj = {"name": name, "labels": labels or {}, "annotations": annotations or {}}
    if ns:
        meta["namespace"] = ns
    return {"metadata": meta, **rest}


def _pod(name: str, ip: str, labels: dict[str, str], **spec: Any) -> Obj:
    ips = [{"ip": ip}, {"ip": "fd00::" + ip.rsplit(".", 1)[1]}]
    return _o(name, "app", labels, {"ambient.istio.io/redirection": "enabled"},
              spec={"nodeName": "n1", "containers": [{"ports": [{"name": "http", "containerPort": 8080}]}],
                    **spec},
              status={"phase": "Running", "podIP": ip, "podIPs": ips, "conditions": READY})  # fmt: skip


def _svc(name: str, labels: dict[str, str] | None = None, **spec: Any) -> Obj:
    ports = [{"name": "http", "port": 80, "targetPort": "http", "appProtocol": "http"}]
    base = {
        "selector": {"app": "web"},
        "clusterIPs": ["10.96.0.1", "fd00:96::1"],
        "ipFamilies": ["IPv4", "IPv6"],
    }
    return _o(name, "app", labels, spec={**base, "ports": ports, **spec})


def _inputs() -> dict[str, list[Obj]]:
    gw_status = {"addresses": [{"type": "Hostname", "value": "wp.app.svc.cluster.local"}]}
    return {
        "nodes": [_o("n1", None, {"topology.kubernetes.io/region": "r", "topology.kubernetes.io/zone": "z"})],
        "namespaces": [_o("app", None, {"istio.io/use-waypoint": "wp"}), _o("istio-system")],
        "gatewayclasses": [_o("istio-waypoint", None, {"istio.io/waypoint-for": "all"},
                              {"ambient.istio.io/waypoint-inbound-binding": "PROXY/15088"})],
        "gateways": [
            _o("wp", "app", spec={"gatewayClassName": "istio-waypoint",
                                  "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]},
               status=gw_status),
            _o("wp-ip", "app", {"istio.io/waypoint-for": "workload"}, spec={"gatewayClassName": "x"},
               status={"addresses": [{"type": "IPAddress", "value": "10.1.0.9"}]}),
        ],
        "pods": [
            _pod("web-1", "10.0.0.1", {"app": "web"}),
            _pod("web-2", "10.0.0.2", {"app": "web", "istio.io/use-waypoint": "wp-ip"}),
            _pod("host", "10.0.0.3", {"app": "web", "istio.io/use-waypoint": "none"}, hostNetwork=True),
            _pod("wp-pod", "10.0.0.4", {"gateway.networking.k8s.io/gateway-name": "wp"}),
            _pod("native", "10.0.0.5", {"networking.istio.io/tunnel": "http"}),
        ],
        "services": [
            _svc("web", {"istio.io/use-waypoint-canary": "wp"}, internalTrafficPolicy="Local"),
            _svc("close", trafficDistribution="PreferClose"),
            _svc("node", trafficDistribution="PreferSameNode", publishNotReadyAddresses=True),
            _svc("unready", publishNotReadyAddresses=True),
            _svc("headless", clusterIPs=["None"], clusterIP="None"),
            _o("wp", "app", {"gateway.istio.io/managed": "istio.io-mesh-controller"},
               spec={"selector": {"gateway.networking.k8s.io/gateway-name": "wp"}, "clusterIP": "10.96.0.9",
                     "ports": [{"port": 15008}]}),
        ],
        "serviceentries": [
            _o("ext", "app", spec={"hosts": ["a.example.com", "*.wild.example.com"],
                                   "addresses": ["192.168.0.0/16", "10.9.9.9"], "resolution": "NONE",
                                   "ports": [{"number": 443, "name": "tls", "protocol": "TLS"}],
                                   "endpoints": [{"address": "1.2.3.4"}, {"address": "svc.example.com"}]}),
            _o("dns", "app", spec={"hosts": ["b.example.com"], "resolution": "DNS",
                                   "ports": [{"number": 80, "name": "http", "targetPort": 8080}],
                                   "workloadSelector": {"labels": {"app": "web"}}},
               status={"addresses": [{"host": "b.example.com", "value": "240.240.0.1"}]}),
        ],
        "workloadentries": [
            _o("vm", "app", {"app": "web"}, spec={"address": "10.5.0.1", "serviceAccount": "vm"}),
            _o("vm-dns", "app", spec={"address": "vm.example.com", "locality": "r/z/s"}),
        ],
        "endpointslices": [],
        "authorizationpolicies": [
            _o("allow", "app", spec={"selector": {"matchLabels": {"app": "web"}}, "rules": [RULE]}),
            _o("deny-l7", "istio-system",
               spec={"action": "DENY", "rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}),
        ],
        "peerauthentications": [
            _o("web", "app", spec={"selector": {"matchLabels": {"app": "web"}}, "mtls": {"mode": "STRICT"},
                                   "portLevelMtls": {"9090": {"mode": "PERMISSIVE"}}}),
        ],
    }  # fmt: skip


def _key(obj: Obj) -> str:
    meta = obj["metadata"]
    return f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else str(meta["name"])


def _build() -> ResourceCache:
    index = AmbientIndex(MeshContext(network="net1"))
    cache = ResourceCache()
    cache.watch(index.addresses, index.authorizations, lambda k: [r.resource_name for r in index.lookup(k)])
    for kind, objs in _inputs().items():
        index.inputs[kind].apply({_key(o): o for o in objs})
    return cache


def _enum_ok(enum: Any, value: int) -> bool:
    return value in enum.values()


def _gateway_errors(where: str, gw: wpb.GatewayAddress) -> list[str]:
    errors = []
    if gw.WhichOneof("destination") is None:
        errors.append(f"{where}: GatewayAddress without a destination")
    if gw.HasField("address") and len(gw.address.address) not in (4, 16):
        errors.append(f"{where}: gateway address of {len(gw.address.address)} bytes")
    return errors


def _workload_errors(w: wpb.Workload) -> list[str]:
    errors = [f"address of {len(a)} bytes" for a in w.addresses if len(a) not in (4, 16)]
    if w.tunnel_protocol not in (wpb.TunnelProtocol.NONE, wpb.TunnelProtocol.HBONE):
        errors.append(f"tunnel_protocol {w.tunnel_protocol} (LEGACY_ISTIO_MTLS is refused)")
    for enum, value in ((wpb.NetworkMode, w.network_mode), (wpb.WorkloadStatus, w.status),
                        (wpb.ApplicationTunnel.Protocol, w.application_tunnel.protocol)):  # fmt: skip
        if not _enum_ok(enum, value):
            errors.append(f"{enum} value {value}")
    errors += [f"services key {k!r} has no '/'" for k in w.services if "/" not in k]
    for field in ("waypoint", "network_gateway"):
        if w.HasField(field):
            errors += _gateway_errors(field, getattr(w, field))
    if not w.uid:
        errors.append("empty uid")
    return errors


def _service_errors(s: wpb.Service) -> list[str]:
    errors = [f"VIP of {len(a.address)} bytes" for a in s.addresses if len(a.address) not in (4, 16)]
    if not _enum_ok(wpb.IPFamilies, s.ip_families):
        errors.append(f"ip_families {s.ip_families}")
    lb = s.load_balancing
    if 0 in lb.routing_preference:
        errors.append("UNSPECIFIED_SCOPE in routing_preference")
    bad_scopes = [p for p in lb.routing_preference if not _enum_ok(wpb.LoadBalancing.Scope, p)]
    errors += [f"scope {p}" for p in bad_scopes]
    if not _enum_ok(wpb.LoadBalancing.Mode, lb.mode) or not _enum_ok(
        wpb.LoadBalancing.HealthPolicy, lb.health_policy
    ):
        errors.append(f"load balancing mode/health {lb.mode}/{lb.health_policy}")
    errors += [f"port {p.service_port}->{p.target_port} out of range" for p in s.ports
               if p.service_port > 65535 or p.target_port > 65535]  # fmt: skip
    if s.HasField("waypoint"):
        errors += _gateway_errors("waypoint", s.waypoint)
    for i, weighted in enumerate(s.weighted_waypoints):
        errors += _gateway_errors(f"weighted_waypoints[{i}]", weighted.destination)
    return errors


def _authorization_errors(a: apb.Authorization) -> list[str]:
    errors = []
    for rule in a.rules:
        for clause in rule.clauses:
            for m in clause.matches:
                for ip in (*m.source_ips, *m.not_source_ips, *m.destination_ips, *m.not_destination_ips):
                    if len(ip.address) not in (4, 16) or ip.length > 8 * len(ip.address):
                        errors.append(f"ip match {ip}")
                for sm in (*m.namespaces, *m.not_namespaces, *m.principals, *m.not_principals):
                    if sm.WhichOneof("match_type") is None:
                        errors.append("StringMatch without a match type")
                    if sm.WhichOneof("match_type") in ("exact", "prefix", "suffix") and "spiffe://" in str(
                        sm
                    ):
                        errors.append(f"principal with a scheme {sm}")
                ports = (*m.destination_ports, *m.not_destination_ports)
                errors += [f"port {p}" for p in ports if p > 65535]
    return errors


def test_every_encoded_resource_is_accepted_by_ztunnel_rules() -> None:
    cache = _build()
    seen = {"workload": 0, "service": 0, "authorization": 0, "waypoint": 0, "app_tunnel": 0, "lb": 0}
    for name, res in cache.resources[ADDRESS_TYPE].items():
        address = wpb.Address.FromString(_any_value(res.any_bytes, ADDRESS_TYPE))
        kind = address.WhichOneof("type")
        assert kind is not None, f"{name}: Address with no oneof set"
        if kind == "workload":
            seen["workload"] += 1
            assert address.workload.uid == name, (
                "Resource.name must equal Workload.uid (removals are by name)"
            )
            seen["waypoint"] += address.workload.HasField("waypoint")
            seen["app_tunnel"] += address.workload.HasField("application_tunnel")
            errors = _workload_errors(address.workload)
        else:
            seen["service"] += 1
            svc = address.service
            assert name == f"{svc.namespace}/{svc.hostname}"
            seen["lb"] += svc.HasField("load_balancing")
            errors = _service_errors(svc)
        assert errors == [], f"{name}: {errors}"
        assert res.version  # Address resources carry their content version on the wire
        assert res.wire_version == res.version
    for name, res in cache.resources[AUTHORIZATION_TYPE].items():
        seen["authorization"] += 1
        auth = apb.Authorization.FromString(_any_value(res.any_bytes, AUTHORIZATION_TYPE))
        assert name == f"{auth.namespace}/{auth.name}"
        assert res.wire_version == ""  # upstream sends Authorization resources without a version
        assert _authorization_errors(auth) == [], name
    # the fixture really exercised each feature checked above
    assert seen["workload"] >= 9, seen
    assert seen["service"] >= 8, seen
    assert seen["authorization"] >= 4, seen
    assert seen["waypoint"] >= 2, seen
    assert seen["app_tunnel"] == 1, seen
    assert seen["lb"] >= 5, seen


def _any_value(any_bytes: bytes, type_url: str) -> bytes:
    from google.protobuf import any_pb2

    wrapped = any_pb2.Any.FromString(any_bytes)
    assert wrapped.type_url == type_url
    return wrapped.value
