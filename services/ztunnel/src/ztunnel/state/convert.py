"""Protobuf -> record conversion with ztunnel's validation (wire-contracts.md §1.2-§1.5, §2).

A bad resource raises :class:`InvalidResource` with the reason that goes into the NACK; the updater rejects
that resource alone (STYLE.md practice 7). Strict enums follow upstream: an unknown number fails the resource;
lenient ones (workload type, visibility) fall back to their default.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Literal, cast

from meshkit.identity.spiffe import DEFAULT_TRUST_DOMAIN
from meshproto.istio.security import authorization_pb2 as authz_pb2
from meshproto.istio.workload import workload_pb2 as wl_pb2

from ztunnel.state.records import (
    Authorization,
    GatewayAddress,
    IPNetwork,
    LoadBalancing,
    Locality,
    Match,
    NamespacedHostname,
    Service,
    StringMatch,
    Workload,
)

__all__ = [
    "InvalidResource",
    "authorization_from_proto",
    "ip_from_bytes",
    "service_from_proto",
    "workload_from_proto",
]


class InvalidResource(ValueError):
    """A resource ztunnel refuses; the message is the NACK detail."""


def ip_from_bytes(raw: bytes) -> str:
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw))
    if len(raw) == 16:
        return str(ipaddress.IPv6Address(raw))
    raise InvalidResource(f"address of {len(raw)} bytes (want 4 or 16)")


def _enum_name(enum: Any, value: int, what: str) -> str:
    try:
        return cast(str, enum.Name(value))
    except ValueError:
        raise InvalidResource(f"unknown {what} value {value}") from None


def _gateway(msg: wl_pb2.GatewayAddress) -> GatewayAddress:
    kind = msg.WhichOneof("destination")
    port = msg.hbone_mtls_port or 15008
    if kind == "hostname":
        return GatewayAddress(NamespacedHostname(msg.hostname.namespace, msg.hostname.hostname), None, port)
    if kind == "address":
        return GatewayAddress(None, (msg.address.network, ip_from_bytes(msg.address.address)), port)
    raise InvalidResource("gateway address has no destination (MissingGatewayAddress)")


def _tunnel(value: int) -> Literal["NONE", "HBONE"]:
    name = _enum_name(wl_pb2.TunnelProtocol, value, "tunnel_protocol")
    if name not in ("NONE", "HBONE"):
        raise InvalidResource(f"unsupported tunnel_protocol {name}")
    return cast(Literal["NONE", "HBONE"], name)


def workload_from_proto(msg: wl_pb2.Workload) -> Workload:
    services: dict[str, dict[int, int]] = {}
    for key, plist in msg.services.items():
        if "/" not in key:
            raise InvalidResource(f"service key {key!r} is not namespace/hostname")
        services[key] = {p.service_port & 0xFFFF: p.target_port & 0xFFFF for p in plist.ports}
    status = _enum_name(wl_pb2.WorkloadStatus, msg.status, "status")
    mode = _enum_name(wl_pb2.NetworkMode, msg.network_mode, "network_mode")
    app_tunnel = None
    if msg.HasField("application_tunnel"):
        proto = _enum_name(wl_pb2.ApplicationTunnel.Protocol, msg.application_tunnel.protocol, "app tunnel")
        app_tunnel = (proto, msg.application_tunnel.port)
    try:
        wtype = wl_pb2.WorkloadType.Name(msg.workload_type).lower()
    except ValueError:
        wtype = "deployment"  # lenient, as upstream
    return Workload(
        uid=msg.uid,
        name=msg.name,
        namespace=msg.namespace,
        addresses=tuple(ip_from_bytes(a) for a in msg.addresses),
        hostname=msg.hostname,
        network=msg.network,
        tunnel_protocol=_tunnel(msg.tunnel_protocol),
        trust_domain=msg.trust_domain or DEFAULT_TRUST_DOMAIN,
        service_account=msg.service_account or "default",
        waypoint=_gateway(msg.waypoint) if msg.HasField("waypoint") else None,
        network_gateway=_gateway(msg.network_gateway) if msg.HasField("network_gateway") else None,
        node=msg.node,
        canonical_name=msg.canonical_name,
        canonical_revision=msg.canonical_revision,
        workload_type=wtype,
        workload_name=msg.workload_name,
        native_tunnel=msg.native_tunnel,
        application_tunnel=app_tunnel,
        services=services,
        authorization_policies=tuple(msg.authorization_policies),
        healthy=status == "HEALTHY",
        cluster_id=msg.cluster_id or "Kubernetes",
        locality=Locality(msg.locality.region, msg.locality.zone, msg.locality.subzone),
        network_mode="HostNetwork" if mode == "HOST_NETWORK" else "Standard",
        capacity=msg.capacity.value if msg.HasField("capacity") else 1,
    )


def _load_balancing(msg: wl_pb2.LoadBalancing) -> LoadBalancing:
    scopes = []
    for scope in msg.routing_preference:
        name = _enum_name(wl_pb2.LoadBalancing.Scope, scope, "routing scope")
        if name == "UNSPECIFIED_SCOPE":
            raise InvalidResource("routing_preference contains UNSPECIFIED_SCOPE")
        scopes.append(name)
    mode = _enum_name(wl_pb2.LoadBalancing.Mode, msg.mode, "load balancing mode")
    health = _enum_name(wl_pb2.LoadBalancing.HealthPolicy, msg.health_policy, "health policy")
    return LoadBalancing(tuple(scopes), cast(Any, mode), cast(Any, health))


def service_from_proto(msg: wl_pb2.Service) -> Service:
    vips: list[tuple[str, str]] = []
    cidrs: list[tuple[str, IPNetwork]] = []
    for addr in msg.addresses:
        ip = ip_from_bytes(addr.address)
        full = 32 if len(addr.address) == 4 else 128
        if addr.HasField("length") and addr.length != full:
            cidrs.append((addr.network, ipaddress.ip_network(f"{ip}/{addr.length}", strict=False)))
        else:
            vips.append((addr.network, ip))
    try:
        visibility = wl_pb2.Service.Visibility.Name(msg.visibility)
    except ValueError:
        visibility = "PUBLIC"
    return Service(
        name=msg.name,
        namespace=msg.namespace,
        hostname=msg.hostname,
        vips=tuple(vips),
        cidr_vips=tuple(cidrs),
        ports={p.service_port & 0xFFFF: p.target_port & 0xFFFF for p in msg.ports},
        subject_alt_names=tuple(msg.subject_alt_names),
        waypoint=_gateway(msg.waypoint) if msg.HasField("waypoint") else None,
        weighted_waypoints=tuple((_gateway(w.destination), w.weight) for w in msg.weighted_waypoints),
        load_balancer=_load_balancing(msg.load_balancing) if msg.HasField("load_balancing") else None,
        ip_families=_enum_name(wl_pb2.IPFamilies, msg.ip_families, "ip_families"),
        canonical=msg.canonical,
        visibility=cast(Any, visibility if visibility in ("PUBLIC", "NAMESPACE") else "PUBLIC"),
    )


def _strings(items: Any) -> tuple[StringMatch, ...]:
    out = []
    for item in items:
        kind = item.WhichOneof("match_type")
        if kind is None:
            continue  # dropped, as upstream
        out.append(StringMatch(kind, "" if kind == "presence" else getattr(item, kind)))
    return tuple(out)


def _networks(items: Any) -> tuple[IPNetwork, ...]:
    out = []
    for item in items:
        try:
            ip = ip_from_bytes(item.address)
            out.append(ipaddress.ip_network(f"{ip}/{item.length}", strict=False))
        except (InvalidResource, ValueError):
            continue  # invalid entries are silently dropped (wire-contracts §2.1)
    return tuple(out)


def _match(m: authz_pb2.Match) -> Match:
    return Match(
        namespaces=_strings(m.namespaces),
        not_namespaces=_strings(m.not_namespaces),
        principals=_strings(m.principals),
        not_principals=_strings(m.not_principals),
        source_ips=_networks(m.source_ips),
        not_source_ips=_networks(m.not_source_ips),
        destination_ips=_networks(m.destination_ips),
        not_destination_ips=_networks(m.not_destination_ips),
        destination_ports=frozenset(m.destination_ports),
        not_destination_ports=frozenset(m.not_destination_ports),
        service_accounts=tuple((s.namespace, s.serviceAccount) for s in m.service_accounts),
        not_service_accounts=tuple((s.namespace, s.serviceAccount) for s in m.not_service_accounts),
    )


def authorization_from_proto(msg: authz_pb2.Authorization | None) -> Authorization:
    if msg is None:
        raise InvalidResource("undecodable Authorization")
    scope = _enum_name(authz_pb2.Scope, msg.scope, "scope")
    action = _enum_name(authz_pb2.Action, msg.action, "action")
    rules = tuple(
        tuple(tuple(_match(m) for m in clause.matches) for clause in rule.clauses) for rule in msg.rules
    )
    return Authorization(msg.name, msg.namespace, cast(Any, scope), cast(Any, action), rules, msg.dry_run)
