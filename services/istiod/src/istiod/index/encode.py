"""Records → protobuf, only at the xDS boundary (the index itself never touches protobuf).

``encode_address`` / ``encode_authorization`` return the message; ``to_any_bytes`` the serialized
``google.protobuf.Any`` value the xDS layer hashes for the resource version (wire-contracts.md §3.5).
Serialization is deterministic so equal records always give equal bytes.
"""

from __future__ import annotations

from google.protobuf import any_pb2, empty_pb2
from istiod.index.records import (
    Authorization,
    GatewayAddress,
    IpMatch,
    Match,
    NetworkAddress,
    Service,
    ServiceAccountMatch,
    StringMatch,
    Workload,
)
from meshproto.istio.security import authorization_pb2 as apb
from meshproto.istio.workload import workload_pb2 as wpb

ADDRESS_TYPE = "type.googleapis.com/istio.workload.Address"
AUTHORIZATION_TYPE = "type.googleapis.com/istio.security.Authorization"


def _network_address(addr: NetworkAddress) -> wpb.NetworkAddress:
    msg = wpb.NetworkAddress(network=addr.network, address=addr.address)
    if addr.length is not None:
        msg.length = addr.length
    return msg


def _gateway(gw: GatewayAddress) -> wpb.GatewayAddress:
    msg = wpb.GatewayAddress(hbone_mtls_port=gw.hbone_mtls_port)
    if gw.address is not None:
        msg.address.CopyFrom(_network_address(gw.address))
    else:
        msg.hostname.CopyFrom(wpb.NamespacedHostname(namespace=gw.hostname_namespace, hostname=gw.hostname))
    return msg


def _port(port: object) -> wpb.Port:
    return wpb.Port(
        service_port=port.service_port,  # type: ignore[attr-defined]
        target_port=port.target_port,  # type: ignore[attr-defined]
        app_protocol=port.app_protocol,  # type: ignore[attr-defined]
    )


def encode_workload(w: Workload) -> wpb.Workload:
    msg = wpb.Workload(
        uid=w.uid, name=w.name, namespace=w.namespace, addresses=list(w.addresses), hostname=w.hostname,
        network=w.network, tunnel_protocol=w.tunnel_protocol, trust_domain=w.trust_domain,  # type: ignore[arg-type]
        service_account=w.service_account, node=w.node, canonical_name=w.canonical_name,
        canonical_revision=w.canonical_revision, workload_type=w.workload_type,  # type: ignore[arg-type]
        workload_name=w.workload_name, native_tunnel=w.native_tunnel,
        authorization_policies=list(w.authorization_policies), status=w.status,  # type: ignore[arg-type]
        cluster_id=w.cluster_id, network_mode=w.network_mode,  # type: ignore[arg-type]
    )  # fmt: skip
    if w.waypoint is not None:
        msg.waypoint.CopyFrom(_gateway(w.waypoint))
    if w.application_tunnel is not None:
        msg.application_tunnel.protocol = w.application_tunnel.protocol  # type: ignore[assignment]
        msg.application_tunnel.port = w.application_tunnel.port
    for key, ports in w.services:
        msg.services[key].ports.extend(_port(p) for p in ports)
    if w.locality is not None:
        msg.locality.CopyFrom(wpb.Locality(region=w.locality.region, zone=w.locality.zone,
                                           subzone=w.locality.subzone))  # fmt: skip
    return msg


def encode_service(s: Service) -> wpb.Service:
    msg = wpb.Service(
        name=s.name, namespace=s.namespace, hostname=s.hostname,
        addresses=[_network_address(a) for a in s.addresses], ports=[_port(p) for p in s.ports],
        subject_alt_names=list(s.subject_alt_names), ip_families=s.ip_families,  # type: ignore[arg-type]
        canonical=s.canonical, ingress_use_waypoint=s.ingress_use_waypoint,
    )  # fmt: skip
    if s.waypoint is not None:
        msg.waypoint.CopyFrom(_gateway(s.waypoint))
    for weighted in s.weighted_waypoints:
        entry = msg.weighted_waypoints.add(weight=weighted.weight)
        entry.destination.CopyFrom(_gateway(weighted.destination))
    if s.load_balancing is not None:
        lb = s.load_balancing
        msg.load_balancing.routing_preference.extend(lb.routing_preference)  # type: ignore[arg-type]
        msg.load_balancing.mode = lb.mode  # type: ignore[assignment]
        msg.load_balancing.health_policy = lb.health_policy  # type: ignore[assignment]
    return msg


def encode_address(record: Workload | Service) -> wpb.Address:
    if isinstance(record, Workload):
        return wpb.Address(workload=encode_workload(record))
    return wpb.Address(service=encode_service(record))


def _string(m: StringMatch) -> apb.StringMatch:
    if m.kind == "presence":
        return apb.StringMatch(presence=empty_pb2.Empty())
    if m.kind == "prefix":
        return apb.StringMatch(prefix=m.value)
    if m.kind == "suffix":
        return apb.StringMatch(suffix=m.value)
    return apb.StringMatch(exact=m.value)


def _ips(ms: tuple[IpMatch, ...]) -> list[apb.Address]:
    return [apb.Address(address=m.address, length=m.length) for m in ms]


def _sas(ms: tuple[ServiceAccountMatch, ...]) -> list[apb.ServiceAccountMatch]:
    return [apb.ServiceAccountMatch(namespace=m.namespace, serviceAccount=m.service_account) for m in ms]


def _match(m: Match) -> apb.Match:
    return apb.Match(
        namespaces=[_string(x) for x in m.namespaces], not_namespaces=[_string(x) for x in m.not_namespaces],
        principals=[_string(x) for x in m.principals], not_principals=[_string(x) for x in m.not_principals],
        source_ips=_ips(m.source_ips), not_source_ips=_ips(m.not_source_ips),
        destination_ips=_ips(m.destination_ips), not_destination_ips=_ips(m.not_destination_ips),
        destination_ports=list(m.destination_ports), not_destination_ports=list(m.not_destination_ports),
        service_accounts=_sas(m.service_accounts), not_service_accounts=_sas(m.not_service_accounts),
    )  # fmt: skip


def encode_authorization(a: Authorization) -> apb.Authorization:
    return apb.Authorization(
        name=a.name, namespace=a.namespace, scope=a.scope, action=a.action,  # type: ignore[arg-type]
        dry_run=a.dry_run,
        rules=[apb.Rule(clauses=[apb.Clause(matches=[_match(m) for m in c.matches]) for c in r.clauses])
               for r in a.rules],
    )  # fmt: skip


def to_any_bytes(type_url: str, message: wpb.Address | apb.Authorization) -> bytes:
    """The serialized ``Any`` wrapping ``message`` (deterministic)."""
    wrapped = any_pb2.Any(type_url=type_url, value=message.SerializeToString(deterministic=True))
    return wrapped.SerializeToString(deterministic=True)
