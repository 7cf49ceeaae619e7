"""Copy bytes both ways between a plain TCP connection and an HBONE stream (ztunnel and waypoint use it).

:func:`relay` with a socket is callback-driven, with no task and no copy on the hot path beyond what the
kernel and TLS need: TCP reads land in a reused buffer (``BufferedProtocol``) and are framed straight into
the HBONE connection; HBONE DATA is written from the connection's receive buffer straight into the TCP
transport. Back-pressure both ways: a full HBONE send buffer pauses TCP reading; a congested TCP transport
stops reopening the HBONE stream window, so a slow reader holds at most one stream window.

Half-close is carried both ways (TCP FIN → END_STREAM, END_STREAM → ``shutdown(SHUT_WR)``) and aborts too
(TCP RST or error → RST_STREAM(CANCEL); RST_STREAM or a lost HBONE connection → TCP RST via SO_LINGER 0).
The relay ends when both directions ended or either side aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass
from typing import cast

from meshkit.hbone.errors import HboneError
from meshkit.hbone.stream import HboneStream

__all__ = ["RelayResult", "relay", "relay_streams"]

TCP_READ_BUFFER = 64 * 1024


@dataclass(frozen=True, slots=True)
class RelayResult:
    """What one relay carried: ``sent`` = TCP → HBONE bytes, ``received`` = HBONE → TCP bytes."""

    sent: int
    received: int
    error: str | None = None


def _rst(transport: asyncio.WriteTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError, ValueError):  # uvloop: ValueError once the fd is gone
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


class _TcpSide(asyncio.BufferedProtocol):
    """The TCP end of a relay; also the HBONE stream's sink."""

    def __init__(self, stream: HboneStream, done: asyncio.Future[RelayResult]) -> None:
        self.stream = stream
        self.done = done
        self.sent = 0
        self.received = 0
        self.error: str | None = None
        self._buf = bytearray(TCP_READ_BUFFER)
        self._view = memoryview(self._buf)
        self._transport: asyncio.Transport | None = None
        self._tcp_eof = False
        self._hbone_eof = False

    # TCP side ------------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio subclasses
        self._transport = transport
        self.stream.set_sink(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self.sent += nbytes
        try:
            self.stream.write(self._view[:nbytes])
        except HboneError as exc:
            self._abort_tcp(str(exc))
            return
        if not self.stream.write_ready and self._transport is not None:
            self._transport.pause_reading()
            self.stream.when_writable(self._resume_reading)

    def _resume_reading(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def eof_received(self) -> bool:
        self._tcp_eof = True
        self.stream.write_eof()
        self._maybe_close()
        return True  # keep our write side open: half-close

    def pause_writing(self) -> None:
        self.stream.pause_reading()

    def resume_writing(self) -> None:
        self.stream.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if not (self._tcp_eof and self._hbone_eof) or exc is not None:
            if self.error is None:
                self.error = str(exc) if exc else "TCP connection closed early"
            self.stream.abort()
        if not self.done.done():
            self.done.set_result(RelayResult(self.sent, self.received, self.error))

    # HBONE side (StreamSink) -----------------------------------------------------------------------------

    def stream_data(self, data: memoryview) -> None:
        self.received += len(data)
        if self._transport is not None and not self._transport.is_closing():
            # ``data`` views the HBONE connection's reused receive buffer. asyncio's transport copies what it
            # cannot send at once, but uvloop's keeps a reference to the buffer until libuv has written it,
            # so the next read would overwrite queued bytes: hand it an immutable copy.
            self._transport.write(bytes(data))

    def stream_eof(self) -> None:
        self._hbone_eof = True
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write_eof()
        self._maybe_close()

    def stream_failed(self, exc: HboneError) -> None:
        self._abort_tcp(str(exc))

    # -------------------------------------------------------------------------------------------------------

    def _abort_tcp(self, reason: str) -> None:
        if self.error is None:
            self.error = reason
        if self._transport is not None:
            _rst(self._transport)

    def _maybe_close(self) -> None:
        if self._tcp_eof and self._hbone_eof and self._transport is not None:
            self._transport.close()


async def relay(sock: socket.socket, stream: HboneStream) -> RelayResult:
    """Relay a connected TCP socket and an open HBONE stream until both directions end; owns ``sock``.

    Cancelling the relay aborts both sides.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[RelayResult] = loop.create_future()
    side = _TcpSide(stream, done)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await loop.connect_accepted_socket(lambda: side, sock)
    except BaseException:
        sock.close()
        stream.abort()
        raise
    try:
        return await asyncio.shield(done)
    except asyncio.CancelledError:
        side._abort_tcp("relay cancelled")
        stream.abort()
        raise


async def relay_streams(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, stream: HboneStream
) -> RelayResult:
    """The same as :func:`relay` for an asyncio stream pair (slower: a coroutine per direction)."""
    sent = received = 0
    error: str | None = None

    async def up() -> None:
        nonlocal sent
        while chunk := await reader.read(TCP_READ_BUFFER):
            sent += len(chunk)
            await stream.send(chunk)
        stream.write_eof()

    async def down() -> None:
        nonlocal received
        while chunk := await stream.read():
            received += len(chunk)
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(up())
            group.create_task(down())
    except* (HboneError, OSError) as exc:
        error = str(exc.exceptions[0])
        stream.abort()
        _rst(writer.transport)
    finally:
        writer.close()
    return RelayResult(sent, received, error)
