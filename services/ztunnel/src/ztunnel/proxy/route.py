"""The outbound routing decision, sans-IO: (source workload, original destination) -> a plan (§4.1).

Plans: :class:`Hbone` (tunnel to ``dial`` with ``authority`` expecting one of ``identities``),
:class:`Plain` (plain TCP to a mesh workload that is not captured), :class:`Passthrough` (not a mesh
destination: plain TCP to the original address), :class:`Drop` (no healthy upstream, unknown waypoint, or a
loop). Waypoints fail closed: a waypoint we cannot resolve drops the connection.
"""

from __future__ import annotations

import contextlib
import ipaddress
import random
from dataclasses import dataclass

from meshkit.identity.spiffe import Identity, InvalidIdentity

from ztunnel.proxy.context import ILLEGAL_PORTS
from ztunnel.state.lb import select_endpoint
from ztunnel.state.records import GatewayAddress, Service, Workload
from ztunnel.state.state import State

__all__ = ["Drop", "Hbone", "Passthrough", "Plain", "Plan", "plan_outbound"]


@dataclass(frozen=True, slots=True)
class Hbone:
    dial: tuple[str, int]
    authority: tuple[str, int]
    identities: tuple[Identity, ...]
    workload: Workload
    service: Service | None
    via_waypoint: bool = False


@dataclass(frozen=True, slots=True)
class Plain:
    """Plain TCP to ``target``; with ``resolve`` the host is a DNS name to look up first (§4.1 step 8)."""

    target: tuple[str, int]
    workload: Workload
    service: Service | None
    resolve: bool = False


@dataclass(frozen=True, slots=True)
class Passthrough:
    target: tuple[str, int]


@dataclass(frozen=True, slots=True)
class Drop:
    reason: str


Plan = Hbone | Plain | Passthrough | Drop


def _pick_ip(wl: Workload, dialled: str) -> str | None:
    if dialled in wl.addresses:
        return dialled
    version = ipaddress.ip_address(dialled).version
    same = [ip for ip in wl.addresses if ipaddress.ip_address(ip).version == version]
    pool = same or list(wl.addresses)
    return pool[0] if pool else None


def _service_waypoint(svc: Service, rng: random.Random) -> GatewayAddress | None:
    weighted = [(gw, w) for gw, w in svc.weighted_waypoints if w > 0]
    if weighted:
        return rng.choices([gw for gw, _ in weighted], weights=[w for _, w in weighted], k=1)[0]
    return svc.waypoint


def _resolve_waypoint(state: State, gw: GatewayAddress, src: Workload, rng: random.Random) -> Workload | None:
    if gw.hostname is not None:
        svc = state.find_service(str(gw.hostname))
        if svc is None:
            return None
        ready = [(wl, ep) for wl, ep in state.endpoints(svc) if wl.healthy and wl.addresses]
        if not ready:
            return None
        weights = [max(wl.capacity, 1) for wl, _ in ready]
        return rng.choices(ready, weights=weights, k=1)[0][0]
    assert gw.address is not None
    wl = state.find_workload_by_ip(gw.address[1])
    if wl is not None:
        return wl
    svc = state.find_service_by_vip(gw.address[1], src.namespace)
    if svc is None:
        return None
    eps = [wl for wl, _ in state.endpoints(svc) if wl.healthy and wl.addresses]
    return rng.choice(eps) if eps else None


def _to_waypoint(  # noqa: PLR0917
    state: State,
    gw: GatewayAddress,
    src: Workload,
    dst: tuple[str, int],
    svc: Service | None,
    rng: random.Random,
) -> Plan:
    wp = _resolve_waypoint(state, gw, src, rng)
    if wp is None:
        return Drop(f"unknown waypoint {gw}")
    ip = _pick_ip(wp, dst[0])
    if ip is None:
        return Drop(f"waypoint {gw} has no address")
    return Hbone((ip, gw.hbone_port), dst, (wp.identity,), wp, svc, via_waypoint=True)


def _from_waypoint(src: Workload, wp: Workload) -> bool:
    return src.identity == wp.identity and bool(set(src.addresses) & set(wp.addresses))


def _service_sans(svc: Service | None) -> tuple[Identity, ...]:
    """The service's extra accepted identities (§2.3); SANs that are not SPIFFE identities are ignored."""
    out = []
    for san in svc.subject_alt_names if svc is not None else ():
        with contextlib.suppress(InvalidIdentity):
            out.append(Identity.parse(san))
    return tuple(out)


def _direct(wl: Workload, ip: str, port: int, svc: Service | None) -> Plan:
    if wl.hbone:
        return Hbone((ip, 15008), (ip, port), (*_service_sans(svc), wl.identity), wl, svc)
    return Plain((ip, port), wl, svc)


def plan_outbound(state: State, src: Workload, dst: tuple[str, int], rng: random.Random) -> Plan:
    ip, port = dst
    addr = ipaddress.ip_address(ip)
    if addr.is_loopback and port in ILLEGAL_PORTS:
        return Drop("loop: connection to a ztunnel port on loopback")
    wl = state.find_workload_by_ip(ip)
    svc = None if wl is not None else state.find_service_by_vip(ip, src.namespace)
    if svc is not None:
        gw = _service_waypoint(svc, rng)
        if gw is not None:
            return _to_waypoint(state, gw, src, dst, svc, rng)
        if svc.load_balancer is not None and svc.load_balancer.mode == "PASSTHROUGH":
            return Passthrough(dst)
        picked = select_endpoint(svc, state.endpoints(svc), port, src, rng)
        if picked is None:
            return Drop(f"no healthy upstream for {svc.hostname}:{port}")
        upstream, target = picked
        upstream_ip = _pick_ip(upstream, ip)
        if upstream_ip is None and upstream.hostname and not upstream.hbone:
            # a DNS-resolved workload (ServiceEntry resolution DNS): the outbound proxy resolves it on demand
            return Plain((upstream.hostname, target), upstream, svc, resolve=True)
        if upstream_ip is None:
            return Drop(f"no healthy upstream for {svc.hostname}:{port}")
        return _direct(upstream, upstream_ip, target, svc)
    if wl is None:
        return Passthrough(dst)
    if wl.waypoint is not None:
        wp = _resolve_waypoint(state, wl.waypoint, src, rng)
        if wp is None:
            return Drop(f"unknown waypoint {wl.waypoint}")
        if not _from_waypoint(src, wp):
            return _to_waypoint(state, wl.waypoint, src, dst, None, rng)
    return _direct(wl, ip, port, None)
