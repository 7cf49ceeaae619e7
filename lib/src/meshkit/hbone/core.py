"""Sans-IO HBONE connection core: HTTP/2 over ``h2.H2Connection`` with hand-written DATA fast paths.

One :class:`HboneCore` is one HTTP/2 connection (client or server side). It does no I/O: feed it received
bytes with :meth:`HboneCore.receive_data` (it returns :mod:`events <meshkit.hbone.events>`) and write what
:meth:`HboneCore.data_to_send` returns.

Why not plain h2: h2 copies every DATA payload several times and, in 4.4.1, hexlifies it for a trace log
(python-perf.md §3b, §3h). So DATA frames bypass h2 in both directions; h2 keeps everything else (HEADERS and
HPACK, SETTINGS, WINDOW_UPDATE, PING, RST_STREAM, GOAWAY, stream state):

- **Receive.** We split the byte stream into frames ourselves. A DATA frame for a stream that is open for
  receiving (and not inside a header block, not PADDED) is delivered as memoryview slices of the caller's
  buffer, even across reads, without copies. We own inbound flow control for those frames: we enforce the
  window we advertised (FLOW_CONTROL_ERROR otherwise) and send our own WINDOW_UPDATEs once half a window has
  been *consumed* (:meth:`HboneCore.acknowledge`), so a slow consumer stops the peer. END_STREAM on a fast
  frame reaches h2 as a synthesized empty DATA frame, so h2's stream state stays right and h2's windows are
  untouched. Every other frame goes to h2 whole, including DATA on unknown or closed streams, so h2 gives
  the RFC's answer (RST_STREAM or GOAWAY).
- **Send.** We frame DATA by hand (header and payload in one buffer, so they share a TLS record, §3d; only
  payloads of 64 KiB or more that are immutable go out as a separate buffer, uncopied) and decrement h2's
  outbound windows on the connection and the stream, which h2 then raises on WINDOW_UPDATE.
- **Errors.** A malformed request, or one past SETTINGS_MAX_CONCURRENT_STREAMS, is a stream error; a graceful
  GOAWAY (ours or the peer's) lets open streams finish, which h2 alone would not allow.

Invariants: output order is preserved (h2's pending bytes are always taken before we append ours); after a
connection error the core sends GOAWAY once and ignores further input; a header block (HEADERS without
END_HEADERS plus CONTINUATIONs) larger than twice the max header list size is ENHANCE_YOUR_CALM.

This touches h2 internals (``outbound_flow_control_window`` on the connection and stream, ``streams``,
``max_inbound_frame_size``, ``decoder``, ``_data_to_send``, ``state_machine.state``,
``local_settings._settings``), so the h2 version is pinned and asserted here and the internals are covered by
``lib/tests/hbone/test_hbone_h2_internals.py``.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Iterable

import h2
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame
from h2.errors import ErrorCodes
from h2.settings import SettingCodes

from meshkit.hbone import events as ev
from meshkit.hbone.errors import HboneError
from meshkit.hbone.frames import (
    DEFAULT_WINDOW,
    F_END_HEADERS,
    F_END_STREAM,
    F_PADDED,
    FRAME_HEADER_SIZE,
    HDR,
    PREFACE,
    T_CONTINUATION,
    T_DATA,
    T_HEADERS,
    T_PUSH_PROMISE,
    frame_header,
    malformed_request,
    status_of,
    str_headers,
)
from meshkit.hbone.settings import HboneSettings

__all__ = ["H2_VERSION", "PREFACE", "FlowControlViolation", "HboneCore", "frame_header"]

#: payloads at least this big, when immutable, are written without being copied behind their frame header
ZERO_COPY_MIN = 64 * 1024

H2_VERSION = "4.4.1"
if h2.__version__ != H2_VERSION:  # pragma: no cover - guarded by the lock file
    raise ImportError(
        f"meshkit.hbone needs h2=={H2_VERSION} (its fast paths use h2 internals), got {h2.__version__}"
    )


def _data_body_repr(self: hyperframe.frame.DataFrame) -> str:
    return f"<{len(self.data)} bytes>"


# h2 4.4.1 repr()s every received frame for a trace log even when logging is off, and DataFrame's repr
# hexlifies the whole payload (python-perf.md §3b). Our fast path keeps DATA away from h2, but not all of it.
hyperframe.frame.DataFrame._body_repr = _data_body_repr  # type: ignore[method-assign,assignment]


class FlowControlViolation(Exception):
    """A caller tried to send more than the peer's flow-control window allows (a bug in the caller)."""


class _Recv:
    """Inbound flow-control state of one stream that is open for receiving."""

    __slots__ = ("unacked", "window")

    def __init__(self, window: int) -> None:
        self.window = window
        self.unacked = 0


class HboneCore:
    """One HBONE HTTP/2 connection, client or server side, without I/O."""

    def __init__(self, client_side: bool, settings: HboneSettings | None = None) -> None:
        s = settings or HboneSettings()
        self.client_side = client_side
        self.settings = s
        # The server validates requests itself (frames.malformed_request) so that a malformed request is the
        # stream error RFC 9113 §8.1.1 requires; h2 would make it a connection error, killing every tunnel.
        config = h2.config.H2Configuration(
            client_side=client_side, header_encoding="utf-8", validate_inbound_headers=client_side
        )
        self._h2 = h2.connection.H2Connection(config)
        local: dict[SettingCodes, int] = {
            SettingCodes.INITIAL_WINDOW_SIZE: s.stream_window,
            SettingCodes.MAX_FRAME_SIZE: s.max_frame_size,
        }
        if client_side:
            local[SettingCodes.ENABLE_PUSH] = 0
            local[SettingCodes.MAX_HEADER_LIST_SIZE] = s.client_max_header_list
        else:
            local[SettingCodes.MAX_CONCURRENT_STREAMS] = s.server_max_concurrent_streams
            local[SettingCodes.MAX_HEADER_LIST_SIZE] = s.server_max_header_list
        # Set before initiate_connection so the first SETTINGS frame carries them; h2 reads the frame size
        # and header-list limit at construction time, so they are set on the objects too.
        self._h2.local_settings = h2.settings.Settings(client=client_side, initial_values=local)
        self._h2.max_inbound_frame_size = s.max_frame_size
        self._h2.decoder.max_header_list_size = local[SettingCodes.MAX_HEADER_LIST_SIZE]
        self._max_frame = s.max_frame_size
        self._max_block = 2 * local[SettingCodes.MAX_HEADER_LIST_SIZE]
        self._out: list[bytes] = []
        self._recv: dict[int, _Recv] = {}
        self._send_open: set[int] = set()
        self._conn_window = s.connection_window
        self._conn_unacked = 0
        # a WINDOW_UPDATE once half a window was consumed, as h2's own WindowManager does
        self._conn_threshold = s.connection_window // 2
        self._stream_threshold = s.stream_window // 2
        # parser state
        self._preface_left = 0 if client_side else len(PREFACE)
        self._hdr = bytearray()
        self._whole: bytearray | None = None
        self._whole_need = 0
        self._data_sid = 0
        self._data_left = 0
        self._data_end = False
        self._in_block = False
        self._block_bytes = 0
        self.closed = False  # dead: a fatal GOAWAY was sent; input is ignored
        self.goaway_sent = False  # graceful drain: no new inbound streams, current ones finish
        self.goaway_received = False
        self._goaway_last = 0

    # -- setup ------------------------------------------------------------------------------------------

    def initiate(self) -> None:
        """Queue the preface (client), our SETTINGS and the WINDOW_UPDATE opening the connection window."""
        self._h2.initiate_connection()
        if not self.client_side:
            # h2 answers a stream past SETTINGS_MAX_CONCURRENT_STREAMS with a connection error; RFC 9113
            # §5.1.2 wants a stream error (the client may retry). So h2's own limit is lifted once SETTINGS
            # advertising ours are queued, and _translate enforces the advertised value itself.
            self._h2.local_settings._settings[SettingCodes.MAX_CONCURRENT_STREAMS][0] = 2**31 - 1
        if self.settings.connection_window > DEFAULT_WINDOW:
            self._h2.increment_flow_control_window(self.settings.connection_window - DEFAULT_WINDOW)

    # -- introspection ----------------------------------------------------------------------------------

    @property
    def open_outbound_streams(self) -> int:
        return int(self._h2.open_outbound_streams)

    @property
    def open_inbound_streams(self) -> int:
        return int(self._h2.open_inbound_streams)

    @property
    def peer_max_concurrent_streams(self) -> int:
        return int(self._h2.remote_settings.max_concurrent_streams)

    @property
    def max_outbound_frame_size(self) -> int:
        return int(self._h2.max_outbound_frame_size)

    def send_window(self, stream_id: int) -> int:
        """Bytes we may send on ``stream_id`` now: min(connection, stream) window; 0 if not sendable."""
        if stream_id not in self._send_open:
            return 0
        stream = self._h2.streams.get(stream_id)
        if stream is None:
            return 0
        return min(int(self._h2.outbound_flow_control_window), int(stream.outbound_flow_control_window))

    def can_send(self, stream_id: int) -> bool:
        return stream_id in self._send_open

    def receiving(self, stream_id: int) -> bool:
        return stream_id in self._recv

    # -- sending ----------------------------------------------------------------------------------------

    def _take_h2(self) -> None:
        if self._h2._data_to_send:  # peek first: data_to_send() allocates even when empty
            self._out.append(self._h2.data_to_send())

    @property
    def has_output(self) -> bool:
        return bool(self._out or self._h2._data_to_send)

    def take_output(self) -> list[bytes]:
        """Like :meth:`data_to_send` but as a list of buffers (whole frames), without joining them."""
        out = self._out
        if self._h2._data_to_send:
            out.append(self._h2.data_to_send())
        self._out = []
        return out

    def data_to_send(self) -> bytes:
        """Everything queued for the peer, in order; the caller writes it as one buffer."""
        out = self._out
        if not out:
            return self._h2.data_to_send() if self._h2._data_to_send else b""
        if self._h2._data_to_send:
            out.append(self._h2.data_to_send())
        self._out = []
        return out[0] if len(out) == 1 else b"".join(out)

    def connect(self, authority: str, headers: Iterable[tuple[str, str]] = ()) -> int:
        """Client: open a CONNECT stream to ``authority`` (``ip:port``); returns its stream id."""
        if self.closed or self.goaway_received or self.goaway_sent:
            raise HboneError("connection is going away: no new streams")
        stream_id = int(self._h2.get_next_available_stream_id())
        request = [(":method", "CONNECT"), (":authority", authority), *headers]
        try:
            self._h2.send_headers(stream_id, request)
        except h2.exceptions.TooManyStreamsError as exc:
            raise HboneError(f"peer's max concurrent streams reached: {exc}") from None
        self._send_open.add(stream_id)
        return stream_id

    def respond(self, stream_id: int, status: int, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Server: answer a CONNECT. 200 opens the tunnel; any other status ends the stream.

        After a non-200 answer the request side is cancelled with RST_STREAM(NO_ERROR), as RFC 9113 §8.1
        allows, so the stream's resources are released at once.
        """
        response = [(":status", str(status)), *headers]
        if status == 200:
            self._h2.send_headers(stream_id, response)
            self._send_open.add(stream_id)
            return
        self._h2.send_headers(stream_id, response, end_stream=True)
        self.reset_stream(stream_id, ErrorCodes.NO_ERROR)

    def send_data(
        self, stream_id: int, data: bytes | bytearray | memoryview, end_stream: bool = False
    ) -> None:
        """Queue ``data`` as DATA frames; ``len(data)`` must not exceed :meth:`send_window`."""
        n = len(data)
        if n:
            stream = self._h2.streams.get(stream_id)
            if stream_id not in self._send_open or stream is None:
                raise FlowControlViolation(f"stream {stream_id} is not open for sending")
            if n > self._h2.outbound_flow_control_window or n > stream.outbound_flow_control_window:
                raise FlowControlViolation(f"{n} bytes exceed the send window of stream {stream_id}")
            self._take_h2()
            max_frame = self._h2.max_outbound_frame_size
            if n <= max_frame:
                self._append_frame(stream_id, data)
            else:
                view = memoryview(data)
                for off in range(0, n, max_frame):
                    self._append_frame(stream_id, view[off : off + max_frame])
            # h2 never sees these frames: keep its windows honest so WINDOW_UPDATEs add up (python-perf §3d).
            self._h2.outbound_flow_control_window -= n
            stream.outbound_flow_control_window -= n
        if end_stream:
            self.end_stream(stream_id)

    def send_some(self, stream_id: int, data: bytes | bytearray | memoryview) -> int:
        """Queue as much of ``data`` as the send window allows; returns how many bytes were queued."""
        stream = self._h2.streams.get(stream_id)
        if stream is None or stream_id not in self._send_open:
            return 0
        conn_window = self._h2.outbound_flow_control_window
        n = len(data)
        window = min(conn_window, stream.outbound_flow_control_window)
        if n > window:
            if window <= 0:
                return 0
            n = window
            data = memoryview(data)[:n]
        if n <= self._h2.max_outbound_frame_size and not self._h2._data_to_send:
            # the common case, kept short: one frame, nothing of h2's queued before it
            self._append_frame(stream_id, data)
            self._h2.outbound_flow_control_window = conn_window - n
            stream.outbound_flow_control_window -= n
        else:
            self.send_data(stream_id, data)
        return n

    def _append_frame(self, stream_id: int, chunk: bytes | bytearray | memoryview) -> None:
        n = len(chunk)
        header = HDR.pack(n >> 16, n & 0xFFFF, T_DATA, 0, stream_id)
        if n >= ZERO_COPY_MIN and _immutable(chunk):
            # A big immutable payload goes out as its own buffer, uncopied: its header costs one small extra
            # TLS record, far less than copying (and, under glibc's default thresholds, mmapping) a new
            # buffer per frame. Small payloads share one buffer with their header, hence one record (§3d).
            self._out.append(header)
            self._out.append(chunk)  # type: ignore[arg-type]  # bytes, or a view of bytes
        else:
            self._out.append(header + chunk)

    def end_stream(self, stream_id: int) -> None:
        """Half-close our side (END_STREAM): the peer reads EOF."""
        if stream_id in self._send_open:
            self._send_open.discard(stream_id)
            self._h2.end_stream(stream_id)

    def reset_stream(self, stream_id: int, code: int = ErrorCodes.CANCEL) -> None:
        """Abort the stream both ways with RST_STREAM(``code``). No-op if it is already closed."""
        self._send_open.discard(stream_id)
        self._recv.pop(stream_id, None)
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            self._h2.reset_stream(stream_id, code)

    def ping(self, opaque: bytes) -> None:
        self._h2.ping(opaque)

    def close(self, code: int = ErrorCodes.NO_ERROR, message: bytes | None = None) -> None:
        """Send GOAWAY. With NO_ERROR it is a graceful drain: streams already open go on; else fatal."""
        if self.closed or (self.goaway_sent and code == ErrorCodes.NO_ERROR):
            return
        self._goaway_last = int(self._h2.highest_inbound_stream_id)
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self._h2.close_connection(code, additional_data=message)
        self.goaway_sent = True
        if code == ErrorCodes.NO_ERROR:
            self._reopen_h2()
        else:
            self.closed = True

    def _reopen_h2(self) -> None:
        # h2's connection state machine goes to CLOSED on any GOAWAY and then refuses every frame, even for
        # streams that RFC 9113 §6.8 lets finish. We keep it OPEN and refuse new streams ourselves.
        states = h2.connection.ConnectionState
        self._h2.state_machine.state = states.CLIENT_OPEN if self.client_side else states.SERVER_OPEN

    def acknowledge(self, stream_id: int, n: int) -> None:
        """``n`` received bytes of ``stream_id`` were consumed: reopen windows at half-window granularity."""
        self._conn_unacked += n
        if self._conn_unacked >= self._conn_threshold:
            self._window_update(0, self._conn_unacked)
            self._conn_window += self._conn_unacked
            self._conn_unacked = 0
        recv = self._recv.get(stream_id)
        if recv is not None:
            recv.unacked += n
            if recv.unacked >= self._stream_threshold:
                self._window_update(stream_id, recv.unacked)
                recv.window += recv.unacked
                recv.unacked = 0

    def _window_update(self, stream_id: int, increment: int) -> None:
        self._take_h2()
        self._out.append(frame_header(4, 0x8, 0, stream_id) + struct.pack(">L", increment))

    # -- receiving --------------------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[ev.Event]:
        """Process bytes from the peer. DataReceived events hold views of ``data``: consume them at once."""
        if self.closed:
            return []
        mv = memoryview(data)
        n = len(mv)
        if n > FRAME_HEADER_SIZE and self._idle_parser():
            single = self._single_data_frame(mv, n)
            if single is not None:
                return single
        out: list[ev.Event] = []
        pos = 0
        try:
            if self._preface_left:
                k = min(self._preface_left, n)
                self._preface_left -= k
                self._feed(bytes(mv[:k]), out)
                pos = k
            while pos < n and not self.closed:
                if self._data_left:
                    k = min(self._data_left, n - pos)
                    out.append(ev.DataReceived(self._data_sid, mv[pos : pos + k]))
                    pos += k
                    self._data_left -= k
                    if not self._data_left and self._data_end:
                        self._end_fast_data(out)
                elif self._whole is not None:
                    k = min(self._whole_need, n - pos)
                    self._whole += mv[pos : pos + k]
                    pos += k
                    self._whole_need -= k
                    if not self._whole_need:
                        whole, self._whole = bytes(self._whole), None
                        self._dispatch_whole(whole, out)
                elif self._hdr or n - pos < FRAME_HEADER_SIZE:
                    k = min(FRAME_HEADER_SIZE - len(self._hdr), n - pos)
                    self._hdr += mv[pos : pos + k]
                    pos += k
                    if len(self._hdr) == FRAME_HEADER_SIZE:
                        header = bytes(self._hdr)
                        self._hdr.clear()
                        self._start_frame(header, 0, out)
                else:
                    self._start_frame(mv, pos, out)
                    pos += FRAME_HEADER_SIZE
        except _ConnectionError as exc:
            self._fail(exc.code, exc.reason, out)
        return out

    def _idle_parser(self) -> bool:
        """At a frame boundary with nothing partial buffered, outside any header block."""
        return (
            not (self._data_left or self._hdr or self._in_block or self._preface_left) and self._whole is None
        )

    def _single_data_frame(self, mv: memoryview, n: int) -> list[ev.Event] | None:
        """The request/response case: ``mv`` holds exactly one plain DATA frame of an open stream."""
        hi, lo, ftype, flags, sid = HDR.unpack_from(mv, 0)
        length = n - FRAME_HEADER_SIZE
        if ftype != T_DATA or flags & (F_END_STREAM | F_PADDED) or (hi << 16 | lo) != length:
            return None
        sid &= 0x7FFFFFFF
        if sid not in self._recv or length > self._max_frame:
            return None
        try:
            self._account(sid, length)
        except _ConnectionError as exc:
            failed: list[ev.Event] = []
            self._fail(exc.code, exc.reason, failed)
            return failed
        return [ev.DataReceived(sid, mv[FRAME_HEADER_SIZE:])]

    def _start_frame(self, buf: bytes | memoryview, off: int, out: list[ev.Event]) -> None:
        hi, lo, ftype, flags, sid = HDR.unpack_from(buf, off)
        length = hi << 16 | lo
        sid &= 0x7FFFFFFF
        if length > self._max_frame:
            raise _ConnectionError(
                ErrorCodes.FRAME_SIZE_ERROR, f"frame of {length} bytes exceeds max frame size"
            )
        if ftype == T_DATA and not flags & F_PADDED and not self._in_block and sid in self._recv:
            self._account(sid, length)
            self._data_sid, self._data_left, self._data_end = sid, length, bool(flags & F_END_STREAM)
            if not length and self._data_end:
                self._end_fast_data(out)
            return
        header = bytes(buf[off : off + FRAME_HEADER_SIZE])
        if length:
            self._whole, self._whole_need = bytearray(header), length
        else:
            self._dispatch_whole(header, out)

    def _account(self, sid: int, length: int) -> None:
        recv = self._recv[sid]
        if length > self._conn_window or length > recv.window:
            raise _ConnectionError(ErrorCodes.FLOW_CONTROL_ERROR, f"DATA on stream {sid} exceeds our window")
        self._conn_window -= length
        recv.window -= length

    def _end_fast_data(self, out: list[ev.Event]) -> None:
        # h2 moves the stream to half-closed(remote) and emits StreamEnded; a zero-length frame leaves its
        # flow-control windows alone.
        self._feed(frame_header(0, T_DATA, F_END_STREAM, self._data_sid), out)

    def _dispatch_whole(self, frame: bytes, out: list[ev.Event]) -> None:
        _hi, _lo, ftype, flags, sid = HDR.unpack_from(frame, 0)
        sid &= 0x7FFFFFFF
        length = len(frame) - FRAME_HEADER_SIZE
        if ftype == T_DATA and flags & F_PADDED and not self._in_block and sid in self._recv:
            self._padded_data(frame, flags, sid, length, out)
            return
        if ftype in (T_HEADERS, T_PUSH_PROMISE) and not self._in_block:
            self._in_block = not flags & F_END_HEADERS
            self._block_bytes = length
        elif ftype == T_CONTINUATION and self._in_block:
            self._block_bytes += length
            self._in_block = not flags & F_END_HEADERS
        if self._block_bytes > self._max_block:
            raise _ConnectionError(ErrorCodes.ENHANCE_YOUR_CALM, "header block too large")
        self._feed(frame, out)

    def _padded_data(self, frame: bytes, flags: int, sid: int, length: int, out: list[ev.Event]) -> None:
        pad = frame[FRAME_HEADER_SIZE] if length else 0
        if not length or pad >= length:
            raise _ConnectionError(ErrorCodes.PROTOCOL_ERROR, "invalid DATA padding")
        self._account(sid, length)
        payload = memoryview(frame)[FRAME_HEADER_SIZE + 1 : len(frame) - pad]
        if payload:
            out.append(ev.DataReceived(sid, payload))
        self.acknowledge(sid, 1 + pad)  # padding is consumed at once
        if flags & F_END_STREAM:
            self._data_sid = sid
            self._end_fast_data(out)

    def _feed(self, data: bytes, out: list[ev.Event]) -> None:
        try:
            h2_events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # h2 has queued its GOAWAY already.
            self.closed = True
            out.append(ev.ConnectionTerminated(int(exc.error_code), 0, remote=False, reason=str(exc)))
            return
        for event in h2_events:
            self._translate(event, out)

    def _fail(self, code: int, reason: str, out: list[ev.Event]) -> None:
        self._whole = None
        self._data_left = 0
        if not self.closed:
            self.close(code, reason.encode()[:256])
        out.append(ev.ConnectionTerminated(int(code), 0, remote=False, reason=reason))

    def _translate(self, event: h2.events.Event, out: list[ev.Event]) -> None:
        if isinstance(event, h2.events.RequestReceived):
            sid = int(event.stream_id)
            if (self.goaway_sent and sid > self._goaway_last) or (
                self._h2.open_inbound_streams > self.settings.server_max_concurrent_streams
            ):
                self.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
                return
            headers = str_headers(event.headers)
            if malformed_request(headers) is not None:
                self.reset_stream(sid, ErrorCodes.PROTOCOL_ERROR)
                return
            self._recv[sid] = _Recv(self.settings.stream_window)
            out.append(ev.RequestReceived(sid, headers))
        elif isinstance(event, h2.events.ResponseReceived):
            sid = int(event.stream_id)
            if sid in self._send_open or self._h2.streams.get(sid) is not None:
                self._recv[sid] = _Recv(self.settings.stream_window)
            out.append(ev.ResponseReceived(sid, status_of(event.headers), str_headers(event.headers)))
        elif isinstance(event, h2.events.DataReceived):
            sid = int(event.stream_id)
            if event.data:  # only if a DATA frame ever took h2's path for an open stream
                out.append(ev.DataReceived(sid, memoryview(event.data)))
                self._h2.acknowledge_received_data(event.flow_controlled_length, sid)
        elif isinstance(event, h2.events.StreamEnded):
            self._recv.pop(int(event.stream_id), None)
            out.append(ev.StreamEnded(int(event.stream_id)))
        elif isinstance(event, h2.events.StreamReset):
            sid = int(event.stream_id)
            self._recv.pop(sid, None)
            self._send_open.discard(sid)
            out.append(ev.StreamReset(sid, int(event.error_code), remote=bool(event.remote_reset)))
        elif isinstance(event, h2.events.WindowUpdated):
            out.append(ev.WindowUpdated(int(event.stream_id)))
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            out.append(ev.SettingsChanged(self.peer_max_concurrent_streams))
            out.append(ev.WindowUpdated(0))  # a new initial window may have opened stream windows
        elif isinstance(event, h2.events.PingAckReceived):
            out.append(ev.PingAcked(bytes(event.ping_data)))
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway_received = True
            if event.error_code == ErrorCodes.NO_ERROR:
                self._reopen_h2()
            last = int(event.last_stream_id or 0)
            reason = (event.additional_data or b"").decode("utf-8", "replace")
            out.append(ev.ConnectionTerminated(int(event.error_code or 0), last, remote=True, reason=reason))
        # TrailersReceived (StreamEnded follows), InformationalResponseReceived, PingReceived (h2 acks it),
        # SettingsAcknowledged, PriorityUpdated, UnknownFrameReceived, AltSvc: nothing to do.


def _immutable(data: bytes | bytearray | memoryview) -> bool:
    return type(data) is bytes or (type(data) is memoryview and type(data.obj) is bytes)


class _ConnectionError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
