"""Inbound plaintext (15006): TCP redirected into the pod from outside the mesh (behaviour.md §4.5).

The original destination must not be a ztunnel port; the local workload is the pod's; authorization runs
with no peer identity, so PeerAuthentication STRICT (a DENY on "no principal") rejects every such connection.
Allowed connections are dialled from inside the pod with the client's IP as source and relayed as-is.
"""

from __future__ import annotations

import logging
import socket

from meshkit.logs import kv
from meshkit.sockets import original_dst

from ztunnel.proxy.common import connect_app, reset
from ztunnel.proxy.context import ILLEGAL_PORTS, PodContext
from ztunnel.proxy.inbound import LiveConnection, recheck_live
from ztunnel.proxy.tcp_relay import relay_tcp
from ztunnel.proxy.telemetry import ConnectionRecord, Endpoints, connection_failed
from ztunnel.rbac import ConnInfo, evaluate

__all__ = ["InboundPlaintextProxy"]

log = logging.getLogger("proxy.inbound_passthrough")


class InboundPlaintextProxy:
    def __init__(self, pod: PodContext) -> None:
        self.pod = pod
        self.live: set[LiveConnection] = set()

    async def handle(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        try:
            dst = original_dst(sock)
        except OSError as exc:
            connection_failed("inbound", peer, None, f"no original destination: {exc}")
            reset(sock)
            return
        if dst[1] in ILLEGAL_PORTS:
            connection_failed("inbound", peer, dst, f"illegal destination port {dst[1]}")
            reset(sock)
            return
        wl = await self.pod.fetch_workload()
        if wl is None:
            connection_failed("inbound", peer, dst, "local workload unknown")
            reset(sock)
            return
        s = self.pod.services
        src_wl = s.state.find_workload_by_ip(peer[0])
        record = ConnectionRecord(
            s.metrics, Endpoints("inbound", peer, dst, "", src_wl, None, wl, None, None)
        )
        record.open()
        wl = self.pod.current_workload() or wl
        conn = ConnInfo(peer[0], None, dst[0], dst[1])
        decision = evaluate(s.state.policies_for(wl), conn)
        if not decision.allowed:
            log.info("plaintext connection denied", extra=kv(src=peer, dst=dst, reason=decision.reason))
            reset(sock)
            record.close(f"connection denied: {decision.reason}", "DENY")
            return
        with s.drain.track(lambda: reset(sock), name="inbound-plaintext"):
            try:
                upstream = await connect_app(
                    self.pod.factory, dst, peer[0] if s.spoof_source else None, s.settings.connect_timeout_s
                )
            except (OSError, TimeoutError) as exc:
                reset(sock)
                record.close(f"connect to app failed: {exc!r}", "CONNECT")
                return
            live = LiveConnection(conn, wl, upstream, record, sock)
            self.live.add(live)
            try:
                result = await relay_tcp(sock, upstream, record.add_bytes)
            finally:
                self.live.discard(live)
        record.sync(result.up, result.down)
        record.close(result.error)

    def recheck(self) -> None:
        """After a policy change: close the plaintext connections the policies now deny (e.g. STRICT)."""
        recheck_live(self.live, self.pod.services.state)
