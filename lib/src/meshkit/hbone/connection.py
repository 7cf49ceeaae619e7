"""The asyncio shell around :class:`~meshkit.hbone.core.HboneCore`: one TLS connection, many streams.

:class:`HboneConnection` is an ``asyncio.BufferedProtocol`` so that the SSL layer decrypts straight into our
reused 256 KiB buffer (python-perf.md §3a: ``Protocol`` makes asyncio allocate a fresh 256 KiB ``bytes`` per
``SSL_read``, which halves throughput under glibc malloc). Received DATA is handed to streams as views of that
buffer. All writes of one event batch go out as one ``transport.write``, so a DATA frame header always shares
its TLS record with its payload (§3d).

Lifetime: ``connection_made`` checks the peer identity (``verify``; on failure the transport is aborted and
``error`` says why), sends the preface and starts the PING keepalive (behaviour.md §2.5: every 10 s, dropped
after 20 s without an answer). ``connection_lost`` fails every open stream with ``ConnectionClosed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
from collections.abc import Callable
from typing import Any, cast

import h2.exceptions

from meshkit.hbone import events as ev
from meshkit.hbone import tls
from meshkit.hbone.core import HboneCore
from meshkit.hbone.errors import ConnectionClosed, HboneError, StreamReset
from meshkit.hbone.settings import HboneSettings
from meshkit.hbone.stream import HboneStream
from meshkit.identity.spiffe import Identity
from meshkit.logs import kv

__all__ = ["HboneConnection"]

log = logging.getLogger("hbone")

READ_BUFFER = 256 * 1024
#: answers (PING/SETTINGS acks, RST_STREAM, error responses) we queue for a peer that does not read before we
#: stop reading it; legitimate peers produce a few hundred bytes of these per window
CONTROL_SLACK = 256 * 1024
Verify = Callable[[ssl.SSLObject], Identity]
RequestCallback = Callable[[HboneStream], None]


def _tune_socket(sock: socket.socket | None) -> None:
    """ztunnel's TCP options (behaviour.md §2.8): TCP_NODELAY; keepalive 180 s / 180 s / 9 probes."""
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError, ValueError):  # uvloop's pseudo-socket: ValueError once the fd is gone
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 180)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 180)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 9)


class HboneConnection(asyncio.BufferedProtocol):
    """One HBONE connection (client or server side) over an asyncio (TLS) transport."""

    def __init__(
        self,
        client_side: bool,
        settings: HboneSettings | None = None,
        *,
        verify: Verify | None = None,
        on_request: RequestCallback | None = None,
        on_open: Callable[[HboneConnection], None] | None = None,
        on_close: Callable[[HboneConnection], None] | None = None,
        on_stream_count: Callable[[HboneConnection], None] | None = None,
        name: str = "hbone",
    ) -> None:
        self.settings = settings or HboneSettings()
        self.core = HboneCore(client_side, self.settings)
        self.name = name
        self.peer_identity: Identity | None = None
        self.peer_address: tuple[str, int] = ("", 0)
        self.local_address: tuple[str, int] = ("", 0)
        self.error: BaseException | None = None
        self.streams: dict[int, HboneStream] = {}
        self.closed = False
        self._verify = verify
        self._on_request = on_request
        self._on_open = on_open
        self._on_close = on_close
        self._on_stream_count = on_stream_count
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray(READ_BUFFER)
        self._view = memoryview(self._buf)
        self._write_paused = False
        self._paused_at = 0  # transport buffer size when writing was paused
        self._read_paused = False  # by _limit_control_output
        self._receiving = False
        self._blocked: dict[HboneStream, None] = {}
        self._lost: asyncio.Future[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._ping_timer: asyncio.TimerHandle | None = None
        self._ping_deadline: asyncio.TimerHandle | None = None
        self._ping_opaque = b""

    # -- transport callbacks ----------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio subclasses
        loop = asyncio.get_running_loop()
        self._transport = transport
        self._lost = loop.create_future()
        if self._on_open is not None:
            # not at construction: a protocol whose TLS handshake fails never sees connection_made (nor
            # connection_lost), so only connections that exist are registered
            self._on_open(self)
        _tune_socket(transport.get_extra_info("socket"))
        peer = transport.get_extra_info("peername") or ("", 0)
        local = transport.get_extra_info("sockname") or ("", 0)
        self.peer_address, self.local_address = (peer[0], peer[1]), (local[0], local[1])
        sslobj = transport.get_extra_info("ssl_object")
        if self._verify is not None:
            try:
                self.peer_identity = self._check_peer(sslobj, self._verify)
            except Exception as exc:
                self.error = exc
                self.closed = True
                log.warning("HBONE peer rejected", extra=kv(conn=self.name, peer=peer, error=str(exc)))
                transport.abort()
                return
        self.core.initiate()
        self._flush()
        self._schedule_ping()

    @staticmethod
    def _check_peer(sslobj: ssl.SSLObject | None, verify: Verify) -> Identity:
        if sslobj is None:
            raise HboneError("HBONE needs TLS")
        if sslobj.selected_alpn_protocol() != "h2":
            raise HboneError(f"peer did not negotiate ALPN h2 ({sslobj.selected_alpn_protocol()})")
        tls.check_negotiated(sslobj)
        return verify(sslobj)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        events = self.core.receive_data(self._view[:nbytes])
        if events:
            # writes made while handling (echoes, relayed bytes, WINDOW_UPDATEs) go out in one batch below
            self._receiving = True
            try:
                self._handle(events)
            finally:
                self._receiving = False
        self._flush()
        if self._write_paused:
            self._limit_control_output()

    def _limit_control_output(self) -> None:
        """While the peer does not read, stop reading it once our answers to it pile up.

        Write-paused, we queue no DATA in the transport (streams keep it, within their limits), but every
        PING, SETTINGS or bad request the peer sends still gets an answer: a peer that sends those and never
        reads would grow our buffer without bound. Past CONTROL_SLACK of such output we read no more from it
        (TCP pushes back) until it reads. Not on the first paused byte: both sides pausing reads while both
        have DATA to send would deadlock.
        """
        transport = self._transport
        if transport is None or self._read_paused:
            return
        if transport.get_write_buffer_size() > self._paused_at + CONTROL_SLACK:
            self._read_paused = True
            transport.pause_reading()

    def eof_received(self) -> bool | None:
        return False

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._transport is not None:
            self._paused_at = self._transport.get_write_buffer_size()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._read_paused:
            self._read_paused = False
            if self._transport is not None and not self._transport.is_closing():
                self._transport.resume_reading()
        self._unblock()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_ping()
        if self.error is None and exc is not None:
            self.error = exc
        for stream in list(self.streams.values()):
            stream._connection_lost(exc)
        self.streams.clear()
        self._blocked.clear()
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        if self._on_close is not None:
            self._on_close(self)

    # -- public -----------------------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        """Can carry a new stream: open, no GOAWAY either way."""
        core = self.core
        return not (self.closed or core.closed or core.goaway_received or core.goaway_sent)

    @property
    def active_streams(self) -> int:
        return len(self.streams)

    def open_stream(self, authority: str, headers: list[tuple[str, str]] | None = None) -> HboneStream:
        """Client: send CONNECT for ``authority``; ``await stream.response()`` for the answer."""
        if not self.usable:
            raise ConnectionClosed(f"HBONE connection {self.name} is not usable")
        sid = self.core.connect(authority, headers or [])
        stream = HboneStream(self, sid)
        self.streams[sid] = stream
        self._flush()
        return stream

    def respond(self, stream: HboneStream, status: int, headers: list[tuple[str, str]] | None = None) -> None:
        """Server: answer the CONNECT on ``stream``; a non-200 answer finishes the stream."""
        if self.closed or stream.finished:
            return
        stream.status = status
        self.core.respond(stream.stream_id, status, headers or [])
        self._flush()
        if status != 200:
            stream._fail(StreamReset(0, remote=False))

    def close(self, code: int = 0) -> None:
        """GOAWAY, then close the transport once written."""
        if self._transport is None or self._transport.is_closing():
            return
        self.closed = True
        self.core.close(code)
        self._flush()
        self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def goaway(self) -> None:
        """Drain: tell the peer to open no new streams, finish the current ones, then close."""
        self.core.close(0)
        self._flush()
        if not self.streams:
            self.close()

    async def wait_closed(self) -> None:
        if self._lost is not None:
            await asyncio.shield(self._lost)

    # -- stream plumbing (called by HboneStream) -----------------------------------------------------------

    def _flush(self) -> None:
        if self.core.has_output:
            out = self.core.take_output()
            transport = self._transport
            if transport is not None and not transport.is_closing():
                # one buffer per frame: each DATA header still shares its TLS record with its payload, and
                # several frames are not joined (copied) into one buffer first
                if len(out) == 1:
                    transport.write(out[0])
                else:
                    transport.writelines(out)

    def _acknowledge(self, stream_id: int, n: int) -> None:
        if not self.closed:
            self.core.acknowledge(stream_id, n)
            if not self._receiving:
                self._flush()

    def _stream_write(self, stream: HboneStream, data: bytes | bytearray | memoryview) -> None:
        if stream.pending or self._write_paused:
            stream.pending.append(data)
            self._blocked[stream] = None
            return
        core = self.core
        sent = core.send_some(stream.stream_id, data)
        if sent and not self._receiving:
            self._flush()
        if sent < len(data):
            stream.pending.append(memoryview(data)[sent:])
            self._blocked[stream] = None

    def _stream_write_eof(self, stream: HboneStream) -> None:
        if stream.pending:
            self._blocked[stream] = None
            return
        self.core.end_stream(stream.stream_id)
        self._flush()
        stream._eof_sent()

    def _stream_reset(self, stream: HboneStream, code: int) -> None:
        self._blocked.pop(stream, None)
        if not self.closed:
            self.core.reset_stream(stream.stream_id, code)
            self._flush()

    def _stream_finished(self, stream: HboneStream) -> None:
        self._blocked.pop(stream, None)
        if self.streams.pop(stream.stream_id, None) is None:
            return
        if self._on_stream_count is not None:
            self._on_stream_count(self)
        if not self.streams and (self.core.goaway_received or self.core.goaway_sent):
            self.close()

    def _unblock(self) -> None:
        """Send what waits in stream buffers, as far as windows allow, oldest first."""
        if not self._blocked or self._write_paused:
            return
        core = self.core
        for stream in list(self._blocked):
            sid = stream.stream_id
            pending = stream.pending
            window = core.send_window(sid)
            while pending and window > 0:
                chunk = pending.take(window)
                core.send_data(sid, chunk)
                window -= len(chunk)
            if not pending:
                del self._blocked[stream]
                if stream._eof_pending:
                    core.end_stream(sid)
                    stream._eof_sent()
            stream._writable()

    # -- events -----------------------------------------------------------------------------------------

    def _handle(self, events: list[ev.Event]) -> None:
        streams = self.streams
        for event in events:
            if type(event) is ev.DataReceived:
                stream = streams.get(event.stream_id)
                if stream is not None:
                    stream._data_received(event.data)
                else:
                    self.core.acknowledge(event.stream_id, len(event.data))
            else:
                self._handle_other(event)

    def _handle_other(self, event: ev.Event) -> None:
        if isinstance(event, ev.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream._eof_received()
        elif isinstance(event, ev.WindowUpdated):
            self._unblock()
        elif isinstance(event, ev.ResponseReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream._response_received(event.status, event.headers)
        elif isinstance(event, ev.RequestReceived):
            stream = HboneStream(self, event.stream_id, event.headers)
            self.streams[event.stream_id] = stream
            if self._on_request is None:
                self.core.reset_stream(event.stream_id)
                stream._fail(StreamReset(0, remote=False))
            else:
                self._on_request(stream)
        elif isinstance(event, ev.StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream._fail(StreamReset(event.error_code, remote=event.remote))
        elif isinstance(event, ev.PingAcked):
            if event.opaque == self._ping_opaque and self._ping_deadline is not None:
                self._ping_deadline.cancel()
                self._ping_deadline = None
                self._schedule_ping()
        elif isinstance(event, ev.SettingsChanged):
            if self._on_stream_count is not None:
                self._on_stream_count(self)
        elif isinstance(event, ev.ConnectionTerminated):
            self._terminated(event)

    def _terminated(self, event: ev.ConnectionTerminated) -> None:
        log.info(
            "HBONE connection terminated",
            extra=kv(conn=self.name, code=event.error_code, remote=event.remote, reason=event.reason),
        )
        if self._on_stream_count is not None:
            self._on_stream_count(self)  # no longer usable: the pool forgets it
        if not event.remote:
            # We found a protocol error: the GOAWAY is queued; write it and close.
            self.error = HboneError(f"HTTP/2 protocol error {event.error_code}: {event.reason}")
            self._flush()
            if self._transport is not None:
                self._transport.close()
            return
        for sid, stream in list(self.streams.items()):
            if event.error_code or (self.core.client_side and sid > event.last_stream_id):
                stream._fail(ConnectionClosed(f"GOAWAY code {event.error_code} from peer"))
        if not self.streams and self._transport is not None:
            self._transport.close()

    # -- keepalive --------------------------------------------------------------------------------------

    def _schedule_ping(self) -> None:
        interval = self.settings.keepalive_interval
        if interval > 0 and not self.closed:
            self._ping_timer = asyncio.get_running_loop().call_later(interval, self._send_ping)

    def _send_ping(self) -> None:
        if self.closed:
            return
        self._ping_opaque = os.urandom(8)
        try:
            self.core.ping(self._ping_opaque)
        except h2.exceptions.ProtocolError:
            self.abort()
            return
        self._flush()
        loop = asyncio.get_running_loop()
        self._ping_deadline = loop.call_later(self.settings.keepalive_timeout, self._ping_timed_out)

    def _ping_timed_out(self) -> None:
        log.warning("HBONE keepalive timed out", extra=kv(conn=self.name, peer=self.peer_address))
        self.error = ConnectionClosed("keepalive PING unanswered")
        self.abort()

    def _cancel_ping(self) -> None:
        for handle in (self._ping_timer, self._ping_deadline):
            if handle is not None:
                handle.cancel()
        self._ping_timer = self._ping_deadline = None

    def extra(self, name: str) -> Any:
        return None if self._transport is None else self._transport.get_extra_info(name)
