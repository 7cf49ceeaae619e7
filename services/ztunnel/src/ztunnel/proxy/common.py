"""Small helpers shared by the proxies: accept loops, resets, dialling the app with the original source."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable, Coroutine
from typing import Any

from meshkit.drain import TaskOwner
from meshkit.hbone.request import SourceMetadata
from meshkit.logs import kv
from meshkit.sockets import IP_TRANSPARENT, SocketFactory

from ztunnel.state.records import Workload

__all__ = ["Acceptor", "connect_app", "reset", "source_metadata", "unmap"]

log = logging.getLogger("proxy")


def unmap(ip: str) -> str:
    """``::ffff:10.0.0.1`` (an IPv4 peer on a dual-stack listener) -> ``10.0.0.1``."""
    return ip[7:] if ip.startswith("::ffff:") and "." in ip else ip


def reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): what the app sees when we refuse its connection."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class Acceptor:
    """Accepts connections on a listening socket from a reader callback and hands each to ``handle``.

    Why not ``await loop.sock_accept`` in a task: cancelling that task can lose a connection the kernel
    already accepted (the result is dropped with the cancelled future), which a handover must never do.
    Here every accepted socket is handed over synchronously; :meth:`stop` removes the reader and closes the
    listener (the kernel then migrates queued connections to another SO_REUSEPORT listener).
    """

    BATCH = 64

    def __init__(
        self,
        listener: socket.socket,
        handle: Callable[[socket.socket, tuple[str, int]], Coroutine[Any, Any, None]],
        tasks: TaskOwner,
        name: str,
    ) -> None:
        self.listener = listener
        self.handle = handle
        self.tasks = tasks
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.listener.fileno(), self._ready)

    def _ready(self) -> None:
        for _ in range(self.BATCH):
            try:
                conn, addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("accept failed", extra=kv(listener=self.name, error=str(exc)))
                return
            conn.setblocking(False)
            self.tasks.spawn(self.handle(conn, (unmap(addr[0]), addr[1])), name=self.name)

    def stop(self) -> None:
        if self._loop is not None and self.listener.fileno() >= 0:
            self._loop.remove_reader(self.listener.fileno())
        self.listener.close()


async def connect_app(
    factory: SocketFactory, dst: tuple[str, int], src_ip: str | None, timeout_s: float
) -> socket.socket:
    """Dial the app inside the pod; with ``src_ip``, bind to it first (IP_TRANSPARENT) so the app sees the
    original client address, as upstream does (behaviour.md §4.4)."""
    sock = factory.connect_tcp(dst[0], dst[1])
    try:
        if src_ip is not None:
            level = socket.IPPROTO_IPV6 if sock.family == socket.AF_INET6 else socket.SOL_IP
            sock.setsockopt(level, IP_TRANSPARENT, 1)
            sock.bind((src_ip, 0))
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, dst), timeout_s)
    except BaseException:
        sock.close()
        raise
    return sock


def source_metadata(wl: Workload) -> SourceMetadata:
    return SourceMetadata(
        cluster_id=wl.cluster_id,
        namespace=wl.namespace,
        workload_type=wl.workload_type,
        workload_name=wl.workload_name,
        canonical_name=wl.canonical_name,
        canonical_revision=wl.canonical_revision,
        region=wl.locality.region,
        zone=wl.locality.zone,
    )
