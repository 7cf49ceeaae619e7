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

__all__ = ["accept_loop", "connect_app", "reset", "source_metadata"]

log = logging.getLogger("proxy")


def reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): what the app sees when we refuse its connection."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def accept_loop(
    listener: socket.socket,
    handle: Callable[[socket.socket, tuple[str, int]], Coroutine[Any, Any, None]],
    tasks: TaskOwner,
    name: str,
) -> None:
    """Accept forever; each connection runs ``handle`` as a task owned by ``tasks``."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            conn, addr = await loop.sock_accept(listener)
        except OSError as exc:
            if listener.fileno() < 0:
                return
            log.warning("accept failed", extra=kv(listener=name, error=str(exc)))
            continue
        conn.setblocking(False)
        tasks.spawn(handle(conn, (addr[0], addr[1])), name=name)


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
