"""Waypoints from Gateways, and which waypoint an object uses (behaviour.md §5.4), as pure functions.

A :class:`Waypoint` exists for any Gateway with ``status.addresses`` (its deployment has a ready pod); the
class name is not checked. :func:`resolve` applies the label precedence: the object's own
``istio.io/use-waypoint`` (``none`` opts out with no namespace fallback), else its namespace's; the waypoint
must exist, admit the object's namespace on its HBONE listener, and carry the right traffic type. Any
failure means *no* waypoint: traffic goes direct (fail open, §9).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from istiod.index import meta
from istiod.index.records import (
    APP_TUNNEL_PROXY,
    ApplicationTunnel,
    GatewayAddress,
    NetworkAddress,
    WeightedWaypoint,
)

Obj = dict[str, Any]
USE_WAYPOINT = "istio.io/use-waypoint"
USE_WAYPOINT_NAMESPACE = "istio.io/use-waypoint-namespace"
USE_CANARY = "istio.io/use-waypoint-canary"
USE_CANARY_NAMESPACE = "istio.io/use-waypoint-canary-namespace"
CANARY_WEIGHT = "istio.io/use-waypoint-canary-weight"
WAYPOINT_FOR = "istio.io/waypoint-for"
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
INBOUND_BINDING = "ambient.istio.io/waypoint-inbound-binding"
MANAGED_LABEL = "gateway.istio.io/managed"
MESH_CONTROLLER = "istio.io-mesh-controller"
EW_CONTROLLER = "istio.io-eastwest-controller"
HBONE_PORT = 15008
FOR_SERVICE, FOR_WORKLOAD, FOR_ALL, FOR_NONE = "service", "workload", "all", "none"


@dataclass(frozen=True, slots=True)
class Waypoint:
    namespace: str
    name: str
    traffic_type: str
    address: GatewayAddress
    allowed_from: str = "Same"  # the HBONE listener's allowedRoutes.namespaces.from
    allowed_selector: tuple[tuple[str, str], ...] = ()  # matchLabels for from=Selector

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def admits(self, namespace: str, namespace_labels: Mapping[str, str]) -> bool:
        if self.allowed_from == "All":
            return True
        if self.allowed_from == "Selector":
            return meta.matches_labels(dict(self.allowed_selector), namespace_labels)
        return namespace == self.namespace

    def serves(self, kind: str) -> bool:
        return self.traffic_type in {kind, FOR_ALL}


def traffic_type(gateway: Obj, gateway_class: Obj | None) -> str:
    """Gateway label, else GatewayClass label, else ``service`` (§5.4)."""
    return (
        meta.labels(gateway).get(WAYPOINT_FOR) or meta.labels(gateway_class).get(WAYPOINT_FOR) or FOR_SERVICE
    )


def _hbone_listener(gateway: Obj) -> Obj:
    listeners = meta.spec(gateway).get("listeners") or []
    for listener in listeners:
        if listener.get("protocol") == "HBONE" and int(listener.get("port", 0)) == HBONE_PORT:
            return dict(listener)
    return dict(listeners[0]) if listeners else {}


def waypoint_from_gateway(gateway: Obj, gateway_class: Obj | None, network: str) -> Waypoint | None:
    addresses = ((gateway.get("status") or {}).get("addresses")) or []
    if not addresses:
        return None  # not ready: no waypoint (§5.4)
    ns = meta.namespace(gateway)
    hostnames = [str(a["value"]) for a in addresses if a.get("type") == "Hostname" and a.get("value")]
    if hostnames:
        address = GatewayAddress(hostname_namespace=ns, hostname=hostnames[0])
    else:
        ips = [ip for ip in (_ip(a.get("value")) for a in addresses if a.get("type") != "Hostname") if ip]
        if not ips:
            return None  # nothing ztunnel could dial: no waypoint (a GatewayAddress needs a destination)
        address = GatewayAddress(address=NetworkAddress(network, ips[0]))
    routes = ((_hbone_listener(gateway).get("allowedRoutes") or {}).get("namespaces")) or {}
    selector = (routes.get("selector") or {}).get("matchLabels") or {}
    return Waypoint(
        ns, meta.name(gateway), traffic_type(gateway, gateway_class), address,
        str(routes.get("from") or "Same"), tuple(sorted(selector.items())),
    )  # fmt: skip


def _ip(value: Any) -> bytes | None:
    try:
        return ipaddress.ip_address(str(value)).packed
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class WaypointRef:
    """What an object's labels ask for: a waypoint key, or an explicit opt-out."""

    namespace: str
    name: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def requested(
    obj_labels: Mapping[str, str], obj_namespace: str, namespace_labels: Mapping[str, str]
) -> WaypointRef | None:
    """The waypoint the labels select: the object's label wins, then the namespace's; ``none`` opts out."""
    for source, default_ns in ((obj_labels, obj_namespace), (namespace_labels, obj_namespace)):
        name = source.get(USE_WAYPOINT)
        if name:
            if name == "none":
                return None  # opt-out: no namespace fallback (§5.4)
            return WaypointRef(source.get(USE_WAYPOINT_NAMESPACE) or default_ns, name)
    return None


def resolve(
    ref: WaypointRef | None,
    kind: str,
    obj_namespace: str,
    namespace_labels: Mapping[str, str],
    lookup: Callable[[str], Waypoint | None],
) -> GatewayAddress | None:
    """The GatewayAddress to send for an object of ``kind`` (``service`` or ``workload``), or None."""
    if ref is None:
        return None
    waypoint = lookup(ref.key)
    if waypoint is None or not waypoint.admits(obj_namespace, namespace_labels) or not waypoint.serves(kind):
        return None
    return waypoint.address


def is_waypoint_service(svc_labels: Mapping[str, str]) -> bool:
    """Waypoint (and E/W gateway) Services never get a waypoint themselves (§5.4)."""
    return svc_labels.get(MANAGED_LABEL) in {MESH_CONTROLLER, EW_CONTROLLER}


def inbound_binding(gateway: Obj | None, gateway_class: Obj | None) -> ApplicationTunnel | None:
    """``PROXY`` or ``PROXY/<port>`` from the Gateway, else its GatewayClass (§5.4)."""
    value = meta.annos(gateway).get(INBOUND_BINDING) or meta.annos(gateway_class).get(INBOUND_BINDING)
    if not value:
        return None
    protocol, _, port = value.partition("/")
    number = meta.number(port) if port else 0
    if protocol != "PROXY" or number is None or number > 65535:
        return None
    return ApplicationTunnel(APP_TUNNEL_PROXY, number)


def canary_requested(
    obj_labels: Mapping[str, str], obj_annotations: Mapping[str, str], obj_namespace: str,
    namespace_labels: Mapping[str, str], namespace_annotations: Mapping[str, str],
) -> tuple[WaypointRef, int] | None:  # fmt: skip
    """The canary waypoint and its weight (0-100, default 0) from the object, else its namespace (§5.3)."""
    for labels, annos in ((obj_labels, obj_annotations), (namespace_labels, namespace_annotations)):
        name = labels.get(USE_CANARY)
        if name:
            text = annos.get(CANARY_WEIGHT, "0")
            number = meta.number(text)
            weight = number if number is not None and number <= 100 else 0
            return WaypointRef(labels.get(USE_CANARY_NAMESPACE) or obj_namespace, name), weight
    return None


def weighted(
    primary: GatewayAddress | None, canary: tuple[WaypointRef, int] | None, obj_namespace: str,
    namespace_labels: Mapping[str, str], lookup: Callable[[str], Waypoint | None],
) -> tuple[WeightedWaypoint, ...]:  # fmt: skip
    """``[primary (100 - w), canary (w)]`` when both resolve for a service; else nothing."""
    if primary is None or canary is None:
        return ()
    ref, weight = canary
    address = resolve(ref, FOR_SERVICE, obj_namespace, namespace_labels, lookup)
    if address is None:
        return ()
    return (WeightedWaypoint(primary, 100 - weight), WeightedWaypoint(address, weight))
