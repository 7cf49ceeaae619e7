"""Bounded fuzzing of the server's request handling (Hypothesis): malformed frames, header and CONTINUATION
floods, oversized ``:authority``, streams past the limit. Each must get an HTTP/2 answer (RST_STREAM or
GOAWAY with the right code, or a 400), never an exception, a hang or unbounded state.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
import struct

from h2.errors import ErrorCodes
from hpack import Encoder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from meshkit.hbone import events as ev
from meshkit.hbone import tls
from meshkit.hbone.core import PREFACE, HboneCore, frame_header
from meshkit.hbone.request import BadRequest, parse_request
from meshkit.hbone.server import HboneServer
from meshkit.hbone.settings import MIB
from meshkit.identity.certs import WorkloadCertificate

from .conftest import EchoServer, close_writer, forward_to, listen, wait_until

CLIENT_SETTINGS = frame_header(0, 0x4, 0, 0)


def frames_of(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """Split server output into (type, flags, stream, payload)."""
    out = []
    off = 0
    while off + 9 <= len(data):
        hi, lo, ftype, flags, sid = struct.unpack_from(">BHBBL", data, off)
        length = hi << 16 | lo
        out.append((ftype, flags, sid & 0x7FFFFFFF, data[off + 9 : off + 9 + length]))
        off += 9 + length
    return out


def goaway_code(data: bytes) -> int | None:
    for ftype, _flags, _sid, payload in frames_of(data):
        if ftype == 0x7:
            return int(struct.unpack(">L", payload[4:8])[0])
    return None


def header_block(headers: list[tuple[str, str]]) -> bytes:
    return bytes(Encoder().encode(headers))


@st.composite
def request_headers(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(["CONNECT", "GET", "connect", ""]))
    authority = draw(
        st.one_of(
            st.sampled_from(["10.0.0.1:80", "[fd00::1]:80", "svc.ns:9080", "x:0", ":80", "1.2.3.4"]),
            st.text(max_size=40),
            st.just("a" * 5000 + ":80"),
        )
    )
    headers = [(":method", method), (":authority", authority)]
    if draw(st.booleans()):
        headers.append((":path", "/"))
    headers += draw(
        st.lists(
            st.tuples(st.sampled_from(["baggage", "x-a", "te", "connection"]), st.text(max_size=20)),
            max_size=4,
        )
    )
    return header_block(headers)


FRAME = st.tuples(
    st.integers(min_value=0, max_value=12),  # type, including unknown ones
    st.integers(min_value=0, max_value=255),  # flags
    st.sampled_from([0, 1, 2, 3, 5, 7, 9, 2**31 - 1]),  # stream ids: idle, even (server's), huge
    st.one_of(st.binary(max_size=200), request_headers()),
)


def fresh_server(max_streams: int = 200) -> HboneCore:
    from meshkit.hbone.settings import HboneSettings

    core = HboneCore(False, HboneSettings(server_max_concurrent_streams=max_streams))
    core.initiate()
    core.receive_data(PREFACE + CLIENT_SETTINGS)
    core.data_to_send()
    return core


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(FRAME, max_size=25), split=st.integers(min_value=1, max_value=64))
def test_random_frames_never_crash_and_state_stays_bounded(
    frames: list[tuple[int, int, int, bytes]], split: int
) -> None:
    core = fresh_server(max_streams=5)
    wire = b"".join(frame_header(len(p), t, f, s) + p for t, f, s, p in frames)
    opened: set[int] = set()
    output = bytearray()
    for off in range(0, len(wire), split):
        for event in core.receive_data(wire[off : off + split]):
            if isinstance(event, ev.RequestReceived):
                opened.add(event.stream_id)
                try:
                    request = parse_request(event.stream_id, event.headers)
                except BadRequest:
                    core.respond(event.stream_id, 400)
                else:
                    assert request.authority.port > 0
            elif isinstance(event, ev.DataReceived):
                assert event.stream_id in opened  # DATA only ever reaches an opened stream
                core.acknowledge(event.stream_id, len(event.data))
        output += core.data_to_send()
    assert len(core._recv) <= 5
    assert core._whole is None or len(core._whole) <= MIB + 9
    if core.closed:
        assert goaway_code(bytes(output)) is not None


def test_header_flood_is_refused() -> None:
    core = fresh_server()
    headers = [(":method", "CONNECT"), (":authority", "10.0.0.1:80")] + [
        (f"x-{i}", "v" * 100) for i in range(2000)
    ]
    block = header_block(headers)
    # sent as HEADERS + CONTINUATIONs of 16 KiB
    chunks = [block[i : i + 16384] for i in range(0, len(block), 16384)]
    wire = frame_header(len(chunks[0]), 0x1, 0, 1) + chunks[0]
    for i, chunk in enumerate(chunks[1:], 1):
        wire += frame_header(len(chunk), 0x9, 0x4 if i == len(chunks) - 1 else 0, 1) + chunk
    events = core.receive_data(wire)
    assert not any(isinstance(e, ev.RequestReceived) for e in events)
    assert goaway_code(core.data_to_send()) in (ErrorCodes.ENHANCE_YOUR_CALM, ErrorCodes.PROTOCOL_ERROR)


def test_continuation_flood_without_end_headers_is_cut_off() -> None:
    core = fresh_server()
    wire = frame_header(1, 0x1, 0, 1) + b"\x82"
    wire += (frame_header(1024, 0x9, 0, 1) + b"\x00" * 1024) * 1000  # 1 MiB of CONTINUATION, never ending
    core.receive_data(wire)
    assert core.closed
    # h2 stops at 64 CONTINUATIONs (PROTOCOL_ERROR); our byte limit stops big ones (ENHANCE_YOUR_CALM)
    assert goaway_code(core.data_to_send()) == ErrorCodes.PROTOCOL_ERROR
    core = fresh_server()
    wire = frame_header(1, 0x1, 0, 1) + b"\x82" + (frame_header(16384, 0x9, 0, 1) + b"\x00" * 16384) * 20
    core.receive_data(wire)
    assert goaway_code(core.data_to_send()) == ErrorCodes.ENHANCE_YOUR_CALM


def test_oversized_authority_is_400() -> None:
    core = fresh_server()
    block = header_block([(":method", "CONNECT"), (":authority", "a" * 10000 + ":80")])
    (event,) = [
        e
        for e in core.receive_data(frame_header(len(block), 0x1, 0x4, 1) + block)
        if isinstance(e, ev.RequestReceived)
    ]
    try:
        parse_request(event.stream_id, event.headers)
    except BadRequest:
        core.respond(event.stream_id, 400)
    out = frames_of(core.data_to_send())
    assert [f[0] for f in out][:2] == [0x1, 0x3]  # HEADERS(:status 400, END_STREAM) then RST_STREAM(NO_ERROR)


def test_streams_past_the_limit_get_an_http2_error_and_no_state() -> None:
    core = fresh_server(max_streams=10)
    block_for = [(":method", "CONNECT"), (":authority", "10.0.0.1:80")]
    encoder = Encoder()
    wire = b""
    for i in range(50):
        block = bytes(encoder.encode(block_for))
        wire += frame_header(len(block), 0x1, 0x4, 1 + 2 * i) + block
    events = core.receive_data(wire)
    assert len([e for e in events if isinstance(e, ev.RequestReceived)]) == 10
    out = frames_of(core.data_to_send())
    # a stream error (RFC 9113 §5.1.2): RST_STREAM(REFUSED_STREAM) for each extra stream, no GOAWAY
    refused = [
        sid for t, _f, sid, p in out if t == 0x3 and struct.unpack(">L", p)[0] == ErrorCodes.REFUSED_STREAM
    ]
    assert refused == [1 + 2 * i for i in range(10, 50)]
    assert not core.closed
    assert len(core._recv) == 10


@settings(max_examples=300, deadline=None)
@given(headers=st.lists(st.tuples(st.text(max_size=12), st.text(max_size=30)), max_size=8))
def test_parse_request_accepts_or_says_400(headers: list[tuple[str, str]]) -> None:
    try:
        request = parse_request(1, headers)
    except BadRequest:
        return
    assert dict(headers)[":method"] == "CONNECT"
    assert 0 < request.authority.port < 65536


async def test_garbage_over_real_tls_never_crashes_or_leaks(
    echo: EchoServer, server_cert: WorkloadCertificate, client_cert: WorkloadCertificate
) -> None:
    server = HboneServer(listen(), lambda: server_cert, forward_to(echo.port))
    await server.start()
    ctx = tls.client_context(client_cert)
    rng = random.Random(1234)
    try:
        for _ in range(40):
            reader, writer = await asyncio.open_connection(*server.address, ssl=ctx, server_hostname="")
            junk = PREFACE + CLIENT_SETTINGS
            for _ in range(rng.randint(1, 12)):
                payload = rng.randbytes(rng.randint(0, 64))
                junk += (
                    frame_header(
                        len(payload), rng.randint(0, 10), rng.randint(0, 255), rng.choice([0, 1, 3, 4])
                    )
                    + payload
                )
            writer.write(junk)
            with contextlib.suppress(ssl.SSLError, ConnectionError):
                await asyncio.wait_for(reader.read(65536), 5)
            await close_writer(writer)
        # every connection the server saw is eventually closed, no task is left behind
        await wait_until(lambda: not any(c.streams for c in server.connections))
    finally:
        await server.close()
    assert not server.connections
