"""Frozen records the proxy runs on, compiled from ``WaypointConfig`` by :mod:`waypoint.config`.

A :class:`Snapshot` is immutable; a config push builds a new one and swaps it in, so a request sees one
consistent view from start to end. Lookups the data path needs are precomputed indexes:
``Snapshot.by_vip[(ip, port)]`` (CONNECT authority → bound Service) and ``Snapshot.clusters[name]``.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

from waypoint.authz import Policy
from waypoint.jwtauth import JwtRules
from waypoint.matching import StrMatcher

__all__ = [
    "Backend",
    "Cluster",
    "Endpoint",
    "Fault",
    "HeaderMatch",
    "HeaderMutation",
    "Redirect",
    "RetryPolicy",
    "Rewrite",
    "Route",
    "RouteMatch",
    "Service",
    "ServicePort",
    "Snapshot",
]


@dataclass(frozen=True, slots=True)
class HeaderMutation:
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.set or self.add or self.remove)

    def apply(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """A new header list: remove, then set (replace), then add (append)."""
        drop = set(self.remove) | {k for k, _ in self.set}
        out = [(k, v) for k, v in headers if k not in drop]
        out.extend(self.set)
        out.extend(self.add)
        return out


@dataclass(frozen=True, slots=True)
class HeaderMatch:
    name: str
    value: StrMatcher
    invert: bool = False


@dataclass(frozen=True, slots=True)
class RouteMatch:
    path: StrMatcher | None = None
    headers: tuple[HeaderMatch, ...] = ()
    query_params: tuple[HeaderMatch, ...] = ()
    method: str = ""
    authority: StrMatcher | None = None
    port: int = 0


@dataclass(frozen=True, slots=True)
class Backend:
    cluster: str
    weight: int
    request_headers: HeaderMutation = HeaderMutation()
    response_headers: HeaderMutation = HeaderMutation()


@dataclass(frozen=True, slots=True)
class Redirect:
    scheme: str = ""
    hostname: str = ""
    port: int = 0
    path: str = ""
    prefix_replace: str = ""
    replace_prefix: bool = False
    status_code: int = 302


@dataclass(frozen=True, slots=True)
class Rewrite:
    authority: str = ""
    path: str = ""
    prefix_replace: str = ""
    replace_prefix: bool = False


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 0
    per_try_timeout_s: float = 0.0
    retry_on: frozenset[str] = frozenset()
    retriable_status_codes: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class Fault:
    delay_percent: float = 0.0
    delay_s: float = 0.0
    abort_percent: float = 0.0
    abort_status: int = 0
    abort_grpc_status: int = 0


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    matches: tuple[RouteMatch, ...] = ()
    backends: tuple[Backend, ...] = ()
    total_weight: int = 0
    redirect: Redirect | None = None
    rewrite: Rewrite | None = None
    request_headers: HeaderMutation = HeaderMutation()
    response_headers: HeaderMutation = HeaderMutation()
    timeout_s: float = 0.0
    retries: RetryPolicy | None = None
    fault: Fault | None = None
    mirrors: tuple[tuple[str, float], ...] = ()
    direct_response: tuple[int, str] | None = None
    source_namespace: str = ""


@dataclass(frozen=True, slots=True)
class ServicePort:
    port: int
    target_port: int
    protocol: str  # "", "TCP", "HTTP", "HTTP2", "GRPC"
    name: str = ""


@dataclass(frozen=True, slots=True)
class Service:
    hostname: str
    name: str
    namespace: str
    vips: tuple[str, ...]
    ports: tuple[ServicePort, ...]
    routes: tuple[Route, ...] = ()
    policies: tuple[Policy, ...] = ()
    jwt: JwtRules = field(default_factory=JwtRules)
    workload: Endpoint | None = None  # a workload-addressed destination: every port, straight to the pod
    tcp_routes: tuple[tuple[int, Route], ...] = ()  # (port or 0, route with backends only): TCPRoute

    def tcp_route(self, port: int) -> Route | None:
        return next((route for p, route in self.tcp_routes if p in (0, port)), None)

    def port(self, port: int) -> ServicePort | None:
        found = next((p for p in self.ports if p.port == port), None)
        if found is None and self.workload is not None:
            return ServicePort(port, port, "")
        return found


@dataclass(frozen=True, slots=True)
class Endpoint:
    address: str
    port: int
    weight: int = 1
    workload: str = ""
    namespace: str = ""
    identity: str = ""
    healthy: bool = True
    canonical_name: str = ""
    canonical_revision: str = ""
    cluster_id: str = ""


@dataclass(frozen=True, slots=True)
class Cluster:
    name: str
    hostname: str
    port: int
    subset: str = ""
    lb: str = "LEAST_REQUEST"
    hash_kind: str = ""
    hash_key: str = ""
    endpoints: tuple[Endpoint, ...] = ()
    connect_timeout_s: float = 10.0
    outlier: OutlierDetection | None = None
    tls: ssl.SSLContext | None = None  # DestinationRule tls SIMPLE (the context is built at config time)
    tls_sni: str = ""
    max_connections: int = 0  # connectionPool: 0 = unlimited
    max_pending_requests: int = 0
    max_requests_per_connection: int = 0


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    consecutive_5xx: int = 0
    consecutive_gateway_errors: int = 0
    base_ejection_s: float = 30.0
    max_ejection_percent: int = 10


@dataclass(frozen=True, slots=True)
class Snapshot:
    name: str = ""
    namespace: str = ""
    trust_domain: str = "cluster.local"
    version: str = ""
    services: tuple[Service, ...] = ()
    policies: tuple[Policy, ...] = ()
    jwt: JwtRules = field(default_factory=JwtRules)
    clusters: dict[str, Cluster] = field(default_factory=dict)
    by_vip: dict[tuple[str, int], Service] = field(default_factory=dict)
    by_host: dict[str, Service] = field(default_factory=dict)
    by_workload_ip: dict[str, Service] = field(default_factory=dict)
    xfcc_client_identity: bool = False

    def cluster_for(self, name: str, svc: Service, port: int) -> Cluster | None:
        """``clusters[name]``, or for a workload destination a one-endpoint cluster on the dialled port."""
        found = self.clusters.get(name)
        if found is None and svc.workload is not None:
            ep = svc.workload
            pod = Endpoint(
                ep.address,
                port,
                1,
                ep.workload,
                ep.namespace,
                ep.identity,
                True,
                ep.canonical_name,
                ep.canonical_revision,
                ep.cluster_id,
            )
            return Cluster(name, svc.hostname, port, endpoints=(pod,))
        return found

    def find_service(self, host: str, port: int) -> Service | None:
        """The bound Service for a CONNECT authority (VIP:port, or hostname:port)."""
        svc = self.by_vip.get((host, port)) or self.by_workload_ip.get(host)
        if svc is None:
            svc = self.by_host.get(host)
            if svc is not None and svc.port(port) is None:
                return None
        return svc
