"""The sans-IO core: client and server cores pumped against each other in memory."""

from __future__ import annotations

import struct

import pytest
from h2.errors import ErrorCodes
from hypothesis import given, settings
from hypothesis import strategies as st
from meshkit.hbone import events as ev
from meshkit.hbone.core import FlowControlViolation, HboneCore, frame_header
from meshkit.hbone.errors import HboneError
from meshkit.hbone.request import BadRequest, parse_request
from meshkit.hbone.settings import MIB, HboneSettings


class Pair:
    """A client and a server core; ``pump`` moves bytes until both are quiet, collecting events."""

    def __init__(self, settings: HboneSettings | None = None, chunk: int | None = None) -> None:
        self.client = HboneCore(True, settings)
        self.server = HboneCore(False, settings)
        self.client.initiate()
        self.server.initiate()
        self.chunk = chunk
        self.client_events: list[ev.Event] = []
        self.server_events: list[ev.Event] = []
        self.received: dict[tuple[str, int], bytearray] = {}
        self.pump()

    def _deliver(self, core: HboneCore, data: bytes, side: str, sink: list[ev.Event]) -> None:
        step = self.chunk or len(data) or 1
        for off in range(0, len(data), step):
            for event in core.receive_data(data[off : off + step]):
                if isinstance(event, ev.DataReceived):
                    # views are only valid during the call: copy, as a consumer must
                    self.received.setdefault((side, event.stream_id), bytearray()).extend(event.data)
                sink.append(event)

    def pump(self, ack: bool = True) -> None:
        for _ in range(1000):
            to_server, to_client = self.client.data_to_send(), self.server.data_to_send()
            if not to_server and not to_client:
                return
            self._deliver(self.server, to_server, "server", self.server_events)
            self._deliver(self.client, to_client, "client", self.client_events)
            if ack:
                self.ack_all()
        raise AssertionError("pump did not settle")

    def ack_all(self) -> None:
        for (side, sid), data in self.received.items():
            acked = getattr(self, "_acked", {})
            done = acked.get((side, sid), 0)
            core = self.server if side == "server" else self.client
            if len(data) > done:
                core.acknowledge(sid, len(data) - done)
                acked[(side, sid)] = len(data)
            self._acked = acked

    def open(self, authority: str = "10.0.0.1:80") -> int:
        sid = self.client.connect(authority, [("traceparent", "00-" + "a" * 32 + "-" + "b" * 16 + "-00")])
        self.pump()
        self.server.respond(sid, 200)
        self.pump()
        return sid

    def of(self, kind: type[ev.Event], side: str = "server") -> list[ev.Event]:
        events = self.server_events if side == "server" else self.client_events
        return [e for e in events if isinstance(e, kind)]


def test_settings_exchanged_as_upstream() -> None:
    pair = Pair()
    client_h2, server_h2 = pair.client._h2, pair.server._h2
    # what the server sees of the client and vice versa (behaviour.md §2.5)
    assert server_h2.remote_settings.initial_window_size == 4 * MIB
    assert server_h2.remote_settings.max_frame_size == 1 * MIB
    assert server_h2.remote_settings.enable_push == 0
    assert server_h2.remote_settings.max_header_list_size == 16 * 1024
    assert client_h2.remote_settings.initial_window_size == 4 * MIB
    assert client_h2.remote_settings.max_frame_size == 1 * MIB
    assert client_h2.remote_settings.max_concurrent_streams == 200
    assert client_h2.remote_settings.max_header_list_size == 64 * 1024
    # 16 MiB connection windows both ways
    assert client_h2.outbound_flow_control_window == 16 * MIB
    assert server_h2.outbound_flow_control_window == 16 * MIB


def test_connect_request_and_response() -> None:
    pair = Pair()
    headers = [("baggage", "k8s.namespace.name=ns"), ("forwarded", 'for="1.2.3.4:5"')]
    sid = pair.client.connect("10.0.0.1:80", headers)
    pair.pump()
    (request,) = pair.of(ev.RequestReceived)
    assert isinstance(request, ev.RequestReceived)
    assert request.stream_id == sid
    assert request.headers[:2] == ((":method", "CONNECT"), (":authority", "10.0.0.1:80"))
    assert ("baggage", "k8s.namespace.name=ns") in request.headers
    assert not any(name in (":scheme", ":path") for name, _ in request.headers)
    pair.server.respond(sid, 200, [("baggage", "k8s.namespace.name=dst")])
    pair.pump()
    (response,) = pair.of(ev.ResponseReceived, "client")
    assert isinstance(response, ev.ResponseReceived)
    assert response.status == 200


def test_data_both_ways_and_half_close_each_way() -> None:
    pair = Pair()
    sid = pair.open()
    pair.client.send_data(sid, b"ping" * 1000)
    pair.server.send_data(sid, b"pong" * 3)
    pair.pump()
    assert pair.received[("server", sid)] == b"ping" * 1000
    assert pair.received[("client", sid)] == b"pongpongpong"
    # client FIN -> END_STREAM at the server; the server can still send
    pair.client.send_data(sid, b"last", end_stream=True)
    pair.pump()
    assert pair.of(ev.StreamEnded) == [ev.StreamEnded(sid)]
    assert pair.server.can_send(sid)
    assert not pair.client.can_send(sid)
    pair.server.send_data(sid, b"after-fin")
    pair.pump()
    assert pair.received[("client", sid)].endswith(b"after-fin")
    pair.server.end_stream(sid)
    pair.pump()
    assert pair.of(ev.StreamEnded, "client") == [ev.StreamEnded(sid)]


def test_server_half_close_first() -> None:
    pair = Pair()
    sid = pair.open()
    pair.server.send_data(sid, b"bye", end_stream=True)
    pair.pump()
    assert pair.of(ev.StreamEnded, "client") == [ev.StreamEnded(sid)]
    pair.client.send_data(sid, b"still talking")
    pair.pump()
    assert pair.received[("server", sid)] == b"still talking"


def test_reset_propagates() -> None:
    pair = Pair()
    sid = pair.open()
    pair.client.reset_stream(sid, ErrorCodes.CANCEL)
    pair.pump()
    assert pair.of(ev.StreamReset) == [ev.StreamReset(sid, ErrorCodes.CANCEL, remote=True)]
    assert not pair.server.can_send(sid)
    assert not pair.server.receiving(sid)


def test_non_200_ends_the_stream_and_cancels_the_request() -> None:
    pair = Pair()
    sid = pair.client.connect("10.0.0.1:80")
    pair.pump()
    pair.server.respond(sid, 401)
    pair.pump()
    kinds = [type(e) for e in pair.client_events if not isinstance(e, ev.WindowUpdated | ev.SettingsChanged)]
    assert kinds == [ev.ResponseReceived, ev.StreamEnded, ev.StreamReset]
    reset = pair.of(ev.StreamReset, "client")[0]
    assert isinstance(reset, ev.StreamReset)
    assert reset.error_code == ErrorCodes.NO_ERROR


def test_large_write_is_split_at_peer_max_frame() -> None:
    pair = Pair()
    sid = pair.open()
    payload = bytes(range(256)) * (3 * 4096 + 7)  # ~3 MiB, not a multiple of the frame size
    pair.client.send_data(sid, payload)
    wire = pair.client.data_to_send()
    lengths = []
    off = 0
    while off < len(wire):
        hi, lo, ftype, _flags, _sid = struct.unpack_from(">BHBBL", wire, off)
        length = hi << 16 | lo
        if ftype == 0:
            lengths.append(length)
        off += 9 + length
    assert max(lengths) == MIB
    assert sum(lengths) == len(payload)
    pair._deliver(pair.server, wire, "server", pair.server_events)
    assert pair.received[("server", sid)] == payload


def test_flow_control_back_pressure_bounds_the_sender() -> None:
    pair = Pair()
    sid = pair.open()
    sent = 0
    # the server never acknowledges: the client may send exactly one stream window, no more
    for _ in range(100):
        window = pair.client.send_window(sid)
        if not window:
            break
        chunk = min(window, 256 * 1024)
        pair.client.send_data(sid, b"x" * chunk)
        sent += chunk
        pair.pump(ack=False)
    assert sent == 4 * MIB
    assert pair.client.send_window(sid) == 0
    with pytest.raises(FlowControlViolation):
        pair.client.send_data(sid, b"y")
    # consuming half the window reopens it (one WINDOW_UPDATE), not before
    pair.server.acknowledge(sid, 2 * MIB - 1)
    pair.pump(ack=False)
    assert pair.client.send_window(sid) == 0
    pair.server.acknowledge(sid, 1)
    pair.pump(ack=False)
    assert pair.client.send_window(sid) == 2 * MIB


def test_connection_window_shared_by_streams() -> None:
    pair = Pair()
    streams = [pair.open() for _ in range(5)]
    total = 0
    for sid in streams:
        while (window := pair.client.send_window(sid)) > 0:
            pair.client.send_data(sid, b"z" * window)
            total += window
            pair.pump(ack=False)
    assert total == 16 * MIB  # 4 streams fill their windows, the 5th gets nothing
    assert pair.client.send_window(streams[-1]) == 0


def test_peer_exceeding_our_window_is_a_flow_control_error() -> None:
    pair = Pair()
    sid = pair.open()
    # forge: shrink what the server thinks it advertised, then send more than that
    pair.server._recv[sid].window = 10
    pair.client.send_data(sid, b"0123456789AB")
    pair.pump()
    terminated = pair.of(ev.ConnectionTerminated)
    assert terminated
    assert isinstance(terminated[0], ev.ConnectionTerminated)
    assert terminated[0].error_code == ErrorCodes.FLOW_CONTROL_ERROR
    gone = pair.of(ev.ConnectionTerminated, "client")[0]
    assert isinstance(gone, ev.ConnectionTerminated)
    assert gone.error_code == ErrorCodes.FLOW_CONTROL_ERROR
    assert gone.remote


def test_data_on_unknown_stream_gets_h2_answer() -> None:
    pair = Pair()
    pair.open()
    # DATA on a stream that was never opened (idle): a connection error per RFC 9113 §5.1
    pair.server.receive_data(frame_header(3, 0, 0, 41) + b"abc")
    out = pair.server.data_to_send()
    assert pair.server.closed
    assert out[3] == 0x7  # GOAWAY
    code = struct.unpack(">L", out[13:17])[0]
    assert code == ErrorCodes.PROTOCOL_ERROR


def test_data_on_closed_stream_is_rejected_not_delivered() -> None:
    pair = Pair()
    sid = pair.open()
    pair.client.send_data(sid, b"", end_stream=True)
    pair.pump()
    before = bytes(pair.received.get(("server", sid), b""))
    events = pair.server.receive_data(frame_header(4, 0, 0, sid) + b"late")
    assert not any(isinstance(e, ev.DataReceived) for e in events)
    assert bytes(pair.received.get(("server", sid), b"")) == before
    out = pair.server.data_to_send()
    # h2 answers STREAM_CLOSED (RST_STREAM) or a GOAWAY; either way, never delivered
    assert out[3] in (0x3, 0x7)


def test_oversized_frame_is_frame_size_error() -> None:
    pair = Pair()
    sid = pair.open()
    pair.server.receive_data(frame_header(MIB + 1, 0, 0, sid))
    out = pair.server.data_to_send()
    assert out[3] == 0x7
    assert struct.unpack(">L", out[13:17])[0] == ErrorCodes.FRAME_SIZE_ERROR


def test_padded_data_is_unpadded_and_counted() -> None:
    pair = Pair()
    sid = pair.open()
    payload = b"hello"
    body = bytes([3]) + payload + b"\0\0\0"
    pair.server.receive_data(frame_header(len(body), 0, 0x8 | 0x1, sid) + body)
    pair.received.clear()
    events = pair.server.receive_data(b"")
    assert events == []
    pair2 = Pair()
    sid2 = pair2.open()
    got = pair2.server.receive_data(frame_header(len(body), 0, 0x8 | 0x1, sid2) + body)
    data = [bytes(e.data) for e in got if isinstance(e, ev.DataReceived)]
    assert data == [payload]
    assert ev.StreamEnded(sid2) in got
    assert pair2.server._recv.get(sid2) is None


def test_continuation_flood_is_enhance_your_calm() -> None:
    pair = Pair()
    # HEADERS without END_HEADERS, then CONTINUATIONs carrying junk far beyond 2x the header list limit
    pair.server.receive_data(frame_header(16, 0x1, 0, 101) + b"\x82" * 16)
    for _ in range(20):
        pair.server.receive_data(frame_header(16384, 0x9, 0, 101) + b"\x00" * 16384)
        if pair.server.closed:
            break
    out = pair.server.data_to_send()
    assert pair.server.closed
    assert out[3] == 0x7
    assert struct.unpack(">L", out[13:17])[0] == ErrorCodes.ENHANCE_YOUR_CALM


def test_header_list_too_large_is_refused() -> None:
    pair = Pair()
    big = [("x-filler-" + str(i), "v" * 1000) for i in range(80)]  # ~80 KiB > 64 KiB server limit
    sid = pair.client.connect("10.0.0.1:80", big)
    pair.pump()
    assert not any(isinstance(e, ev.RequestReceived) and e.stream_id == sid for e in pair.server_events)
    assert pair.of(ev.ConnectionTerminated) or pair.of(ev.StreamReset)


def test_streams_past_the_limit_are_refused() -> None:
    pair = Pair(HboneSettings(server_max_concurrent_streams=3))
    for _ in range(3):
        pair.client.connect("10.0.0.1:80")
    pair.pump()
    assert len(pair.of(ev.RequestReceived)) == 3
    # the client honours the peer's limit itself...
    with pytest.raises(HboneError, match=r"[Mm]ax"):
        pair.client.connect("10.0.0.1:80")
    # ...and a client that does not gets an HTTP/2 error from the server
    block = pair.client._h2.encoder.encode([(":method", "CONNECT"), (":authority", "10.0.0.1:80")])
    pair.server.receive_data(frame_header(len(block), 0x1, 0x4, 7) + block)
    out = pair.server.data_to_send()
    assert len(pair.of(ev.RequestReceived)) == 3
    assert out == frame_header(4, 0x3, 0, 7) + struct.pack(">L", ErrorCodes.REFUSED_STREAM)  # a stream error
    assert not pair.server.closed
    # once a stream ends, a new one fits again
    pair.client.reset_stream(1)
    pair.pump()
    block = pair.client._h2.encoder.encode([(":method", "CONNECT"), (":authority", "10.0.0.1:80")])
    pair.server.receive_data(frame_header(len(block), 0x1, 0x4, 9) + block)
    assert len(pair.of(ev.RequestReceived)) == 3
    assert pair.server.receiving(9)


def test_ping_is_acked() -> None:
    pair = Pair()
    pair.client.ping(b"12345678")
    pair.pump()
    assert pair.of(ev.PingAcked, "client") == [ev.PingAcked(b"12345678")]


def test_remote_goaway_is_reported() -> None:
    pair = Pair()
    sid = pair.open()
    pair.server.close(ErrorCodes.NO_ERROR)
    pair.pump()
    (gone,) = pair.of(ev.ConnectionTerminated, "client")
    assert gone == ev.ConnectionTerminated(ErrorCodes.NO_ERROR, sid, remote=True, reason="")
    assert pair.client.goaway_received


@settings(max_examples=60, deadline=None)
@given(
    chunk=st.integers(min_value=1, max_value=70000),
    writes=st.lists(st.binary(min_size=0, max_size=50000), min_size=1, max_size=6),
    end=st.booleans(),
)
def test_any_read_chunking_delivers_the_same_bytes(chunk: int, writes: list[bytes], end: bool) -> None:
    pair = Pair(chunk=chunk)
    sid = pair.open()
    for data in writes:
        pair.client.send_data(sid, data)
        pair.server.send_data(sid, data[::-1])
    if end:
        pair.client.end_stream(sid)
    pair.pump()
    assert bytes(pair.received.get(("server", sid), b"")) == b"".join(writes)
    assert bytes(pair.received.get(("client", sid), b"")) == b"".join(w[::-1] for w in writes)
    assert (ev.StreamEnded(sid) in pair.server_events) == end


OPS = st.lists(
    st.tuples(
        st.sampled_from(["open", "send", "send_back", "fin", "fin_back", "rst", "rst_back", "ping", "ack"]),
        st.integers(min_value=0, max_value=7),
        st.integers(min_value=0, max_value=300_000),
    ),
    max_size=40,
)


@settings(max_examples=80, deadline=None)
@given(ops=OPS, chunk=st.sampled_from([None, 1, 7, 9, 1000, 16393]))
def test_random_operation_sequences_keep_both_sides_consistent(
    ops: list[tuple[str, int, int]], chunk: int | None
) -> None:
    pair = Pair(chunk=chunk)
    streams: list[int] = []
    sent: dict[tuple[str, int], int] = {}
    for op, index, size in ops:
        if op == "open":
            if len(streams) < 8:
                streams.append(pair.open())
            continue
        if not streams:
            continue
        sid = streams[index % len(streams)]
        sender = pair.client if op in ("send", "fin", "rst", "ping") else pair.server
        side = "server" if sender is pair.client else "client"
        if op in ("send", "send_back"):
            n = min(size, sender.send_window(sid))
            if n:
                sender.send_data(sid, b"d" * n)
                sent[(side, sid)] = sent.get((side, sid), 0) + n
        elif op in ("fin", "fin_back"):
            sender.end_stream(sid)
        elif op in ("rst", "rst_back"):
            sender.reset_stream(sid)
        elif op == "ping":
            pair.client.ping(b"pingpong")
        pair.pump(ack=op == "ack" or size % 2 == 0)
    pair.pump()
    assert not pair.client.closed
    assert not pair.server.closed
    for key, count in sent.items():
        # bytes may be lost to a reset, never invented
        assert len(pair.received.get(key, b"")) <= count
    for sid in streams:
        if not any(isinstance(e, ev.StreamReset) and e.stream_id == sid for e in pair.server_events):
            assert len(pair.received.get(("server", sid), b"")) == sent.get(("server", sid), 0)


def test_graceful_goaway_lets_open_streams_finish_and_refuses_new_ones() -> None:
    pair = Pair()
    sid = pair.open()
    pair.server.close(ErrorCodes.NO_ERROR)
    pair.pump()
    assert pair.client.goaway_received
    # the open stream keeps working both ways, including flow control and half-close
    pair.client.send_data(sid, b"x" * 100_000)
    pair.server.send_data(sid, b"y" * 100_000, end_stream=True)
    pair.client.end_stream(sid)
    pair.pump()
    assert len(pair.received[("server", sid)]) == 100_000
    assert len(pair.received[("client", sid)]) == 100_000
    assert ev.StreamEnded(sid) in pair.server_events
    assert not pair.client.closed
    assert not pair.server.closed
    # the client refuses to open new streams on it; a stream opened anyway is refused by the server
    with pytest.raises(HboneError, match="going away"):
        pair.client.connect("10.0.0.1:80")
    block = pair.client._h2.encoder.encode([(":method", "CONNECT"), (":authority", "10.0.0.1:80")])
    events = pair.server.receive_data(frame_header(len(block), 0x1, 0x4, sid + 2) + block)
    assert not any(isinstance(e, ev.RequestReceived) for e in events)
    out = pair.server.data_to_send()
    assert out[3] == 0x3  # RST_STREAM
    assert struct.unpack(">L", out[9:13])[0] == ErrorCodes.REFUSED_STREAM


@pytest.mark.parametrize(
    "headers",
    [
        [(":method", "CONNECT"), (":authority", "10.0.0.1:80"), (":path", "/")],  # nghttp's CONNECT
        [(":method", "CONNECT"), (":authority", "10.0.0.1:80"), (":scheme", "https")],
        [(":method", "CONNECT"), (":authority", "")],
        [(":authority", "10.0.0.1:80")],
        [
            (":method", "CONNECT"),
            (":protocol", "websocket"),
            (":scheme", "https"),
            (":path", "/"),
            (":authority", "10.0.0.1:80"),
        ],  # extended CONNECT: never enabled
        [(":method", "CONNECT"), (":authority", "10.0.0.1:80"), (":authority", "10.0.0.2:80")],
        [(":method", "CONNECT"), ("x-a", "1"), (":authority", "10.0.0.1:80")],
        [(":method", "CONNECT"), (":authority", "10.0.0.1:80"), (":status", "200")],
        [(":method", "CONNECT"), (":authority", "10.0.0.1:80"), ("connection", "close")],
        [(":method", "CONNECT"), (":authority", "10.0.0.1:80"), ("X-Upper", "1")],
        [(":method", "CONNECT"), (":authority", "10.0.0.1:80"), ("x-a", "bad\r\nvalue")],
        [(":method", "GET"), (":authority", "10.0.0.1:80")],
    ],
)
def test_malformed_request_is_a_stream_error_only(headers: list[tuple[str, str]]) -> None:
    pair = Pair()
    good = pair.open()
    block = pair.client._h2.encoder.encode(headers)
    events = pair.server.receive_data(frame_header(len(block), 0x1, 0x4, good + 2) + block)
    assert not any(isinstance(e, ev.RequestReceived) for e in events)
    out = pair.server.data_to_send()
    assert out == frame_header(4, 0x3, 0, good + 2) + struct.pack(">L", ErrorCodes.PROTOCOL_ERROR)
    assert not pair.server.closed
    # the other tunnel on the connection is unaffected
    pair.client.send_data(good, b"still fine")
    pair.pump()
    assert pair.received[("server", good)] == b"still fine"


def test_connect_without_authority_reaches_the_handler_for_a_400() -> None:
    # upstream's HTTP/2 layer passes it on and ztunnel answers 400 (behaviour.md §2.7), not RST_STREAM
    pair = Pair()
    block = pair.client._h2.encoder.encode([(":method", "CONNECT")])
    events = pair.server.receive_data(frame_header(len(block), 0x1, 0x4, 1) + block)
    (request,) = [e for e in events if isinstance(e, ev.RequestReceived)]
    with pytest.raises(BadRequest, match="missing"):
        parse_request(request.stream_id, request.headers)


def _raw_data(core: HboneCore, sid: int, total: int, frame: int = MIB) -> list[ev.Event]:
    """Send ``total`` bytes of DATA on ``sid`` straight to ``core``, ignoring any window (a rogue peer)."""
    events: list[ev.Event] = []
    while total > 0 and not core.closed:
        n = min(frame, total)
        events += core.receive_data(frame_header(n, 0, 0, sid) + bytes(n))
        total -= n
    return events


def _goaway_code(core: HboneCore) -> int | None:
    out = core.data_to_send()
    off = 0
    while off + 9 <= len(out):
        hi, lo, ftype, _flags, _sid = struct.unpack_from(">BHBBL", out, off)
        if ftype == 0x7:
            return int(struct.unpack(">L", out[off + 13 : off + 17])[0])
        off += 9 + (hi << 16 | lo)
    return None


def test_peer_overrunning_the_stream_window_we_advertised_is_a_flow_control_error() -> None:
    pair = Pair()
    sid = pair.open()
    # exactly the 4 MiB stream window is fine while nothing is consumed...
    events = _raw_data(pair.server, sid, 4 * MIB)
    assert sum(len(e.data) for e in events if isinstance(e, ev.DataReceived)) == 4 * MIB
    assert _goaway_code(pair.server) is None
    # ...one byte more is not
    events = _raw_data(pair.server, sid, 1)
    assert not any(isinstance(e, ev.DataReceived) for e in events)
    assert _goaway_code(pair.server) == ErrorCodes.FLOW_CONTROL_ERROR


def test_consumed_bytes_reopen_exactly_what_was_consumed() -> None:
    pair = Pair()
    sid = pair.open()
    _raw_data(pair.server, sid, 4 * MIB)
    pair.server.acknowledge(sid, 2 * MIB)  # the reader consumed half: a WINDOW_UPDATE of 2 MiB each level
    _raw_data(pair.server, sid, 2 * MIB)
    assert _goaway_code(pair.server) is None
    _raw_data(pair.server, sid, 1)
    assert _goaway_code(pair.server) == ErrorCodes.FLOW_CONTROL_ERROR


def test_peer_overrunning_the_connection_window_is_a_flow_control_error() -> None:
    pair = Pair()
    streams = [pair.open() for _ in range(5)]
    for sid in streams[:4]:
        _raw_data(pair.server, sid, 4 * MIB)  # 16 MiB: the whole connection window, nothing consumed
    assert _goaway_code(pair.server) is None
    _raw_data(pair.server, streams[4], 1)  # its own stream window is untouched, the connection's is not
    assert _goaway_code(pair.server) == ErrorCodes.FLOW_CONTROL_ERROR
