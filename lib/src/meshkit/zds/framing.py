"""ZDS packet framing over a ``SOCK_SEQPACKET`` unix socket (wire-contracts.md §5.1).

One protobuf message is one packet: there is no length prefix, the socket keeps message boundaries. Both
ends read into a :data:`MAX_PACKET` (1024) byte buffer and treat a truncated payload or control message as an
error, so every message we send must be smaller than that. An ``AddWorkload`` packet carries exactly one file
descriptor (the pod's network namespace) in an ``SCM_RIGHTS`` control message; every other packet carries
none.

The helpers here do one ``sendmsg``/``recvmsg`` on a socket that is ready; they never block on their own when
the socket is non-blocking (``BlockingIOError`` propagates to the caller, the asyncio shell in
:mod:`meshkit.zds.aio` waits for readiness and retries). Received descriptors are opened with
``MSG_CMSG_CLOEXEC`` so a forked child never inherits a pod's netns.
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
from dataclasses import dataclass

from meshkit.zds.errors import ZdsProtocolError

__all__ = ["MAX_PACKET", "Packet", "close_fds", "recv_packet", "send_packet"]

#: Receive buffer size used by both ends upstream; a message must be strictly smaller.
MAX_PACKET = 1024
_FD_SIZE = array.array("i").itemsize
# Room for a few descriptors, so that a peer sending too many is detected (and its fds closed) rather than
# silently truncated.
_CMSG_SPACE = socket.CMSG_SPACE(4 * _FD_SIZE)


@dataclass(frozen=True, slots=True)
class Packet:
    """One received packet: the message bytes and the descriptors that came with it (caller owns them)."""

    data: bytes
    fds: tuple[int, ...] = ()


def close_fds(fds: tuple[int, ...] | list[int]) -> None:
    """Close received descriptors that nobody will take ownership of."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def send_packet(sock: socket.socket, data: bytes, fd: int | None = None) -> None:
    """Send one message, with ``fd`` attached as ``SCM_RIGHTS`` when given; raises if it would not fit."""
    if len(data) >= MAX_PACKET:
        raise ZdsProtocolError(f"ZDS message of {len(data)} bytes does not fit the {MAX_PACKET}-byte packet")
    ancillary = []
    if fd is not None:
        ancillary.append((socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes()))
    sent = sock.sendmsg([data], ancillary)
    if sent != len(data):  # SEQPACKET is all-or-nothing; a short write means the kernel misbehaved
        raise ZdsProtocolError(f"short ZDS write: {sent} of {len(data)} bytes")


def recv_packet(sock: socket.socket) -> Packet | None:
    """Receive one packet; ``None`` means the peer closed the connection.

    Raises :class:`ZdsProtocolError` on truncation (message or control data) after closing any descriptors
    that did arrive.
    """
    data, ancdata, flags, _addr = sock.recvmsg(MAX_PACKET, _CMSG_SPACE, socket.MSG_CMSG_CLOEXEC)
    fds = _extract_fds(ancdata)
    if flags & socket.MSG_TRUNC:
        close_fds(fds)
        raise ZdsProtocolError("ZDS message truncated (larger than 1024 bytes)")
    if flags & socket.MSG_CTRUNC:
        close_fds(fds)
        raise ZdsProtocolError("ZDS control message truncated (too many file descriptors)")
    if not data and not fds:
        return None
    return Packet(data, tuple(fds))


def _extract_fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % _FD_SIZE
            fds.extend(array.array("i", payload[:usable]))
    return fds
