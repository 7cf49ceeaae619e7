"""One HBONE tunnel (an HTTP/2 CONNECT stream) as a byte stream, owned by an :class:`HboneConnection`.

Two ways to consume received bytes:

- **buffered** (default): ``await stream.read()``; the peer's window reopens only as bytes are read, so a slow
  reader holds at most one stream window (4 MiB) in memory;
- **sink**: :meth:`HboneStream.set_sink` hands each received chunk (a memoryview, valid only during the
  call) to a callback object, which :func:`~meshkit.hbone.relay.relay` uses to write straight into a TCP
  transport; the sink pauses window updates (:meth:`pause_reading`) while its own output is congested.

Sending: :meth:`write` never blocks; bytes beyond the send window wait in the stream (``pending``) and
:meth:`drain` waits until that is below the side's send-buffer limit (client 4 MiB, server 400 KiB).
:meth:`write_eof` sends END_STREAM after the pending bytes; :meth:`abort` sends RST_STREAM at once.
Half-close works both ways: a stream is finished when both sides ended, or when it was reset.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from h2.errors import ErrorCodes

from meshkit.hbone.errors import ConnectFailed, ConnectionClosed, HboneError, StreamReset

if TYPE_CHECKING:
    from meshkit.hbone.connection import HboneConnection

__all__ = ["HboneStream", "StreamSink"]


class SendQueue:
    """Bytes waiting for send window: a queue of chunks, so queued ``bytes`` are never copied again."""

    __slots__ = ("chunks", "size")

    def __init__(self) -> None:
        self.chunks: deque[bytes | memoryview] = deque()
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def __bool__(self) -> bool:
        return self.size > 0

    def append(self, data: bytes | bytearray | memoryview) -> None:
        # bytes (and views of bytes) are immutable and kept as they are; anything else may be reused by the
        # caller once write() returns: copy it
        chunk: bytes | memoryview
        if isinstance(data, bytes) or (isinstance(data, memoryview) and type(data.obj) is bytes):
            chunk = data
        else:
            chunk = bytes(data)
        if chunk:
            self.chunks.append(chunk)
            self.size += len(chunk)

    def take(self, limit: int) -> bytes | memoryview:
        """Up to ``limit`` bytes from the head (never spanning chunks)."""
        head = self.chunks[0]
        if len(head) <= limit:
            self.chunks.popleft()
        else:
            view = memoryview(head)
            self.chunks[0] = view[limit:]
            head = view[:limit]
        self.size -= len(head)
        return head

    def clear(self) -> None:
        self.chunks.clear()
        self.size = 0


class StreamSink(Protocol):
    """Receives a stream's bytes synchronously (see :meth:`HboneStream.set_sink`)."""

    def stream_data(self, data: memoryview) -> None: ...

    def stream_eof(self) -> None: ...

    def stream_failed(self, exc: HboneError) -> None: ...


class HboneStream:
    """A bidirectional byte stream over one HTTP/2 CONNECT stream."""

    def __init__(
        self, conn: HboneConnection, stream_id: int, headers: tuple[tuple[str, str], ...] = ()
    ) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.request_headers = headers
        self.response_headers: tuple[tuple[str, str], ...] = ()
        self.status = 0
        self.bytes_received = 0
        self.bytes_sent = 0
        self._loop = asyncio.get_running_loop()
        self._response: asyncio.Future[int] | None = None
        self._rbuf = bytearray()
        self._reof = False
        self._rwaiter: asyncio.Future[None] | None = None
        self._sink: StreamSink | None = None
        self._acks_paused = False
        self._unacked = 0
        self._window_released = False  # after a failure: unread bytes no longer hold connection window
        self.pending = SendQueue()
        settings = conn.settings
        # behaviour.md §2.5: the client buffers up to a stream window, the server 400 KiB
        self._send_limit = (
            settings.client_max_send_buffer if conn.core.client_side else settings.max_send_buffer
        )
        self._eof_pending = False
        self._sent_eof = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._on_writable: Callable[[], None] | None = None
        self._error: HboneError | None = None
        self._done: asyncio.Future[None] = self._loop.create_future()

    def __repr__(self) -> str:
        return f"<HboneStream {self.stream_id} on {self.conn.name}>"

    # -- state ------------------------------------------------------------------------------------------

    @property
    def error(self) -> HboneError | None:
        return self._error

    @property
    def finished(self) -> bool:
        return self._done.done()

    async def wait_closed(self) -> None:
        """Wait until both directions ended or the stream was reset."""
        await asyncio.shield(self._done)

    def _maybe_finish(self) -> None:
        if self._reof and self._sent_eof and not self._done.done():
            self._done.set_result(None)
            self.conn._stream_finished(self)

    # -- client: the CONNECT answer ---------------------------------------------------------------------

    async def response(self) -> int:
        """Client: wait for the answer to CONNECT; raise :class:`ConnectFailed` unless it is 200."""
        if self._response is None:
            self._response = self._loop.create_future()
            if self.status:
                self._response.set_result(self.status)
            elif self._error is not None:
                self._response.set_exception(self._error)
        status = await self._response
        if status != 200:
            raise ConnectFailed(f"http status: {status}", status)
        return status

    def _response_received(self, status: int, headers: tuple[tuple[str, str], ...]) -> None:
        self.status = status
        self.response_headers = headers
        if self._response is not None and not self._response.done():
            self._response.set_result(status)

    # -- receiving --------------------------------------------------------------------------------------

    def set_sink(self, sink: StreamSink) -> None:
        """Deliver received bytes to ``sink`` from now on (bytes already buffered go first)."""
        self._sink = sink
        if self._rbuf:
            data, self._rbuf = self._rbuf, bytearray()
            sink.stream_data(memoryview(data))
            self._ack(len(data))
        if self._reof:
            sink.stream_eof()
        elif self._error is not None:
            sink.stream_failed(self._error)

    def pause_reading(self) -> None:
        """Stop reopening the peer's window (sink mode): the peer stops after one window."""
        self._acks_paused = True

    def resume_reading(self) -> None:
        self._acks_paused = False
        if self._unacked:
            n, self._unacked = self._unacked, 0
            self.conn._acknowledge(self.stream_id, n)

    def _ack(self, n: int) -> None:
        if self._window_released:
            return
        if self._acks_paused:
            self._unacked += n
        else:
            self.conn._acknowledge(self.stream_id, n)

    def _data_received(self, data: memoryview) -> None:
        n = len(data)
        self.bytes_received += n
        if self._sink is not None:
            self._sink.stream_data(data)
            self._ack(n)
            return
        self._rbuf += data
        self._wake_reader()

    def _eof_received(self) -> None:
        self._reof = True
        if self._sink is not None:
            self._sink.stream_eof()
        self._wake_reader()
        self._maybe_finish()

    def _wake_reader(self) -> None:
        waiter = self._rwaiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read(self, n: int = 256 * 1024) -> bytes:
        """Up to ``n`` bytes; ``b""`` at END_STREAM; raises if the stream was reset or the connection lost."""
        while not self._rbuf:
            if self._reof:
                return b""
            if self._error is not None:
                raise self._error
            self._rwaiter = self._loop.create_future()
            try:
                await self._rwaiter
            finally:
                self._rwaiter = None
        if n >= len(self._rbuf):
            data = bytes(self._rbuf)
            self._rbuf.clear()
        else:
            data = bytes(self._rbuf[:n])
            del self._rbuf[:n]
        if not self._window_released:
            self.conn._acknowledge(self.stream_id, len(data))
        return data

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes, or IncompleteReadError at END_STREAM."""
        while len(self._rbuf) < n and not self._reof and self._error is None:
            self._rwaiter = self._loop.create_future()
            try:
                await self._rwaiter
            finally:
                self._rwaiter = None
        if len(self._rbuf) >= n:
            return await self.read(n)
        out = bytearray()
        while len(out) < n:
            chunk = await self.read(n - len(out))
            if not chunk:
                raise asyncio.IncompleteReadError(bytes(out), n)
            out += chunk
        return bytes(out)

    # -- sending ----------------------------------------------------------------------------------------

    @property
    def write_ready(self) -> bool:
        """False while more than the send-buffer limit waits to be sent: the producer should pause."""
        return self.pending.size < self._send_limit

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` (never blocks; excess waits in ``pending``). Raises if the stream is closed."""
        if self._error is not None:
            raise self._error
        if self._eof_pending or self._sent_eof:
            raise HboneError("write after write_eof")
        if data:
            self.bytes_sent += len(data)
            self.conn._stream_write(self, data)

    async def drain(self) -> None:
        """Wait until the pending bytes are below the send-buffer limit (or raise the stream's error)."""
        while not self.write_ready:
            if self._error is not None:
                raise self._error
            self._drain_waiter = self._loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None
        if self._error is not None:
            raise self._error

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        self.write(data)
        await self.drain()

    def when_writable(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once when ``write_ready`` becomes true again (sink-mode producers)."""
        self._on_writable = callback

    def _writable(self) -> None:
        if not self.write_ready:
            return
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        callback, self._on_writable = self._on_writable, None
        if callback is not None:
            callback()

    def write_eof(self) -> None:
        """Half-close: END_STREAM once the pending bytes are sent. Idempotent."""
        if self._eof_pending or self._sent_eof or self._error is not None:
            return
        self._eof_pending = True
        self.conn._stream_write_eof(self)

    def _eof_sent(self) -> None:
        self._eof_pending = False
        self._sent_eof = True
        self._maybe_finish()

    def abort(self, code: int = ErrorCodes.CANCEL) -> None:
        """Reset the stream (RST_STREAM ``code``) both ways; pending bytes are dropped."""
        if self._done.done():
            return
        self.conn._stream_reset(self, code)
        self._fail(StreamReset(code, remote=False))

    def _fail(self, exc: HboneError) -> None:
        if self._done.done():
            return
        self._error = exc
        self.pending.clear()
        # Bytes received but not yet consumed hold connection window. No more can arrive on this stream, so
        # give the window back now (they stay readable): else every stream reset with unread data would
        # shrink the pooled connection's window for good, until its peer stalls.
        unconsumed = len(self._rbuf) + self._unacked
        self._unacked = 0
        self._window_released = True
        if unconsumed:
            self.conn._acknowledge(self.stream_id, unconsumed)
        if self._response is not None and not self._response.done():
            self._response.set_exception(exc)
        if self._sink is not None:
            self._sink.stream_failed(exc)
        self._wake_reader()
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        callback, self._on_writable = self._on_writable, None
        if callback is not None:
            callback()
        self._done.set_result(None)
        self.conn._stream_finished(self)

    def _connection_lost(self, exc: BaseException | None) -> None:
        self._fail(ConnectionClosed(f"HBONE connection {self.conn.name} closed: {exc or 'EOF'}"))
