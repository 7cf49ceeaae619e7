"""Endpoint selection for service-addressed traffic (behaviour.md §4.1 step 4 and §4.2).

Not round robin: candidates are filtered (known workload, has an address, has a usable target port,
healthy unless the service allows all), then narrowed by the locality mode, then one is picked at random
weighted by the workload's ``capacity``. The random source is injected so tests are deterministic.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ztunnel.state.records import Endpoint, LoadBalancing, Service, Workload

__all__ = ["locality_rank", "matches_scope", "select_endpoint", "target_port"]


def target_port(svc: Service, ep: Endpoint, wl: Workload, svc_port: int) -> int | None:
    """Workload's own port map, else the service's target port, else (app tunnel) the service port."""
    port = ep.ports.get(svc_port, 0)
    if port:
        return port
    port = svc.ports.get(svc_port, 0)
    if port:
        return port
    if wl.application_tunnel is not None and wl.application_tunnel[1]:
        return svc_port
    return None


def matches_scope(scope: str, src: Workload, wl: Workload) -> bool:
    if scope == "NETWORK":
        return src.network == wl.network
    if scope == "REGION":
        return src.locality.region == wl.locality.region
    if scope == "ZONE":
        return src.locality.zone == wl.locality.zone
    if scope == "SUBZONE":
        return src.locality.subzone == wl.locality.subzone
    if scope == "NODE":
        return src.node == wl.node
    if scope == "CLUSTER":
        return src.cluster_id == wl.cluster_id
    return False


def locality_rank(prefs: Sequence[str], src: Workload, wl: Workload) -> int:
    """FAILOVER rank: leading scopes that match. NETWORK first is special: a mismatch does not stop the scan,
    a match adds a bonus of ``len(prefs) - 1`` so same-network endpoints always win (§4.2)."""
    rank = 0
    network_first = bool(prefs) and prefs[0] == "NETWORK"
    for i, scope in enumerate(prefs):
        ok = matches_scope(scope, src, wl)
        if i == 0 and network_first:
            if ok:
                rank += 1 + len(prefs) - 1
            continue
        if not ok:
            break
        rank += 1
    return rank


def _narrow(
    lb: LoadBalancing | None, src: Workload, cands: list[tuple[Workload, int]]
) -> list[tuple[Workload, int]]:
    if lb is None or not lb.routing_preference:
        return cands
    if lb.mode == "STRICT":
        return [c for c in cands if all(matches_scope(s, src, c[0]) for s in lb.routing_preference)]
    if lb.mode == "FAILOVER":
        ranked = [(locality_rank(lb.routing_preference, src, c[0]), c) for c in cands]
        best = max((r for r, _ in ranked), default=0)
        return [c for r, c in ranked if r == best]
    return cands


def select_endpoint(
    svc: Service,
    endpoints: Sequence[tuple[Workload, Endpoint]],
    svc_port: int,
    src: Workload,
    rng: random.Random | None = None,
) -> tuple[Workload, int] | None:
    """Pick (workload, target port) for ``svc:svc_port``, or None when no endpoint qualifies."""
    if svc_port not in svc.ports:
        return None
    allow_unhealthy = svc.load_balancer is not None and svc.load_balancer.health_policy == "ALLOW_ALL"
    cands: list[tuple[Workload, int]] = []
    for wl, ep in endpoints:
        if not wl.healthy and not allow_unhealthy:
            continue
        if not wl.addresses and wl.network_gateway is None and not wl.hostname:
            continue
        port = target_port(svc, ep, wl, svc_port)
        if port is not None:
            cands.append((wl, port))
    cands = _narrow(svc.load_balancer, src, cands)
    weights = [max(wl.capacity, 0) for wl, _ in cands]
    if not cands or sum(weights) == 0:
        return None
    return (rng or random).choices(cands, weights=weights, k=1)[0]
