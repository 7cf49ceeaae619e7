"""One captured pod's proxy: its listeners, opened inside the pod's netns, and its connection pool.

Listeners (all marked 1337, SO_REUSEPORT so a second ztunnel can bind beside us during a handover):
15001 outbound, 15006 inbound plaintext, 15008 inbound HBONE (wildcard, dual stack when the pod has IPv6),
and the DNS proxy on 127.0.0.1:15053 (and ::1) over UDP and TCP.

Hold, don't drop: every socket listens from the start, so the kernel queues new connections even before the
pod's workload or certificate is known. Outbound and plaintext connections are accepted and each waits
(bounded, ``WORKLOAD_WAIT``) for the workload; the HBONE server starts serving (TLS needs the certificate)
once the certificate arrives, and until then its connections wait in the listen backlog.

``stop_accepting`` (ztunnel drain, handover, or the pod got a new netns) closes the listeners and lets the
connections finish; ``stop`` (ZDS Del) tears everything down at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable

from meshkit.drain import TaskOwner
from meshkit.hbone.pool import ConnectionPool, PoolKey
from meshkit.identity.certs import WorkloadCertificate
from meshkit.identity.spiffe import Identity
from meshkit.logs import kv
from meshkit.sockets import SocketFactory, open_tcp
from meshkit.zds import WorkloadInfo

from ztunnel.dns.resolver import DnsResolver
from ztunnel.dns.server import DnsServer, UdpListener, upstream_resolvers
from ztunnel.proxy.common import Acceptor
from ztunnel.proxy.context import PodContext, ProxyServices
from ztunnel.proxy.hbone_server import DrainableHboneServer
from ztunnel.proxy.inbound import InboundProxy
from ztunnel.proxy.inbound_passthrough import InboundPlaintextProxy
from ztunnel.proxy.outbound import OutboundProxy
from ztunnel.state.records import Workload

__all__ = ["InPodProxy"]

log = logging.getLogger("inpod")


class InPodProxy:
    """The proxy instance of one pod; ``start`` opens everything, ``stop`` closes everything."""

    def __init__(
        self,
        services: ProxyServices,
        uid: str,
        info: WorkloadInfo,
        factory: SocketFactory,
        *,
        close_factory: Callable[[], None] | None = None,
        udp_listener: UdpListener | None = None,
    ) -> None:
        self._udp_listener = udp_listener
        self.services = services
        self.pod = PodContext(uid, info, factory, services)
        self.pool = ConnectionPool(
            self._certificate, self._connector, services.hbone, name=f"pool-{info.namespace}/{info.name}"
        )
        self.outbound = OutboundProxy(self.pod, self.pool)
        self.inbound = InboundProxy(self.pod)
        self.plaintext = InboundPlaintextProxy(self.pod)
        self.hbone: DrainableHboneServer | None = None
        self.dns: DnsServer | None = None
        self.ready = asyncio.Event()
        self._tasks = TaskOwner(f"pod-{info.name}")
        self._listeners: list[socket.socket] = []
        self._acceptors: list[Acceptor] = []
        self._hbone_task: asyncio.Task[None] | None = None
        self._hbone_sock: socket.socket | None = None
        self._close_factory = close_factory
        self._unsubscribe: Callable[[], None] | None = None
        self.pod.on_workload.append(self._workload_found)

    def _certificate(self, identity: Identity) -> WorkloadCertificate:
        """The current certificate; ``LookupError`` when there is none (expired, or the workload went away):
        the pool then fails the outbound connect. (The HBONE server is given ``find_certificate`` itself:
        its ``None`` refuses the handshake cleanly, :mod:`ztunnel.proxy.hbone_server`.)"""
        cert = self.services.certs.find_certificate(identity)
        if cert is None:
            raise LookupError(f"no certificate for {identity}")
        return cert

    async def _connector(self, key: PoolKey) -> socket.socket:
        return await open_tcp(self.pod.factory, *key.dst)

    def _listen(self, port: int) -> socket.socket:
        """Wildcard listener: ``[::]`` (dual stack) if the pod has IPv6, else ``0.0.0.0`` (spec §1)."""
        s = self.services.settings
        try:
            sock = self.pod.factory.listen_tcp("::", port, reuseport=s.inpod_port_reuse, transparent=True)
        except OSError:
            sock = self.pod.factory.listen_tcp(
                "0.0.0.0", port, reuseport=s.inpod_port_reuse, transparent=True
            )
        self._listeners.append(sock)
        return sock

    async def start(self) -> None:
        s = self.services.settings
        try:
            out = self._listen(s.outbound_port)
            plain = self._listen(s.inbound_plaintext_port)
            hbone = self._listen(s.inbound_port)
            self._hbone_sock = hbone
            if s.dns_capture:
                resolver = DnsResolver(self.services.state, self.pod.info.namespace, s.cluster_domain)
                upstreams = upstream_resolvers(s.dns_resolv_conf)
                self.dns = DnsServer(
                    self.pod.factory,
                    resolver=resolver,
                    upstreams=upstreams,
                    metrics=self.services.dns_metrics,
                    port=s.dns_port,
                    udp_listener=self._udp_listener,
                    source=self._canonical,
                )
                await self.dns.start()
        except BaseException:
            await self.stop()
            raise
        self._acceptors = [
            Acceptor(out, self.outbound.handle, self._tasks, "outbound"),
            Acceptor(plain, self.plaintext.handle, self._tasks, "inbound-plaintext"),
        ]
        for acceptor in self._acceptors:
            acceptor.start()
        self._hbone_task = self._tasks.spawn(self._serve_hbone(hbone), name="hbone")
        self._unsubscribe = self.services.state.on_policy_change(self._recheck)

    async def _serve_hbone(self, sock: socket.socket) -> None:
        """Start the HBONE server once the pod's workload and certificate are known (hold, don't drop)."""
        while True:
            wl = await self.pod.fetch_workload()
            if wl is not None:
                break
        while True:
            try:
                await self.services.certs.fetch_certificate(wl.identity)
                break
            except Exception as exc:  # the manager retries with back-off; we wait for its next result
                log.warning(
                    "pod certificate unavailable", extra=kv(identity=str(wl.identity), error=str(exc))
                )
                await asyncio.sleep(1.0)
        identity = wl.identity
        self.hbone = DrainableHboneServer(
            sock,
            lambda: self.services.certs.find_certificate(identity),
            self.inbound.handle,
            self.services.hbone,
            name=f"hbone-{self.pod.info.name}",
        )
        await self.hbone.start()
        self.inbound.find_stream = self.hbone.find_stream
        self.ready.set()
        log.info("pod proxy ready", extra=kv(pod=f"{self.pod.info.namespace}/{self.pod.info.name}"))

    def _recheck(self) -> None:
        self.inbound.recheck()
        self.plaintext.recheck()

    def _canonical(self) -> tuple[str, str]:
        wl = self.pod.workload
        return (wl.canonical_name, wl.canonical_revision) if wl is not None else ("", "")

    def _workload_found(self, wl: Workload) -> None:
        self.services.certs.workload_added(self.pod.uid, wl.identity)

    async def stop_accepting(self, grace_s: float) -> None:
        """Drain step one: stop accepting in this pod (listeners close; with ``tcp_migrate_req`` the kernel
        moves connections still queued on them to a peer listener of the same SO_REUSEPORT group, i.e. the
        new ztunnel's), then drain the HBONE server (GOAWAY: its streams finish within ``grace_s``)."""
        for acceptor in self._acceptors:
            acceptor.stop()
        self._acceptors.clear()
        if self._hbone_task is not None and not self._hbone_task.done():
            self._hbone_task.cancel()  # never started serving: nothing accepted on it yet
            with contextlib.suppress(asyncio.CancelledError):
                await self._hbone_task
        for sock in self._listeners:
            if self.hbone is None or sock is not self._hbone_sock:  # the HBONE server closes its own
                sock.close()
        if self.dns is not None:
            await self.dns.close()
            self.dns = None
        if self.hbone is not None:
            await self.hbone.close(grace_s)  # GOAWAY, in-flight streams finish, the rest closes at grace_s
            self.hbone = None

    async def stop(self) -> None:
        for acceptor in self._acceptors:
            acceptor.stop()
        self._acceptors.clear()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        await self._tasks.close()
        if self.hbone is not None:
            await self.hbone.close()
        if self.dns is not None:
            await self.dns.close()
        for sock in self._listeners:
            sock.close()
        self._listeners.clear()
        await self.pool.close()
        if self.pod.workload is not None:
            self.services.certs.workload_removed(self.pod.uid)
        if self._close_factory is not None:
            self._close_factory()
