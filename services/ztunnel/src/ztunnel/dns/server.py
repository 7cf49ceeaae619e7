"""The DNS proxy shell for one pod: UDP and TCP on 127.0.0.1:15053 inside the pod's netns (behaviour.md §8).

Queries the :class:`~ztunnel.dns.resolver.DnsResolver` answers locally are answered at once; all others are
relayed, as raw bytes, to the first upstream resolver of ztunnel's ``resolv.conf``, from a socket made in the
pod (marked, so the pod's DNS capture leaves it alone).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import cast

import dnslib
from meshkit.drain import TaskOwner
from meshkit.logs import kv
from meshkit.sockets import SocketFactory

from ztunnel.dns.resolver import DnsResolver
from ztunnel.metrics import DnsMetrics
from ztunnel.proxy.common import Acceptor

__all__ = ["DnsServer", "UdpListener", "upstream_resolvers"]

#: Makes the bound UDP socket (SO_REUSEPORT, marked) inside the pod; the factory's ``bind_udp`` has no
#: reuseport option, and a handover needs two ztunnels bound to 15053 at once.
UdpListener = Callable[[str, int], Awaitable[socket.socket]]

log = logging.getLogger("dns")

UPSTREAM_TIMEOUT_S = 5.0


def upstream_resolvers(resolv_conf: str) -> list[str]:
    try:
        lines = Path(resolv_conf).read_text().splitlines()
    except OSError:
        return []
    return [
        parts[1] for parts in (line.split() for line in lines) if len(parts) >= 2 and parts[0] == "nameserver"
    ]


def _servfail(query: bytes) -> bytes | None:
    """SERVFAIL for a query we could not forward (None when the query itself is unreadable)."""
    try:
        reply = dnslib.DNSRecord.parse(query).reply()
    except Exception:
        return None
    reply.header.rcode = dnslib.RCODE.SERVFAIL
    return bytes(reply.pack())


def _qtype(query: bytes) -> str:
    with contextlib.suppress(Exception):
        return str(dnslib.QTYPE.get(dnslib.DNSRecord.parse(query).q.qtype))
    return "unknown"


class DnsServer:
    def __init__(
        self,
        factory: SocketFactory,
        *,
        resolver: DnsResolver,
        upstreams: list[str],
        metrics: DnsMetrics,
        port: int = 15053,
        host: str = "127.0.0.1",
        udp_listener: UdpListener | None = None,
        source: Callable[[], tuple[str, str]] | None = None,
    ) -> None:
        self.source = source  # the client pod's (canonical name, revision), for metric labels
        self.udp_listener = udp_listener
        self.factory = factory
        self.resolver = resolver
        self.upstreams = upstreams
        self.metrics = metrics
        self.port = port
        self.host = host
        self._tasks = TaskOwner("dns")
        self._transports: list[asyncio.DatagramTransport] = []
        self._acceptors: list[Acceptor] = []

    async def start(self) -> None:
        """Bind ``host`` (127.0.0.1), and ::1 too when the pod's loopback has IPv6 (best effort, §1)."""
        await self._bind(self.host)
        if self.host == "127.0.0.1":
            try:
                await self._bind("::1")
            except OSError:
                log.debug("no IPv6 loopback in the pod; DNS proxy on 127.0.0.1 only")

    async def _bind(self, host: str) -> None:
        loop = asyncio.get_running_loop()
        udp = (
            await self.udp_listener(host, self.port)
            if self.udp_listener
            else self.factory.bind_udp(host, self.port)
        )
        try:
            tcp = self.factory.listen_tcp(host, self.port, reuseport=True)
        except BaseException:
            udp.close()
            raise
        transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=udp)
        self._transports.append(transport)
        acceptor = Acceptor(tcp, self._tcp_conn_addr, self._tasks, "dns-tcp")
        acceptor.start()
        self._acceptors.append(acceptor)

    async def answer(self, query: bytes, protocol: str) -> bytes | None:
        source = self.source() if self.source is not None else ("", "")
        labels = {
            "request_query_type": _qtype(query),
            "request_protocol": protocol,
            "source_canonical_service": source[0] or "unknown",
            "source_canonical_revision": source[1] or "unknown",
        }
        self.metrics.requests.labels(**labels).inc()
        local = self.resolver.answer(query)
        if local is not None:
            return local
        if not self.upstreams:
            return _servfail(query)
        self.metrics.upstream_requests.labels(**labels).inc()
        started = time.monotonic()
        try:
            reply = await asyncio.wait_for(self._forward(query, self.upstreams[0]), UPSTREAM_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            self.metrics.upstream_failures.labels(**labels).inc()
            log.debug("upstream DNS failed", extra=kv(error=repr(exc)))
            return _servfail(query)
        self.metrics.upstream_duration.labels(**labels).observe(time.monotonic() - started)
        return reply

    async def _forward(self, query: bytes, server: str) -> bytes:
        loop = asyncio.get_running_loop()
        sock = self.factory.bind_udp("::" if ":" in server else "0.0.0.0", 0)
        try:
            await loop.sock_connect(sock, (server, 53))
            await loop.sock_sendall(sock, query)
            return await loop.sock_recv(sock, 65535)
        finally:
            sock.close()

    def _udp_query(self, transport: asyncio.DatagramTransport, data: bytes, addr: tuple[str, int]) -> None:
        self._tasks.spawn(self._udp_reply(transport, data, addr), name="udp-query")

    async def _udp_reply(
        self, transport: asyncio.DatagramTransport, data: bytes, addr: tuple[str, int]
    ) -> None:
        reply = await self.answer(data, "udp")
        if reply is not None and not transport.is_closing():
            transport.sendto(reply, addr)

    async def _tcp_conn_addr(self, conn: socket.socket, _peer: tuple[str, int]) -> None:
        await self._tcp_conn(conn)

    async def _tcp_conn(self, conn: socket.socket) -> None:
        reader, writer = await asyncio.open_connection(sock=conn)
        try:
            while True:
                size = struct.unpack("!H", await reader.readexactly(2))[0]
                reply = await self.answer(await reader.readexactly(size), "tcp")
                if reply is None:
                    return
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, OSError):
            return
        finally:
            writer.close()

    async def close(self) -> None:
        for acceptor in self._acceptors:
            acceptor.stop()
        await self._tasks.close()
        for transport in self._transports:
            transport.close()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(
            asyncio.DatagramTransport, transport
        )  # asyncio's is not a DatagramTransport subclass

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        if self.transport is not None:
            self.server._udp_query(self.transport, data, (str(addr[0]), int(addr[1])))
