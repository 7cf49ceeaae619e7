"""The injected socket interface (STYLE.md practice 2): every listener and outbound socket comes from here.

Proxies never call ``socket.socket`` themselves; they take a :class:`SocketFactory`. In tests it is a
:class:`HostSocketFactory` on loopback; in ztunnel's in-pod mode it is a :class:`NetnsSocketFactory` per pod,
which creates each socket inside the pod's network namespace (a socket keeps the netns it was created in, so
only the ``socket()`` call runs in the netns thread) and marks it with ``SO_MARK`` 1337 so the pod's
iptables rules leave ztunnel's own traffic alone (spec behaviour.md §1 and §3.3).

Sockets returned are non-blocking, ready for asyncio::

    sock = factory.listen_tcp("0.0.0.0", 15001, reuseport=True, transparent=True)
    server = await asyncio.start_server(handle, sock=sock)

    sock = factory.connect_tcp(host, port)          # created and marked, not yet connected
    await loop.sock_connect(sock, (host, port))     # or: await open_tcp(factory, host, port)
    reader, writer = await asyncio.open_connection(sock=sock)

:func:`original_dst` reads the pre-REDIRECT destination of an accepted connection (``SO_ORIGINAL_DST``).

Hosts must be IP literals: name resolution is the caller's decision (ztunnel resolves through its own DNS
state), never an accident of ``bind``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct
from typing import Protocol

from meshkit.logs import kv
from meshkit.netns import NetnsRef, NetnsThread

__all__ = [
    "INPOD_MARK",
    "IP6T_SO_ORIGINAL_DST",
    "IPV6_TRANSPARENT",
    "IP_TRANSPARENT",
    "SO_MARK",
    "SO_ORIGINAL_DST",
    "HostSocketFactory",
    "NetnsSocketFactory",
    "SocketFactory",
    "open_tcp",
    "original_dst",
]

log = logging.getLogger("sockets")

#: SO_MARK ztunnel puts on every socket it creates in a pod (``PACKET_MARK``, behaviour.md §1).
INPOD_MARK = 1337

# Linux constants; not every Python build exposes them in the socket module.
SO_MARK = getattr(socket, "SO_MARK", 36)
IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
IPV6_TRANSPARENT = 75
SO_ORIGINAL_DST = 80  # <linux/netfilter_ipv4.h>
IP6T_SO_ORIGINAL_DST = 80  # <linux/netfilter_ipv6/ip6_tables.h>
_SOL_IP = getattr(socket, "SOL_IP", 0)
_SOL_IPV6 = getattr(socket, "SOL_IPV6", 41)


class SocketFactory(Protocol):
    """Creates the sockets of one network context (the host netns, or one pod's netns)."""

    def listen_tcp(
        self,
        host: str,
        port: int,
        *,
        backlog: int = 1024,
        reuseport: bool = False,
        transparent: bool = False,
    ) -> socket.socket:
        """A bound, listening, non-blocking TCP socket."""
        ...

    def bind_udp(self, host: str, port: int) -> socket.socket:
        """A bound, non-blocking UDP socket (port 0 for an ephemeral client socket)."""
        ...

    def connect_tcp(self, host: str, port: int) -> socket.socket:
        """A fresh non-blocking TCP socket of the right family for ``host``, not yet connected."""
        ...


def _family(host: str) -> socket.AddressFamily:
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"{host!r} is not an IP address (sockets take literals; resolve names first)"
        ) from None
    return socket.AF_INET6 if addr.version == 6 else socket.AF_INET


def _set_transparent(sock: socket.socket) -> None:
    """Best effort, as ztunnel does: needs CAP_NET_ADMIN, and only original-source spoofing relies on it."""
    level, opt = (
        (_SOL_IPV6, IPV6_TRANSPARENT) if sock.family == socket.AF_INET6 else (_SOL_IP, IP_TRANSPARENT)
    )
    try:
        sock.setsockopt(level, opt, 1)
    except OSError as exc:
        log.debug("IP_TRANSPARENT not set", extra=kv(error=str(exc)))


class _FactoryBase:
    """Socket options shared by both factories; subclasses decide where ``socket()`` runs."""

    def __init__(self, mark: int | None) -> None:
        self.mark = mark

    def _create(self, family: socket.AddressFamily, kind: socket.SocketKind) -> socket.socket:
        raise NotImplementedError

    def _new(self, host: str, kind: socket.SocketKind) -> socket.socket:
        sock = self._create(_family(host), kind)
        try:
            if self.mark is not None:
                # Not best effort: an unmarked in-pod socket would be redirected back into ztunnel (a loop).
                sock.setsockopt(socket.SOL_SOCKET, SO_MARK, self.mark)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def listen_tcp(
        self,
        host: str,
        port: int,
        *,
        backlog: int = 1024,
        reuseport: bool = False,
        transparent: bool = False,
    ) -> socket.socket:
        sock = self._new(host, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuseport:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if transparent:
                _set_transparent(sock)
            if sock.family == socket.AF_INET6:
                # "::" means both families, like ztunnel's wildcard listeners, whatever the sysctl default.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((host, port))
            sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        return sock

    def bind_udp(self, host: str, port: int) -> socket.socket:
        sock = self._new(host, socket.SOCK_DGRAM)
        try:
            sock.bind((host, port))
        except BaseException:
            sock.close()
            raise
        return sock

    def connect_tcp(self, host: str, port: int) -> socket.socket:
        del port  # the family comes from the host; the caller connects (asyncio sock_connect)
        sock = self._new(host, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


class HostSocketFactory(_FactoryBase):
    """Sockets in this process's own netns (tests, dedicated mode); optionally marked."""

    def __init__(self, mark: int | None = None) -> None:
        super().__init__(mark)

    def _create(self, family: socket.AddressFamily, kind: socket.SocketKind) -> socket.socket:
        return socket.socket(family, kind)


class NetnsSocketFactory(_FactoryBase):
    """Sockets created inside another netns (a pod's), marked 1337 by default.

    Owns one :class:`~meshkit.netns.NetnsThread`; call :meth:`close` (or use ``with``) when the pod goes away.
    An ``int`` netns is a borrowed fd: it is only needed during construction.
    """

    def __init__(self, netns: NetnsRef, mark: int | None = INPOD_MARK, *, name: str = "pod") -> None:
        super().__init__(mark)
        self._thread = NetnsThread(netns, name=name)

    def _create(self, family: socket.AddressFamily, kind: socket.SocketKind) -> socket.socket:
        return self._thread.call(socket.socket, family, kind)

    def close(self) -> None:
        self._thread.close()

    def __enter__(self) -> NetnsSocketFactory:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


async def open_tcp(factory: SocketFactory, host: str, port: int) -> socket.socket:
    """A socket from ``factory`` connected to ``(host, port)``; closed again if the connect fails."""
    sock = factory.connect_tcp(host, port)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def original_dst(sock: socket.socket) -> tuple[str, int]:
    """The destination a connection had before an iptables REDIRECT/DNAT (``SO_ORIGINAL_DST``).

    IPv4 connections, including v4-mapped ones on a dual-stack ``::`` listener, use the IPv4 option;
    IPv6 ones ``IP6T_SO_ORIGINAL_DST``. Raises OSError (ENOENT) when conntrack has no entry for it.
    """
    if sock.family == socket.AF_INET6 and not _is_v4_mapped(sock.getsockname()[0]):
        raw = sock.getsockopt(_SOL_IPV6, IP6T_SO_ORIGINAL_DST, 28)
        port = struct.unpack_from("!H", raw, 2)[0]
        return str(ipaddress.IPv6Address(raw[8:24])), port
    raw = sock.getsockopt(_SOL_IP, SO_ORIGINAL_DST, 16)
    port = struct.unpack_from("!H", raw, 2)[0]
    return str(ipaddress.IPv4Address(raw[4:8])), port


def _is_v4_mapped(host: str) -> bool:
    return ipaddress.IPv6Address(host.split("%", 1)[0]).ipv4_mapped is not None
