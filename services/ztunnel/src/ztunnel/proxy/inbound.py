"""Inbound HBONE (15008) for one pod: the per-CONNECT decision of behaviour.md §2.7 and §4.4.

In order, first failure wins: the pod's workload must be known (waits up to 5 s, else 503); the authority IP
must be the pod's IP (400); the target port must not be a ztunnel port (503); L4 authorization with the TLS
peer identity and the TCP peer address (401 on deny). Then the app is dialled from inside the pod, bound to
the peer's IP (original source preserved), and the stream is relayed.

Every forwarded connection is tracked so that a policy change can close the ones it no longer allows (§4.6:
re-checked against the workload captured at connect time).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

from meshkit.hbone.relay import RelayResult
from meshkit.hbone.request import ConnectRequest, baggage, parse_baggage
from meshkit.hbone.server import Decision, Forward, InboundPeer, Reject
from meshkit.hbone.stream import HboneStream
from meshkit.logs import kv

from ztunnel.proxy import proxy_protocol
from ztunnel.proxy.common import connect_app, source_metadata, unmap
from ztunnel.proxy.context import ILLEGAL_PORTS, PodContext
from ztunnel.proxy.telemetry import ConnectionRecord, Endpoints
from ztunnel.rbac import ConnInfo, evaluate
from ztunnel.state.records import Locality, Service, Workload
from ztunnel.state.state import State

__all__ = ["InboundProxy"]

log = logging.getLogger("proxy.inbound")


def workload_from_baggage(value: str | None) -> Workload | None:
    """Source labels from the request's ``baggage`` when the peer IP is not a known workload (§7.2)."""
    meta = parse_baggage(value)
    if meta is None:
        return None
    return Workload(
        uid="",
        name=meta.workload_name,
        namespace=meta.namespace,
        workload_name=meta.workload_name,
        workload_type=meta.workload_type or "deployment",
        canonical_name=meta.canonical_name,
        canonical_revision=meta.canonical_revision,
        cluster_id=meta.cluster_id,
        locality=Locality(meta.region, meta.zone),
    )


@dataclass(eq=False)
class LiveConnection:
    """A forwarded inbound connection, kept for re-authorization when policies change."""

    conn: ConnInfo
    workload: Workload
    sock: socket.socket | None
    record: ConnectionRecord
    downstream: socket.socket | None = None


def recheck_live(live: set[LiveConnection], state: State) -> None:
    """Close every connection in ``live`` that the current policies deny (§4.6), using the workload captured
    at connect time, as upstream does."""
    for item in list(live):
        if item.sock is not None and item.sock.fileno() < 0:  # the relay never ran (client left mid-dial)
            live.discard(item)
            item.record.close("client went away before the upstream answered", "CONNECT")
            continue
        decision = evaluate(state.policies_for(item.workload), item.conn)
        if decision.allowed or item.sock is None:
            continue
        log.info(
            "closing connection denied after policy change",
            extra=kv(src=item.conn.src_ip, policy=decision.policy or decision.reason),
        )
        live.discard(item)
        item.record.close("connection closed due to policy change", "DENY")
        for sock in (item.sock, item.downstream):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


class InboundProxy:
    def __init__(self, pod: PodContext) -> None:
        self.pod = pod
        self.live: set[LiveConnection] = set()
        #: finds the HBONE stream of a request (set by the pod once its server runs), for live byte counts
        self.find_stream: Callable[[tuple[str, int], int], HboneStream | None] | None = None

    async def handle(self, peer: InboundPeer, request: ConnectRequest) -> Decision:
        """The §2.7 steps in order (first failure wins): 503 unknown local workload, 400 foreign authority,
        503 no upstream or an illegal port, 401 denied by policy; else forward to the app."""
        wl = await self.pod.fetch_workload()
        if wl is None:
            return Reject(503, "local workload unknown")
        wl = self.pod.current_workload() or wl
        target = self._target(peer, request, wl)
        if isinstance(target, Reject):
            return target
        (target_ip, port), svc, tunnel_dst = target
        s = self.pod.services
        src_addr = (unmap(peer.address[0]), peer.address[1])
        conn = ConnInfo(src_addr[0], peer.identity, target_ip, port)
        # through an east-west gateway (x-forwarded-network of another network) the peer IP is the gateway's
        via_gateway = request.forwarded_network not in (None, s.state.network)
        by_ip = None if via_gateway else s.state.find_workload_by_ip(conn.src_ip)
        src_wl = by_ip or workload_from_baggage(request.baggage)
        local = (unmap(peer.local_address[0]), peer.local_address[1])
        endpoints = Endpoints(
            "inbound", src_addr, local, str(request.authority), src_wl, peer.identity, wl, wl.identity,
            svc or self._service(wl, request, port), mtls=True,
        )  # fmt: skip
        decision = evaluate(s.state.policies_for(wl), conn)
        if not decision.allowed:
            record = ConnectionRecord(s.metrics, endpoints)
            record.open()
            record.close(f"connection denied: {decision.reason}", "DENY")
            return Reject(401, decision.reason)
        live = LiveConnection(conn, wl, None, ConnectionRecord(s.metrics, endpoints))
        live.record.open()
        return self._forward(peer, request, wl, live, src=src_addr, tunnel_dst=tunnel_dst)

    def _target(
        self, peer: InboundPeer, request: ConnectRequest, wl: Workload
    ) -> tuple[tuple[str, int], Service | None, tuple[str, int]] | Reject:
        """Where the CONNECT goes in this pod: (this pod's IP, target port), the service when addressed by
        hostname, and the address an application tunnel is told about (the authority; a VIP for a hostname).

        The dialled IP is always the TCP destination of the HBONE connection (the pod itself): the authority
        only chooses the port. Even where a foreign authority IP is accepted (application tunnel, sandwiched
        waypoint) it is never dialled, so a peer cannot make this pod connect elsewhere (§2.7).
        """
        auth = request.authority
        local_ip = unmap(peer.local_address[0])
        if auth.is_ip:
            if auth.host != local_ip and not self._may_proxy(wl, auth.host):
                return Reject(400, f"authority {auth} is not this pod")
            port, svc, tunnel_dst = auth.port, None, (auth.host, auth.port)
        else:  # hostname form (gateways): service port -> this pod's target port
            svc = self.pod.services.state.find_services_by_hostname(auth.host, wl.namespace)
            port = self._target_port(wl, svc, auth.port) if svc is not None else 0
            if not port or svc is None:
                return Reject(503, f"no upstream for {auth} on this pod")
            vip = self._tunnel_vip(svc)
            if vip is None and wl.application_tunnel is not None:
                return Reject(503, f"no IP for service {auth.host} to put in the tunnel header")
            tunnel_dst = (vip or local_ip, auth.port)
        if port in ILLEGAL_PORTS:
            return Reject(503, f"illegal target port {port}")
        return (local_ip, port), svc, tunnel_dst

    def _tunnel_vip(self, svc: Service) -> str | None:
        """The VIP of ``svc`` on our network, IPv4 preferred (PROXY headers carry no hostname)."""
        network = self.pod.services.state.network
        ours = [ip for net, ip in svc.vips if net == network]
        return next((ip for ip in ours if ":" not in ip), ours[0] if ours else None)

    def _forward(
        self,
        peer: InboundPeer,
        request: ConnectRequest,
        wl: Workload,
        live: LiveConnection,
        *,
        src: tuple[str, int],
        tunnel_dst: tuple[str, int],
    ) -> Forward:
        """Dial the app from inside the pod (original source kept, or through its PROXY app tunnel)."""
        s = self.pod.services
        dst = (live.conn.dst_ip, live.conn.dst_port)
        src_ip = live.conn.src_ip if s.spoof_source else None
        prefix = b""
        tunnel = wl.application_tunnel
        if tunnel is not None:
            dst = (dst[0], tunnel[1] or dst[1])  # the tunnel's own port, if it has one
        if tunnel is not None and tunnel[0] == "PROXY":
            # the app's tunnel port on the pod's loopback; the PROXY header carries who is really calling
            # and what they asked for (the authority)
            prefix = proxy_protocol.header(src, tunnel_dst, peer.identity.uri)
            dst, src_ip = ("::1" if ":" in dst[0] else "127.0.0.1", dst[1]), None
        meter = self._meter(peer, request, live)

        async def connect() -> socket.socket:
            sock = await connect_app(self.pod.factory, dst, src_ip, s.settings.connect_timeout_s)
            if prefix:
                await asyncio.get_running_loop().sock_sendall(sock, prefix)
            live.sock = sock
            self.live.add(live)
            if meter is not None:
                s.live.add(meter)
            return sock

        def done(result: RelayResult) -> None:
            self.live.discard(live)
            if meter is not None:
                s.live.discard(meter)
            live.record.sync(result.received, result.sent)  # relay's "sent" = TCP -> HBONE = response
            flags = "CONNECT" if result.error and result.error.startswith("upstream connect failed") else "-"
            live.record.close(result.error, flags)

        return Forward(connect, (("baggage", baggage(source_metadata(wl))),), done)

    def _meter(
        self, peer: InboundPeer, request: ConnectRequest, live: LiveConnection
    ) -> tuple[ConnectionRecord, Callable[[], tuple[int, int] | None]] | None:
        """Live byte counts of this CONNECT's stream, polled by the app's metrics flusher."""
        stream = self.find_stream(peer.address, request.stream_id) if self.find_stream else None
        if stream is None:
            return None

        def totals() -> tuple[int, int] | None:
            return None if stream.finished else (stream.bytes_received, stream.bytes_sent)

        return live.record, totals

    def _may_proxy(self, wl: Workload, ip: str) -> bool:
        """§2.7 exceptions to "authority = this pod": the pod has an application tunnel, or it is the
        waypoint of the authority's service or workload (a sandwiched waypoint)."""
        if wl.application_tunnel is not None:
            return True
        state = self.pod.services.state
        target = state.find_workload_by_ip(ip)
        gw = target.waypoint if target is not None else None
        if gw is None:
            svc = state.find_service_by_vip(ip, wl.namespace)
            gw = svc.waypoint if svc is not None else None
        if gw is None:
            return False
        if gw.hostname is not None:
            return str(gw.hostname) in wl.services
        return gw.address is not None and gw.address[1] in wl.addresses

    @staticmethod
    def _target_port(wl: Workload, svc: Service, svc_port: int) -> int:
        """Endpoint's port map first, then the service's target port (behaviour.md §2.7)."""
        return wl.services.get(svc.key, {}).get(svc_port, 0) or svc.ports.get(svc_port, 0)

    def _service(self, wl: Workload, request: ConnectRequest, port: int) -> Service | None:
        state = self.pod.services.state
        host = request.forwarded_host
        if host:
            svc = state.find_services_by_hostname(host, wl.namespace)
            if svc is not None:
                return svc
        for key in wl.services:
            svc = state.find_service(key)
            if svc is not None and port in {t or p for p, t in svc.ports.items()}:
                return svc
        return None

    def recheck(self) -> None:
        """After a policy change: close every live connection that the policies now deny."""
        recheck_live(self.live, self.pod.services.state)
