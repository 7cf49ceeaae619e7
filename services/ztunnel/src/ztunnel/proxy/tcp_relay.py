"""Copy bytes both ways between two TCP sockets (passthrough and inbound plaintext), callback-driven.

Each side is a ``BufferedProtocol`` reading into its own reused buffer and writing straight into the other
side's transport; a congested writer pauses the other side's reading. FIN is carried as ``write_eof`` (half
close); an error or RST on one side resets the other (SO_LINGER 0), so the peer sees what the far end did.
The relay ends when both directions saw EOF, or either side failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

__all__ = ["TcpRelayResult", "relay_tcp"]

BUFFER = 64 * 1024


@dataclass(frozen=True, slots=True)
class TcpRelayResult:
    """``up`` = bytes a -> b (request direction), ``down`` = b -> a."""

    up: int
    down: int
    error: str | None = None


def _reset(transport: asyncio.Transport | None) -> None:
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):  # uvloop: ValueError once the fd is gone
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class _Side(asyncio.BufferedProtocol):
    def __init__(self, relay: _Relay, name: str) -> None:
        self.relay = relay
        self.name = name
        self.peer: _Side | None = None
        self.transport: asyncio.Transport | None = None
        self.count = 0
        self.eof = False
        self.lost = False
        self._buf = bytearray(BUFFER)
        self._view = memoryview(self._buf)
        self.pending = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a cast, not an isinstance check: uvloop's transports are not asyncio.Transport subclasses
        self.transport = cast(asyncio.Transport, transport)
        # until both sides exist; uvloop starts reading after connection_made regardless, so bytes that
        # arrive before the peer is attached are kept in ``pending`` (see buffer_updated), never dropped
        self.transport.pause_reading()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self.count += nbytes
        if self.relay.on_bytes is not None:
            self.relay.on_bytes(*((nbytes, 0) if self is self.relay.a else (0, nbytes)))
        peer = self.peer
        if peer is None or peer.transport is None:  # the other side is not attached yet
            self.pending += self._view[:nbytes]
            if self.transport is not None:
                self.transport.pause_reading()
            return
        if not peer.transport.is_closing():
            # a copy: uvloop keeps a reference to what it could not send at once, and the next read
            # reuses this buffer
            peer.transport.write(bytes(self._view[:nbytes]))

    def attached(self) -> None:
        """Both sides exist: forward what arrived early (data, then EOF) and start reading."""
        peer = self.peer
        if peer is None or peer.transport is None or self.transport is None:
            return
        if self.pending and not peer.transport.is_closing():
            peer.transport.write(bytes(self.pending))
        self.pending = bytearray()
        if self.eof and not peer.transport.is_closing():
            with contextlib.suppress(OSError, RuntimeError):
                peer.transport.write_eof()
        if not self.transport.is_closing():
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.transport.is_closing():
            with contextlib.suppress(OSError, RuntimeError):
                peer.transport.write_eof()
        self.relay.check()
        return True

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None and not self.peer.transport.is_closing():
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if exc is not None or not (self.eof and self.peer is not None and self.peer.eof):
            self.relay.fail(f"{self.name}: {exc or 'closed before end of stream'}")
        self.relay.check()


class _Relay:
    def __init__(self, done: asyncio.Future[TcpRelayResult]) -> None:
        self.done = done
        self.a = _Side(self, "downstream")
        self.b = _Side(self, "upstream")
        self.a.peer, self.b.peer = self.b, self.a
        self.error: str | None = None
        self.on_bytes: Callable[[int, int], None] | None = None

    def fail(self, reason: str) -> None:
        if self.error is None and not (self.a.eof and self.b.eof):
            self.error = reason
            _reset(self.a.transport)
            _reset(self.b.transport)

    def check(self) -> None:
        if self.a.eof and self.b.eof:
            for side in (self.a, self.b):
                if side.transport is not None:
                    side.transport.close()
        if self.a.lost and self.b.lost and not self.done.done():
            self.done.set_result(TcpRelayResult(self.a.count, self.b.count, self.error))


async def relay_tcp(
    a: socket.socket, b: socket.socket, on_bytes: Callable[[int, int], None] | None = None
) -> TcpRelayResult:
    """Relay two connected sockets until both directions end; owns both sockets. Cancel aborts both.

    ``on_bytes(up, down)`` is called with every chunk copied (one of the two is 0), for live byte metrics.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[TcpRelayResult] = loop.create_future()
    relay = _Relay(done)
    relay.on_bytes = on_bytes
    try:
        for sock in (a, b):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await loop.connect_accepted_socket(lambda: relay.a, a)
        await loop.connect_accepted_socket(lambda: relay.b, b)
        for side in (relay.a, relay.b):
            side.attached()
        if relay.error is not None:  # a side failed before the other existed (uvloop reads at once)
            _reset(relay.a.transport)
            _reset(relay.b.transport)
    except BaseException:
        _reset(relay.a.transport)
        _reset(relay.b.transport)
        a.close()
        b.close()
        raise
    try:
        return await asyncio.shield(done)
    except asyncio.CancelledError:
        relay.fail("relay cancelled")
        raise
