"""Outbound (15001): the app's connections, redirected by iptables, leave through ztunnel (behaviour.md §4.1).

Per connection: recover the original destination (``SO_ORIGINAL_DST``), wait (bounded) for the pod's own
workload, plan the route (:func:`~ztunnel.proxy.route.plan_outbound`), then either open an HBONE stream from
this pod's pool (source = the pod's own certificate, expected identity = the destination's) or dial plain TCP
from inside the pod (marked, so not captured again), and relay. A connection that cannot be served is reset.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from meshkit.hbone.errors import ConnectFailed, ConnectionClosed, HboneError, StreamReset
from meshkit.hbone.pool import ConnectionPool, PoolKey
from meshkit.hbone.relay import relay
from meshkit.hbone.request import connect_headers, format_authority
from meshkit.hbone.stream import HboneStream
from meshkit.identity.manager import CertificateUnavailable
from meshkit.logs import kv
from meshkit.sockets import open_tcp, original_dst

from ztunnel.proxy.common import reset, source_metadata
from ztunnel.proxy.context import PodContext
from ztunnel.proxy.route import Drop, Hbone, Passthrough, Plain, Plan, plan_outbound
from ztunnel.proxy.tcp_relay import relay_tcp
from ztunnel.proxy.telemetry import ConnectionRecord, Endpoints, connection_failed
from ztunnel.state.records import Workload

__all__ = ["OutboundProxy"]

log = logging.getLogger("proxy.outbound")


class OutboundProxy:
    def __init__(self, pod: PodContext, pool: ConnectionPool) -> None:
        self.pod = pod
        self.pool = pool

    async def handle(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        try:
            dst = original_dst(sock)
        except OSError as exc:
            connection_failed("outbound", peer, None, f"no original destination: {exc}")
            reset(sock)
            return
        src = await self.pod.fetch_workload()
        if src is None:
            pod = f"{self.pod.info.namespace}/{self.pod.info.name}"
            connection_failed("outbound", peer, dst, f"workload of pod {pod} unknown (is istiod reachable?)")
            reset(sock)
            return
        s = self.pod.services
        plan = plan_outbound(s.state, src, dst, s.rng)
        record = ConnectionRecord(s.metrics, self._endpoints(src, peer, dst, plan))
        record.open()
        with s.drain.track(lambda: reset(sock), name="outbound"):
            try:
                await self._serve(sock, src, peer, plan, record)
            except Exception as exc:  # a bug must cost one connection, not leak its socket
                log.exception("outbound connection failed", extra=kv(src=peer, dst=dst))
                reset(sock)
                record.close(f"internal error: {exc!r}", "CONNECT")

    def _endpoints(self, src: Workload, peer: tuple[str, int], dst: tuple[str, int], plan: Plan) -> Endpoints:
        if isinstance(plan, Hbone):
            return Endpoints(
                "outbound",
                peer,
                plan.dial,
                format_authority(*plan.authority),
                src,
                src.identity,
                plan.workload,
                plan.workload.identity,
                plan.service,
                mtls=True,
            )
        if isinstance(plan, Plain):
            return Endpoints("outbound", peer, plan.target, "", src, None, plan.workload, None, plan.service)
        return Endpoints("outbound", peer, dst, "", src)

    async def _serve(
        self, sock: socket.socket, src: Workload, peer: tuple[str, int], plan: Plan, record: ConnectionRecord
    ) -> None:
        if isinstance(plan, Drop):
            reset(sock)
            record.close(plan.reason, "CONNECT")
            return
        if isinstance(plan, Hbone):
            await self._hbone(sock, src, peer, plan, record)
            return
        target = plan.target if isinstance(plan, Plain | Passthrough) else None
        assert target is not None
        if isinstance(plan, Plain) and plan.resolve:
            try:
                target = await self._resolve(target, src, peer)
            except OSError as exc:
                reset(sock)
                record.close(f"DNS lookup of {target[0]} failed: {exc}", "CONNECT")
                return
        try:
            upstream = await asyncio.wait_for(
                open_tcp(self.pod.factory, *target), self.pod.services.settings.connect_timeout_s
            )
        except (OSError, TimeoutError) as exc:
            reset(sock)
            record.close(f"connect to {target} failed: {exc!r}", "CONNECT")
            return
        result = await relay_tcp(sock, upstream, record.add_bytes)
        record.sync(result.up, result.down)
        record.close(result.error)

    async def _resolve(
        self, target: tuple[str, int], src: Workload, peer: tuple[str, int]
    ) -> tuple[str, int]:
        """On-demand DNS for a hostname workload: a random record, the client's address family preferred."""
        s = self.pod.services
        s.metrics.on_demand_dns.labels(
            source_workload=src.workload_name or "unknown",
            source_workload_namespace=src.namespace or "unknown",
            hostname=target[0],
        ).inc()
        infos = await asyncio.get_running_loop().getaddrinfo(target[0], target[1], type=socket.SOCK_STREAM)
        family = socket.AF_INET6 if ":" in peer[0] else socket.AF_INET
        same = [info for info in infos if info[0] == family] or infos
        if not same:
            raise OSError(f"no address for {target[0]}")
        return str(s.rng.choice(same)[4][0]), target[1]

    async def _open(self, key: PoolKey, plan: Hbone, headers: list[tuple[str, str]]) -> HboneStream:
        """Open the tunnel; retry once when a pooled connection went away under us before any answer.

        No app byte has been read yet, so a retry is invisible to the app. It covers the peer's GOAWAY race
        (a stream sent just as the peer drains, e.g. during a ztunnel handover). The pool reports that as a
        :class:`ConnectFailed` caused by :class:`ConnectionClosed` or :class:`StreamReset`; anything else (TCP
        refused, TLS failure, the connect timeout, a non-200 answer) means the peer is unreachable or said
        no, and a second try would only double the wait (a black-holed peer would cost two timeouts).
        """
        try:
            return await self.pool.connect(key, plan.authority, headers)
        except ConnectFailed as exc:
            if not isinstance(exc.__cause__, ConnectionClosed | StreamReset):
                raise
            log.debug(
                "HBONE connection went away before an answer; retrying", extra=kv(dst=key.dst, error=str(exc))
            )
        return await self.pool.connect(key, plan.authority, headers)

    async def _hbone(
        self, sock: socket.socket, src: Workload, peer: tuple[str, int], plan: Hbone, record: ConnectionRecord
    ) -> None:
        s = self.pod.services
        try:
            await asyncio.wait_for(s.certs.fetch_certificate(src.identity), s.settings.workload_wait_s)
            key = PoolKey.of(src.identity, peer[0], plan.identities, plan.dial)
            headers = connect_headers(
                source_metadata(src), peer, service_host=plan.service.hostname if plan.service else None
            )
            stream = await self._open(key, plan, headers)
        except (HboneError, OSError, TimeoutError, CertificateUnavailable, LookupError) as exc:
            reset(sock)
            record.close(f"{exc}", "CONNECT")
            return
        live = (record, lambda: (stream.bytes_sent, stream.bytes_received))
        s.live.add(live)  # HBONE relay counts are read periodically (the app's metrics flusher)
        try:
            result = await relay(sock, stream)
        finally:
            s.live.discard(live)
        record.sync(result.sent, result.received)
        record.close(result.error)
