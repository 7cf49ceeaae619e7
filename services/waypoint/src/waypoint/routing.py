"""Routing decisions, pure: which route, which backend (weights), which endpoint (DestinationRule LB).

* :func:`select_route`: routes are ordered; the first whose any match fits wins; a route without matches
  matches everything. No route at all means "pass through to the Service itself" (the default route the
  waypoint has for every bound Service, named ``default``).
* :func:`pick_backend`: weighted random over ``backendRefs`` / ``route[].destination`` weights.
* :class:`Balancer`: per-cluster LB state. ``ROUND_ROBIN``, ``LEAST_REQUEST`` (power of two choices, Envoy's
  and Istio's default), ``RANDOM``, ``CONSISTENT_HASH`` (rendezvous hashing on a header, cookie, query
  parameter or the source IP). Unhealthy endpoints are skipped; ``exclude`` holds hosts already tried by this
  request (Istio's default retry host predicate ``previous_hosts``), ignored when nothing else is left.
* :func:`rewrite_request` / :func:`redirect_location`: HTTPRoute URLRewrite / RequestRedirect and
  VirtualService rewrite / redirect.

Randomness comes from an injected :class:`random.Random`, so tests are deterministic.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from waypoint.http1 import Request
from waypoint.records import Backend, Cluster, Endpoint, Redirect, Rewrite, Route, RouteMatch, Service

__all__ = [
    "Balancer",
    "default_route",
    "pick_backend",
    "redirect_location",
    "rewrite_request",
    "route_matches",
    "select_route",
]


def _query_map(req: Request) -> dict[str, str]:
    return dict(parse_qsl(req.query, keep_blank_values=True)) if req.query else {}


def route_matches(m: RouteMatch, req: Request, port: int) -> bool:
    if m.method and req.method != m.method:
        return False
    if m.port and m.port != port:
        return False
    if m.path is not None and not m.path(req.path):
        return False
    if m.authority is not None and not m.authority(req.authority.lower()):
        return False
    if m.headers:
        hmap = req.header_map()
        for h in m.headers:
            if h.value(hmap.get(h.name)) == h.invert:
                return False
    if m.query_params:
        qmap = _query_map(req)
        for q in m.query_params:
            if q.value(qmap.get(q.name)) == q.invert:
                return False
    return True


def select_route(routes: tuple[Route, ...], req: Request, port: int, client_ns: str = "") -> Route | None:
    """First matching route; consumer routes (``source_namespace``) match only their namespace's clients."""
    for route in routes:
        if route.source_namespace and route.source_namespace != client_ns:
            continue
        if not route.matches or any(route_matches(m, req, port) for m in route.matches):
            return route
    return None


def default_route(svc: Service, port: int) -> Route:
    """The route a bound Service has when nothing else matched: straight to itself on the same port."""
    name = f"inbound-vip|{port}|http|{svc.hostname}"
    return Route(name="default", backends=(Backend(name, 1),), total_weight=1)


def pick_backend(route: Route, rng: random.Random) -> Backend | None:
    backends = route.backends
    if not backends or route.total_weight <= 0:
        return None
    if len(backends) == 1:
        return backends[0]
    point = rng.randrange(route.total_weight)
    for backend in backends:
        point -= backend.weight
        if point < 0:
            return backend
    return backends[-1]  # pragma: no cover - weights sum to total_weight


@dataclass(slots=True)
class _ClusterState:
    rr: int = 0
    active: dict[str, int] = field(default_factory=dict)
    failures: dict[str, tuple[int, int]] = field(default_factory=dict)  # key -> (consecutive 5xx, gateway)
    ejected: dict[str, float] = field(default_factory=dict)  # key -> ejected until (clock)
    ejections: dict[str, int] = field(default_factory=dict)


class Balancer:
    """Picks endpoints; keeps round-robin cursors and in-flight counts per cluster."""

    def __init__(self, rng: random.Random | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.rng = rng or random.Random()
        self.clock = clock
        self._state: dict[str, _ClusterState] = {}

    def pick(
        self,
        cluster: Cluster,
        req: Request | None = None,
        source_ip: str = "",
        exclude: Collection[str] = (),
    ) -> Endpoint | None:
        healthy = [e for e in cluster.endpoints if e.healthy]
        if cluster.outlier is not None and cluster.name in self._state:
            ejected = self._state[cluster.name].ejected
            now = self.clock()
            fine = [e for e in healthy if ejected.get(_key(e), 0.0) <= now]
            healthy = fine or healthy  # panic mode (Envoy): all ejected means none is
        if exclude:
            fresh = [e for e in healthy if _key(e) not in exclude]
            healthy = fresh or healthy
        if not healthy:
            return None
        if len(healthy) == 1:
            return healthy[0]
        state = self._state.setdefault(cluster.name, _ClusterState())
        if cluster.lb == "ROUND_ROBIN":
            state.rr += 1
            return healthy[state.rr % len(healthy)]
        if cluster.lb == "CONSISTENT_HASH":
            key = _hash_key(cluster, req, source_ip)
            if key is not None:
                return max(
                    healthy,
                    key=lambda e: hashlib.blake2b(f"{key}|{_key(e)}".encode(), digest_size=8).digest(),
                )
        if cluster.lb == "LEAST_REQUEST":
            a, b = self.rng.sample(healthy, 2)
            na, nb = state.active.get(_key(a), 0), state.active.get(_key(b), 0)
            return a if na <= nb else b
        return self._weighted(healthy)

    def _weighted(self, endpoints: list[Endpoint]) -> Endpoint:
        total = sum(e.weight for e in endpoints)
        point = self.rng.uniform(0, total)
        for e in endpoints:
            point -= e.weight
            if point <= 0:
                return e
        return endpoints[-1]

    def started(self, cluster: str, ep: Endpoint) -> None:
        state = self._state.setdefault(cluster, _ClusterState())
        state.active[_key(ep)] = state.active.get(_key(ep), 0) + 1

    def finished(self, cluster: str, ep: Endpoint) -> None:
        state = self._state.get(cluster)
        if state is not None:
            state.active[_key(ep)] = max(0, state.active.get(_key(ep), 0) - 1)

    def outcome(self, cluster: Cluster, ep: Endpoint, status: int) -> None:
        """Outlier detection: count consecutive errors (status 0 = connect failure / reset) and eject."""
        od = cluster.outlier
        if od is None:
            return
        state = self._state.setdefault(cluster.name, _ClusterState())
        key = _key(ep)
        five, gateway = state.failures.get(key, (0, 0))
        if status == 0 or status >= 500:
            five += 1
            gateway = gateway + 1 if status in (0, 502, 503, 504) else 0
        else:
            five = gateway = 0
        state.failures[key] = (five, gateway)
        tripped = (od.consecutive_5xx and five >= od.consecutive_5xx) or (
            od.consecutive_gateway_errors and gateway >= od.consecutive_gateway_errors
        )
        if not tripped:
            return
        now = self.clock()
        active = sum(1 for until in state.ejected.values() if until > now)
        if (active + 1) * 100 > od.max_ejection_percent * max(len(cluster.endpoints), 1) and active:
            return  # never eject more than max_ejection_percent (one is always allowed, as Envoy)
        count = state.ejections.get(key, 0) + 1
        state.ejections[key] = count
        state.ejected[key] = now + od.base_ejection_s * count
        state.failures[key] = (0, 0)


def _key(ep: Endpoint) -> str:
    return f"{ep.address}:{ep.port}"


def endpoint_key(ep: Endpoint) -> str:
    return _key(ep)


def _hash_key(cluster: Cluster, req: Request | None, source_ip: str) -> str | None:
    if cluster.hash_kind == "source_ip":
        return source_ip or None
    if req is None:
        return None
    if cluster.hash_kind == "header":
        return req.header_map().get(cluster.hash_key.lower())
    if cluster.hash_kind == "query_param":
        return _query_map(req).get(cluster.hash_key)
    if cluster.hash_kind == "cookie":
        for part in (req.header("cookie") or "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == cluster.hash_key:
                return value
    return None


def _matched_prefix(route: Route, req: Request) -> str | None:
    for m in route.matches:
        if m.path is not None and m.path.kind in {"prefix", "path_prefix"} and m.path(req.path):
            return m.path.value
    return None


def _replace_prefix(route: Route, req: Request, replacement: str) -> str:
    prefix = _matched_prefix(route, req)
    if prefix is None:
        return req.path
    rest = req.path[len(prefix.rstrip("/")) if prefix.endswith("/") else len(prefix) :]
    if not replacement.endswith("/") and rest and not rest.startswith("/"):
        rest = "/" + rest
    joined = replacement.rstrip("/") + rest if rest.startswith("/") else replacement + rest
    return joined or "/"


def rewrite_request(route: Route, rw: Rewrite, req: Request) -> None:
    if rw.replace_prefix:
        req.path = _replace_prefix(route, req, rw.prefix_replace)
    elif rw.path:
        req.path = rw.path
    if rw.authority:
        req.set_header("host", rw.authority)
        req.authority = rw.authority


def redirect_location(route: Route, rd: Redirect, req: Request, scheme: str = "http") -> str:
    host = rd.hostname or req.authority.rsplit(":", 1)[0]
    port = f":{rd.port}" if rd.port else ""
    path = req.path
    if rd.replace_prefix:
        path = _replace_prefix(route, req, rd.prefix_replace)
    elif rd.path:
        path = rd.path
    query = f"?{req.query}" if req.query else ""
    return f"{rd.scheme or scheme}://{host}{port}{path}{query}"
