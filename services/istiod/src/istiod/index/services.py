"""Kubernetes Services and ServiceEntries → ``Service`` records (behaviour.md §5.3), as pure functions."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from istiod.index import meta
from istiod.index.records import (
    APP_PROTOCOL_GRPC,
    APP_PROTOCOL_HTTP2,
    APP_PROTOCOL_HTTP11,
    APP_PROTOCOL_UNKNOWN,
    IP_FAMILIES_AUTOMATIC,
    IP_FAMILIES_DUAL,
    IP_FAMILIES_IPV4,
    IP_FAMILIES_IPV6,
    LB_HEALTH_ALLOW_ALL,
    LB_HEALTH_ONLY_HEALTHY,
    LB_MODE_FAILOVER,
    LB_MODE_PASSTHROUGH,
    LB_MODE_STRICT,
    LB_MODE_UNSPECIFIED,
    SCOPE_NETWORK,
    SCOPE_NODE,
    SCOPE_REGION,
    SCOPE_SUBZONE,
    SCOPE_ZONE,
    GatewayAddress,
    LoadBalancing,
    NetworkAddress,
    Port,
    Service,
)

Obj = dict[str, Any]
TRAFFIC_DISTRIBUTION = "networking.istio.io/traffic-distribution"
INGRESS_USE_WAYPOINT = "istio.io/ingress-use-waypoint"


@dataclass(frozen=True, slots=True)
class MeshContext:
    """Mesh-wide inputs every transformation reads (MeshConfig and istiod settings)."""

    cluster_id: str = "Kubernetes"
    network: str = ""
    trust_domain: str = "cluster.local"
    domain_suffix: str = "cluster.local"
    root_namespace: str = "istio-system"
    system_namespace: str = "istio-system"  # istiod's namespace: its network label is the cluster's network

    @property
    def wire_trust_domain(self) -> str:
        # §5.2: sent as "" when it is cluster.local (ztunnel's default)
        return "" if self.trust_domain == "cluster.local" else self.trust_domain


def k8s_hostname(name: str, namespace: str, ctx: MeshContext) -> str:
    return f"{name}.{namespace}.svc.{ctx.domain_suffix}"


def app_protocol(port: Obj) -> int:
    """From ``appProtocol``, else the port name's prefix (``http-web`` → HTTP/1.1)."""
    value = str(port.get("appProtocol") or port.get("name") or "").lower()
    prefix = value.split("-", 1)[0].split("/")[-1]
    return {"http": APP_PROTOCOL_HTTP11, "http2": APP_PROTOCOL_HTTP2, "h2c": APP_PROTOCOL_HTTP2,
            "grpc": APP_PROTOCOL_GRPC}.get(prefix, APP_PROTOCOL_UNKNOWN)  # fmt: skip


def _ip_families(families: list[str]) -> int:
    if len(families) == 2:
        return IP_FAMILIES_DUAL
    if families == ["IPv4"]:
        return IP_FAMILIES_IPV4
    if families == ["IPv6"]:
        return IP_FAMILIES_IPV6
    return IP_FAMILIES_AUTOMATIC


def _distribution(svc: Obj, namespace: Obj | None) -> str:
    return str(
        meta.spec(svc).get("trafficDistribution")
        or meta.annos(svc).get(TRAFFIC_DISTRIBUTION)
        or meta.annos(namespace).get(TRAFFIC_DISTRIBUTION)
        or ""
    )


def load_balancing(svc: Obj, namespace: Obj | None) -> LoadBalancing | None:
    """§4.2 istiod mapping: internalTrafficPolicy Local → STRICT[NODE]; trafficDistribution → FAILOVER."""
    spec = meta.spec(svc)
    health = LB_HEALTH_ALLOW_ALL if spec.get("publishNotReadyAddresses") else LB_HEALTH_ONLY_HEALTHY
    if spec.get("internalTrafficPolicy") == "Local":
        return LoadBalancing((SCOPE_NODE,), LB_MODE_STRICT, health)
    distribution = _distribution(svc, namespace)
    if distribution in {"PreferClose", "PreferSameZone"}:
        return LoadBalancing((SCOPE_NETWORK, SCOPE_REGION, SCOPE_ZONE), LB_MODE_FAILOVER, health)
    if distribution == "PreferSameNode":
        prefs = (SCOPE_NETWORK, SCOPE_REGION, SCOPE_ZONE, SCOPE_SUBZONE, SCOPE_NODE)
        return LoadBalancing(prefs, LB_MODE_FAILOVER, health)
    if health == LB_HEALTH_ALLOW_ALL:
        return LoadBalancing((), LB_MODE_UNSPECIFIED, health)
    return None


def _vip(text: str, network: str) -> NetworkAddress | None:
    try:
        if "/" in text:
            net = ipaddress.ip_network(text, strict=False)
            return NetworkAddress(network, net.network_address.packed, net.prefixlen)
        return NetworkAddress(network, ipaddress.ip_address(text).packed)
    except ValueError:
        return None


def k8s_service(
    svc: Obj, ctx: MeshContext, namespace: Obj | None, waypoint: GatewayAddress | None
) -> Service | None:
    """A Kubernetes Service (not ExternalName); headless Services have no addresses."""
    spec = meta.spec(svc)
    if spec.get("type") == "ExternalName":
        return None
    name, ns = meta.name(svc), meta.namespace(svc)
    ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    vips = tuple(v for v in (_vip(str(ip), ctx.network) for ip in ips if ip != "None") if v is not None)
    ports = tuple(
        Port(number, _numeric(p.get("targetPort", number)), app_protocol(p))
        for p in spec.get("ports") or ()
        if (number := port_number(p.get("port"))) is not None
    )
    ingress = meta.labels(svc).get(INGRESS_USE_WAYPOINT) or meta.labels(namespace).get(INGRESS_USE_WAYPOINT)
    return Service(
        name=name, namespace=ns, hostname=k8s_hostname(name, ns, ctx), addresses=vips, ports=ports,
        waypoint=waypoint, load_balancing=load_balancing(svc, namespace),
        ip_families=_ip_families(list(spec.get("ipFamilies") or [])), canonical=True,
        ingress_use_waypoint=(ingress or "").lower() == "true",  # strings.EqualFold upstream
    )  # fmt: skip


def port_number(value: Any) -> int | None:
    """A port number 0..65535, else None (the port is left out rather than failing the encoding)."""
    number = meta.number(value)
    return number if number is not None and number <= 65535 else None


def _numeric(target: Any) -> int:
    """A numeric targetPort, or 0 when it is named (resolved per pod, §5.3)."""
    return port_number(target) or 0


def se_ports(se: Obj) -> tuple[Port, ...]:
    return tuple(
        Port(number, port_number(p.get("targetPort")) or number, _se_protocol(p))
        for p in meta.spec(se).get("ports") or ()
        if (number := port_number(p.get("number"))) is not None
    )


def _se_protocol(port: Obj) -> int:
    return app_protocol({"appProtocol": str(port.get("protocol") or "").lower(), "name": port.get("name")})


def service_entry_services(se: Obj, ctx: MeshContext, waypoint: GatewayAddress | None) -> list[Service]:
    """One Service per ``spec.hosts`` entry; explicit addresses, else auto-allocated ones (§5.3)."""
    spec = meta.spec(se)
    resolution = str(spec.get("resolution") or "NONE")
    auto = _auto_allocated(se) if resolution != "NONE" else {}
    lb = LoadBalancing((), LB_MODE_PASSTHROUGH) if resolution == "NONE" else None
    out = []
    for host in spec.get("hosts") or ():
        explicit = spec.get("addresses") or []
        texts = explicit if explicit else ([] if str(host).startswith("*") else auto.get(str(host), []))
        vips = tuple(v for v in (_vip(str(t), ctx.network) for t in texts) if v is not None)
        out.append(Service(
            name=meta.name(se), namespace=meta.namespace(se), hostname=str(host), addresses=vips,
            ports=se_ports(se), subject_alt_names=tuple(spec.get("subjectAltNames") or ()),
            waypoint=waypoint, load_balancing=lb,
        ))  # fmt: skip
    return out


def _auto_allocated(se: Obj) -> Mapping[str, list[str]]:
    out: dict[str, list[str]] = {}
    for entry in (se.get("status") or {}).get("addresses") or ():
        out.setdefault(str(entry.get("host", "")), []).append(str(entry.get("value", "")))
    return out
