"""The asyncio shell over real sockets and real TLS 1.3: server answers, relay, half-close, resets, pool."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import struct
from collections.abc import AsyncIterator, Callable

import pytest
from h2.errors import ErrorCodes
from meshkit.hbone import events as ev
from meshkit.hbone.connection import CONTROL_SLACK, HboneConnection
from meshkit.hbone.core import PREFACE, frame_header
from meshkit.hbone.errors import ConnectFailed, HboneError, StreamReset
from meshkit.hbone.pool import ConnectionPool, PoolKey
from meshkit.hbone.relay import RelayResult
from meshkit.hbone.request import ConnectRequest, SourceMetadata, connect_headers
from meshkit.hbone.server import (
    MAX_PENDING_RESETS,
    Accept,
    Decision,
    Forward,
    HboneServer,
    InboundPeer,
    Reject,
)
from meshkit.hbone.settings import HboneSettings
from meshkit.hbone.stream import HboneStream
from meshkit.hbone.testing import TestCA
from meshkit.identity.certs import WorkloadCertificate
from meshkit.identity.spiffe import Identity

from .conftest import (
    CLIENT_ID,
    SERVER_ID,
    EchoServer,
    Mesh,
    close_writer,
    forward_to,
    listen,
    make_key,
    serving,
    wait_until,
)


async def test_echo_round_trip_and_integrity(mesh: Mesh) -> None:
    stream = await mesh.pool.connect(mesh.key, "10.0.0.1:80")
    payload = os.urandom(8 * 1024 * 1024 + 13)
    stream.write(payload)
    stream.write_eof()
    got = bytearray()
    while chunk := await stream.read():
        got += chunk
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    await stream.wait_closed()
    assert stream.error is None


async def test_handler_sees_peer_identity_and_request(
    echo: EchoServer, server_cert: WorkloadCertificate, client_cert: WorkloadCertificate
) -> None:
    seen: list[tuple[InboundPeer, ConnectRequest]] = []
    server = HboneServer(listen(), lambda: server_cert, forward_to(echo.port, seen))
    await server.start()
    pool = ConnectionPool(lambda _i: client_cert)
    try:
        meta = SourceMetadata(
            cluster_id="Kubernetes", namespace="ns2", workload_name="client", canonical_name="c"
        )
        headers = connect_headers(meta, ("10.1.2.3", 40000), service_host="svc.ns.svc.cluster.local")
        stream = await pool.connect(make_key(server), "[fd00::1]:9080", headers)
        stream.abort()
        peer, request = seen[0]
        assert peer.identity == CLIENT_ID
        assert peer.address[0] == "127.0.0.1"
        assert str(request.authority) == "[fd00::1]:9080"
        assert request.authority.is_ip
        assert request.baggage == (
            "k8s.cluster.name=Kubernetes,k8s.namespace.name=ns2,k8s.pod.name=client,service.name=c"
        )
        assert request.header("forwarded") == 'for="10.1.2.3:40000";host=svc.ns.svc.cluster.local'
        assert request.forwarded_host == "svc.ns.svc.cluster.local"
        assert request.traceparent is not None
        assert len(request.traceparent.split("-")[1]) == 32
    finally:
        await pool.close()
        await server.close()


async def _server_with(
    handler: Callable[[InboundPeer, ConnectRequest], object], cert: WorkloadCertificate
) -> HboneServer:
    server = HboneServer(listen(), lambda: cert, handler)  # type: ignore[arg-type]
    await server.start()
    return server


@pytest.mark.parametrize(
    ("authority", "status"),
    [("not-an-authority", 400), ("10.0.0.1:0", 400), ("10.0.0.1:99999", 400), ("a" * 600 + ":80", 400)],
)
async def test_bad_authority_is_400(mesh: Mesh, authority: str, status: int) -> None:
    with pytest.raises(ConnectFailed) as info:
        await mesh.pool.connect(mesh.key, authority)
    assert info.value.status == status
    # the connection survives a bad request
    ok = await mesh.pool.connect(mesh.key, "10.0.0.1:80")
    ok.abort()
    assert mesh.pool.connections_opened == 1


async def test_policy_deny_is_401_and_handler_crash_is_503(
    server_cert: WorkloadCertificate, client_cert: WorkloadCertificate
) -> None:
    async def handler(_peer: InboundPeer, request: ConnectRequest) -> Decision:
        if request.authority.port == 1:
            return Reject(401, "denied by policy")
        raise RuntimeError("boom")

    async with serving(handler, server_cert, client_cert) as (server, pool):
        with pytest.raises(ConnectFailed, match="http status: 401") as info:
            await pool.connect(make_key(server), "10.0.0.1:1")
        assert info.value.status == 401
        with pytest.raises(ConnectFailed) as info:
            await pool.connect(make_key(server), "10.0.0.1:2")
        assert info.value.status == 503


async def test_upstream_connect_failure_is_503(
    server_cert: WorkloadCertificate, client_cert: WorkloadCertificate
) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    async with serving(forward_to(port), server_cert, client_cert) as (server, pool):
        with pytest.raises(ConnectFailed) as info:
            await pool.connect(make_key(server), "10.0.0.1:80")
        assert info.value.status == 503


async def test_a_failing_connect_or_serve_never_leaves_the_client_hanging(
    server_cert: WorkloadCertificate, client_cert: WorkloadCertificate
) -> None:
    async def broken_connect() -> socket.socket:
        raise LookupError("no certificate for the pod")  # not an OSError: a caller's bug or a lookup miss

    async def broken_serve(stream: HboneStream) -> None:
        raise RuntimeError("boom")

    async def handler(_peer: InboundPeer, request: ConnectRequest) -> Decision:
        return Forward(broken_connect) if request.authority.port == 1 else Accept(broken_serve)

    async with serving(handler, server_cert, client_cert) as (server, pool):
        with pytest.raises(ConnectFailed) as info:
            await pool.connect(make_key(server), "10.0.0.1:1")
        assert info.value.status == 503
        stream = await pool.connect(make_key(server), "10.0.0.1:2")  # 200, then the serve crashes
        with pytest.raises(StreamReset):
            await asyncio.wait_for(stream.read(), 10)


class Upstream:
    """A TCP upstream whose behaviour each test scripts through ``script(reader, writer)``."""

    def __init__(self, script: Callable[[asyncio.StreamReader, asyncio.StreamWriter], object]) -> None:
        self.script = script
        self.done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                result = await self.script(reader, writer)  # type: ignore[misc]
            except Exception as exc:
                result = exc
            if not self.done.done():
                self.done.set_result(result)
            writer.close()

        self.server = await asyncio.start_server(run, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@contextlib.asynccontextmanager
async def tunnel(
    upstream: Upstream, server_cert: WorkloadCertificate, client_cert: WorkloadCertificate
) -> AsyncIterator[tuple[HboneServer, HboneStream]]:
    """One tunnel through a server that forwards to ``upstream``; everything is closed afterwards."""
    port = await upstream.start()
    try:
        async with serving(forward_to(port), server_cert, client_cert) as (server, pool):
            yield server, await pool.connect(make_key(server), "10.0.0.1:80")
    finally:
        await upstream.close()


async def test_client_half_close_reaches_upstream_and_it_can_still_answer(
    server_cert: WorkloadCertificate, client_cert: WorkloadCertificate
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        data = await reader.read()  # until FIN
        writer.write(b"got " + data)
        await writer.drain()
        return data

    upstream = Upstream(script)
    async with tunnel(upstream, server_cert, client_cert) as (_server, stream):
        await stream.send(b"request")
        stream.write_eof()
        assert await asyncio.wait_for(upstream.done, 10) == b"request"
        assert await stream.readexactly(11) == b"got request"
        assert await stream.read() == b""
        await asyncio.wait_for(stream.wait_closed(), 10)
        assert stream.error is None


async def test_upstream_half_close_reaches_client_and_it_can_still_send(
    server_cert: WorkloadCertificate, client_cert: WorkloadCertificate
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        writer.write(b"banner")
        writer.write_eof()
        await writer.drain()
        return await reader.read()

    upstream = Upstream(script)
    async with tunnel(upstream, server_cert, client_cert) as (_server, stream):
        assert await stream.readexactly(6) == b"banner"
        assert await stream.read() == b""  # END_STREAM from the upstream's FIN
        await stream.send(b"late words")
        stream.write_eof()
        assert await asyncio.wait_for(upstream.done, 10) == b"late words"


async def test_client_abort_resets_upstream(
    server_cert: WorkloadCertificate, client_cert: WorkloadCertificate
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> object:
        first = await reader.read(5)
        try:
            rest = await reader.read()
        except ConnectionResetError as exc:
            return (first, exc)
        return (first, rest)

    upstream = Upstream(script)
    async with tunnel(upstream, server_cert, client_cert) as (server, stream):
        await stream.send(b"hello")
        await wait_until(
            lambda: any(s.bytes_received for c in server.connections for s in c.streams.values())
        )
        stream.abort()
        outcome = await asyncio.wait_for(upstream.done, 10)
        assert isinstance(outcome, tuple)
        first, rest = outcome
        assert first == b"hello"
        assert isinstance(rest, ConnectionResetError)  # RST, not a clean FIN


async def test_upstream_reset_resets_the_stream(
    server_cert: WorkloadCertificate, client_cert: WorkloadCertificate
) -> None:
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(5)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    upstream = Upstream(script)
    async with tunnel(upstream, server_cert, client_cert) as (_server, stream):
        await stream.send(b"hello")
        with pytest.raises(StreamReset) as info:
            await asyncio.wait_for(stream.read(), 10)
        assert info.value.remote


async def test_slow_reader_does_not_grow_memory(
    server_cert: WorkloadCertificate, client_cert: WorkloadCertificate
) -> None:
    """A client that stops reading holds one stream window; the server holds one send buffer; no more."""
    total = 64 * 1024 * 1024
    written = 0
    upstream_blocked = False

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        nonlocal written, upstream_blocked
        block = b"s" * 65536
        while written < total:
            writer.write(block)
            written += len(block)
            # drain() will wait: everything between us and the client is full (for now)
            upstream_blocked = writer.transport.get_write_buffer_size() > 65536
            await writer.drain()
            upstream_blocked = False
        writer.write_eof()
        return written

    upstream = Upstream(script)
    settings = HboneSettings()
    async with tunnel(upstream, server_cert, client_cert) as (server, stream):
        (server_stream,) = [s for c in server.connections for s in c.streams.values()]
        # The client does not read. The pipeline is full once its buffer holds a whole stream window (no
        # WINDOW_UPDATE goes out for unread bytes), the server's relay stopped reading its upstream (send
        # buffer over the limit) and the upstream itself is blocked writing. An implementation that buffered
        # without bound would never get here: the client's buffer would pass the window.
        await wait_until(
            lambda: (
                len(stream._rbuf) >= settings.stream_window
                and not server_stream.write_ready
                and upstream_blocked
            ),
            limit_s=20,
        )
        assert len(stream._rbuf) == settings.stream_window
        assert stream.conn.core._conn_unacked == 0  # nothing acknowledged: no window was reopened
        # the server side buffers its send limit plus at most one relay read (64 KiB)
        assert len(server_stream.pending) <= settings.max_send_buffer + 65536
        # so what the upstream got rid of is windows + buffers + kernel socket buffers, not the 64 MiB
        assert written < 24 * 1024 * 1024
        assert not upstream.done.done()
        # reading drains it all, in order and complete
        received = bytearray()
        while chunk := await stream.read():
            received += chunk
        assert len(received) == total == stream.bytes_received
        assert received.count(b"s") == total
        assert await asyncio.wait_for(upstream.done, 30) == total


async def test_accept_decision_hands_the_stream_to_the_caller(
    server_cert: WorkloadCertificate, client_cert: WorkloadCertificate
) -> None:
    async def serve(stream: HboneStream) -> None:
        data = await stream.read()
        await stream.send(data.upper())
        stream.write_eof()

    async def handler(_peer: InboundPeer, _request: ConnectRequest) -> Decision:
        return Accept(serve, (("baggage", "k8s.pod.name=waypoint"),))

    async with serving(handler, server_cert, client_cert) as (server, pool):
        stream = await pool.connect(make_key(server), "10.0.0.1:80")
        assert ("baggage", "k8s.pod.name=waypoint") in stream.response_headers
        await stream.send(b"shout")
        assert await stream.readexactly(5) == b"SHOUT"
        assert await stream.read() == b""


async def test_forward_on_done_reports_bytes(
    echo: EchoServer, server_cert: WorkloadCertificate, client_cert: WorkloadCertificate
) -> None:
    results: list[RelayResult] = []
    inner = forward_to(echo.port)

    async def handler(peer: InboundPeer, request: ConnectRequest) -> Decision:
        decision = await inner(peer, request)
        assert isinstance(decision, Forward)
        return Forward(decision.connect, on_done=results.append)

    async with serving(handler, server_cert, client_cert) as (server, pool):
        stream = await pool.connect(make_key(server), "10.0.0.1:80")
        await stream.send(b"x" * 1000)
        stream.write_eof()
        assert len(await stream.readexactly(1000)) == 1000
        assert await stream.read() == b""
        await wait_until(lambda: bool(results))
        assert results[0].sent == 1000
        assert results[0].received == 1000
        assert results[0].error is None


# -- pool ------------------------------------------------------------------------------------------------


async def test_pool_reuses_then_opens_new_after_stream_limit(
    echo: EchoServer, server_cert: WorkloadCertificate, client_cert: WorkloadCertificate
) -> None:
    settings = HboneSettings(pool_max_streams_per_connection=3)
    mesh = serving(forward_to(echo.port), server_cert, client_cert, pool_settings=settings)
    async with mesh as (server, pool):
        key = make_key(server)
        streams = [await pool.connect(key, "10.0.0.1:80") for _ in range(7)]
        conns = {s.conn for s in streams}
        assert len(conns) == 3  # 3 + 3 + 1
        assert pool.connections_opened == 3
        for s in streams:
            s.abort()
        # retired connections close once their streams are gone; the last one stays pooled
        await wait_until(lambda: pool.connection_count() == 1)
        again = await pool.connect(key, "10.0.0.1:80")
        assert pool.connections_opened == 3
        again.abort()


async def test_pool_counts_streams_over_the_connection_life(
    echo: EchoServer, server_cert: WorkloadCertificate, client_cert: WorkloadCertificate
) -> None:
    settings = HboneSettings(pool_max_streams_per_connection=2)
    mesh = serving(forward_to(echo.port), server_cert, client_cert, pool_settings=settings)
    async with mesh as (server, pool):
        key = make_key(server)
        for _ in range(5):
            stream = await pool.connect(key, "10.0.0.1:80")
            stream.abort()
        assert pool.connections_opened == 3


async def test_pool_respects_peer_max_concurrent_streams(
    echo: EchoServer, server_cert: WorkloadCertificate, client_cert: WorkloadCertificate
) -> None:
    settings = HboneSettings(server_max_concurrent_streams=2)
    mesh = serving(forward_to(echo.port), server_cert, client_cert, server_settings=settings)
    async with mesh as (server, pool):
        first = await pool.connect(make_key(server), "10.0.0.1:80")
        await wait_until(lambda: first.conn.core.peer_max_concurrent_streams == 2)
        streams = [first] + [await pool.connect(make_key(server), "10.0.0.1:80") for _ in range(4)]
        assert len({s.conn for s in streams}) == 3
        for s in streams:
            s.abort()


async def test_pool_keys_separate_connections(
    echo: EchoServer, server_cert: WorkloadCertificate, client_cert: WorkloadCertificate
) -> None:
    other = Identity("cluster.local", "ns2", "other")
    mesh = serving(forward_to(echo.port), server_cert, {CLIENT_ID: client_cert, other: client_cert})
    async with mesh as (server, pool):
        a = await pool.connect(make_key(server), "10.0.0.1:80")
        b = await pool.connect(PoolKey.of(other, "127.0.0.1", [SERVER_ID], server.address), "10.0.0.1:80")
        c = await pool.connect(PoolKey.of(CLIENT_ID, "127.0.0.2", [SERVER_ID], server.address), "10.0.0.1:80")
        assert len({a.conn, b.conn, c.conn}) == 3
        for s in (a, b, c):
            s.abort()


async def test_pool_concurrent_opens_share_one_dial(mesh: Mesh) -> None:
    streams = await asyncio.gather(*(mesh.pool.connect(mesh.key, "10.0.0.1:80") for _ in range(20)))
    assert mesh.pool.connections_opened == 1
    assert len({s.conn for s in streams}) == 1
    for s in streams:
        s.abort()


async def test_pool_releases_idle_connections(
    echo: EchoServer, server_cert: WorkloadCertificate, client_cert: WorkloadCertificate
) -> None:
    settings = HboneSettings(pool_unused_release_timeout=0.2)
    mesh = serving(forward_to(echo.port), server_cert, client_cert, pool_settings=settings)
    async with mesh as (server, pool):
        stream = await pool.connect(make_key(server), "10.0.0.1:80")
        assert pool.connection_count() == 1
        stream.abort()
        await wait_until(lambda: pool.connection_count() == 0)
        await wait_until(lambda: not server.connections)


async def test_pool_does_not_hand_out_a_failed_connection(mesh: Mesh) -> None:
    stream = await mesh.pool.connect(mesh.key, "10.0.0.1:80")
    for conn in list(mesh.server.connections):
        conn.abort()  # the server side dies
    with pytest.raises(Exception, match="closed"):
        await asyncio.wait_for(stream.read(), 10)
    again = await mesh.pool.connect(mesh.key, "10.0.0.1:80")
    assert again.conn is not stream.conn
    assert mesh.pool.connections_opened == 2
    await again.send(b"ok")
    assert await again.readexactly(2) == b"ok"
    again.abort()


async def test_pool_goaway_stops_new_streams_but_old_ones_finish(mesh: Mesh) -> None:
    stream = await mesh.pool.connect(mesh.key, "10.0.0.1:80")
    for conn in list(mesh.server.connections):
        conn.goaway()
    await wait_until(lambda: stream.conn.core.goaway_received)
    new = await mesh.pool.connect(mesh.key, "10.0.0.1:80")
    assert new.conn is not stream.conn
    await stream.send(b"still")
    assert await stream.readexactly(5) == b"still"
    stream.write_eof()
    assert await stream.read() == b""
    await wait_until(lambda: stream.conn.closed)  # closes once its last stream ends
    new.abort()


async def test_pool_uses_new_connection_after_certificate_rotation(ca: TestCA, mesh: Mesh) -> None:
    old = await mesh.pool.connect(mesh.key, "10.0.0.1:80")
    mesh.certs[CLIENT_ID] = ca.issue(CLIENT_ID)  # rotated
    new = await mesh.pool.connect(mesh.key, "10.0.0.1:80")
    assert new.conn is not old.conn
    # the server sees the new certificate on the new connection
    serials = {c.extra("ssl_object").getpeercert()["serialNumber"] for c in mesh.server.connections}
    assert len(serials) == 2
    # the old stream still works
    await old.send(b"old")
    assert await old.readexactly(3) == b"old"
    old.write_eof()
    assert await old.read() == b""
    await wait_until(lambda: old.conn.closed)
    again = await mesh.pool.connect(mesh.key, "10.0.0.1:80")
    assert again.conn is new.conn
    new.abort()
    again.abort()


async def test_server_certificate_rotation_applies_to_new_handshakes(
    ca: TestCA, echo: EchoServer, server_cert: WorkloadCertificate, client_cert: WorkloadCertificate
) -> None:
    current = {"cert": server_cert}
    server = HboneServer(listen(), lambda: current["cert"], forward_to(echo.port))
    await server.start()
    pool = ConnectionPool(lambda _i: client_cert)
    try:
        a = await pool.connect(make_key(server), "10.0.0.1:80")
        current["cert"] = ca.issue(SERVER_ID)
        b = await pool.connect(PoolKey.of(CLIENT_ID, "127.0.0.3", [SERVER_ID], server.address), "10.0.0.1:80")
        serial_a = a.conn.extra("ssl_object").getpeercert()["serialNumber"]
        serial_b = b.conn.extra("ssl_object").getpeercert()["serialNumber"]
        assert int(serial_a, 16) == server_cert.serial
        assert int(serial_b, 16) == current["cert"].serial
        a.abort()
        b.abort()
    finally:
        await pool.close()
        await server.close()


async def test_keepalive_pings_are_answered_and_a_silent_peer_is_dropped(
    echo: EchoServer, server_cert: WorkloadCertificate, client_cert: WorkloadCertificate
) -> None:
    settings = HboneSettings(keepalive_interval=0.05, keepalive_timeout=0.3)
    mesh = serving(forward_to(echo.port), server_cert, client_cert, pool_settings=settings)
    async with mesh as (server, pool):
        stream = await pool.connect(make_key(server), "10.0.0.1:80")
        conn = stream.conn
        pings = 0
        original = conn._send_ping

        def counting() -> None:
            nonlocal pings
            pings += 1
            original()

        conn._send_ping = counting  # type: ignore[method-assign]
        await wait_until(lambda: pings >= 3)  # each PING was acked, so the next one was scheduled
        assert not conn.closed
        # now the server stops reading: its PING answers stop, and the client drops the connection
        for server_conn in server.connections:
            assert server_conn._transport is not None
            server_conn._transport.pause_reading()
        with pytest.raises(Exception, match="closed"):
            await asyncio.wait_for(stream.read(), 10)
        assert conn.closed


async def test_relay_streams_variant_copies_both_ways_with_half_close(mesh: Mesh) -> None:
    from meshkit.hbone.relay import relay_streams

    stream = await mesh.pool.connect(mesh.key, "10.0.0.1:80")  # tunnel to the echo upstream
    results = []

    async def inbound(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        results.append(await relay_streams(reader, writer, stream))

    local = await asyncio.start_server(inbound, "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection(*local.sockets[0].getsockname()[:2])
        writer.write(b"via streams")
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 10) == b"via streams"
        await close_writer(writer)
        await wait_until(lambda: bool(results))
        assert results[0].sent == results[0].received == len(b"via streams")
        assert results[0].error is None
    finally:
        local.close()
        await local.wait_closed()


async def test_server_close_drains_with_goaway(mesh: Mesh) -> None:
    stream = await mesh.pool.connect(mesh.key, "10.0.0.1:80")
    closing = asyncio.ensure_future(mesh.server.close(grace_s=10))
    await wait_until(lambda: stream.conn.core.goaway_received)
    # the open stream still works during the drain; new streams need a new connection, which is refused
    await stream.send(b"during drain")
    assert await stream.readexactly(12) == b"during drain"
    with pytest.raises(ConnectFailed):
        await mesh.pool.connect(mesh.key, "10.0.0.1:80")
    stream.write_eof()
    assert await stream.read() == b""
    await asyncio.wait_for(closing, 10)  # finished once the last stream ended, well before the grace
    assert not mesh.server.connections


def test_tune_malloc_applies_on_glibc() -> None:
    from meshkit.hbone.tuning import tune_malloc

    assert tune_malloc() is True


async def test_slow_upstream_pushes_back_to_the_client_through_the_relay(
    server_cert: WorkloadCertificate, client_cert: WorkloadCertificate
) -> None:
    release = asyncio.Event()
    total = 48 * 1024 * 1024

    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
        await release.wait()  # the upstream does not read at first
        got = 0
        while chunk := await reader.read(1 << 20):
            got += len(chunk)
        return got

    upstream = Upstream(script)
    settings = HboneSettings()
    sent = 0
    async with tunnel(upstream, server_cert, client_cert) as (server, stream):

        async def produce() -> None:
            nonlocal sent
            block = b"p" * 65536
            while sent < total:
                await stream.send(block)
                sent += len(block)
            stream.write_eof()

        producer = asyncio.ensure_future(produce())
        try:
            (server_stream,) = [s for c in server.connections for s in c.streams.values()]
            # The relay's TCP side toward the silent upstream congests, so it stops reopening the HBONE
            # window; the client's send window runs dry and its send buffer fills: the producer waits in
            # drain().
            await wait_until(
                lambda: (
                    server_stream._acks_paused
                    and stream.conn.core.send_window(stream.stream_id) == 0
                    and not stream.write_ready
                ),
                limit_s=20,
            )
            assert len(stream.pending) < settings.client_max_send_buffer + 65536  # one write past the limit
            # the server holds what one stream window let through, in the relay's TCP transport
            relay_side = server_stream._sink
            assert relay_side is not None
            buffered = relay_side._transport.get_write_buffer_size()  # type: ignore[attr-defined]
            assert buffered <= settings.stream_window + 65536
            assert sent < 24 * 1024 * 1024  # window + send buffer + kernel socket buffers, far below 48 MiB
            assert not producer.done()
            release.set()
            await asyncio.wait_for(producer, 30)
            assert await asyncio.wait_for(upstream.done, 30) == total
        finally:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError, HboneError):
                await producer


async def test_pool_waiters_survive_a_cancelled_dial(mesh: Mesh) -> None:
    first = asyncio.ensure_future(mesh.pool.connect(mesh.key, "10.0.0.1:80"))
    await asyncio.sleep(0)  # the first caller is now dialling
    second = asyncio.ensure_future(mesh.pool.connect(mesh.key, "10.0.0.1:80"))
    await asyncio.sleep(0)  # the second waits for that dial
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    stream = await asyncio.wait_for(second, 10)  # it dialled again instead of inheriting the cancel
    await stream.send(b"ok")
    assert await stream.readexactly(2) == b"ok"
    stream.abort()


async def test_many_streams_on_one_connection_leave_no_state_behind(
    echo: EchoServer, server_cert: WorkloadCertificate, client_cert: WorkloadCertificate
) -> None:
    settings = HboneSettings(pool_max_streams_per_connection=10_000)
    mesh = serving(forward_to(echo.port), server_cert, client_cert, pool_settings=settings)
    async with mesh as (server, pool):
        conn = None
        for i in range(300):
            stream = await pool.connect(make_key(server), "10.0.0.1:80")
            conn = stream.conn
            if i % 3 == 0:
                stream.abort()
                continue
            await stream.send(b"x")
            stream.write_eof()
            assert await stream.readexactly(1) == b"x"
            assert await stream.read() == b""
            await stream.wait_closed()
        assert conn is not None
        (server_conn,) = server.connections
        await wait_until(lambda: not server_conn.streams and not conn.streams)
        assert pool.connections_opened == 1
        assert not conn.core._recv
        assert not server_conn.core._recv
        assert not conn.core._send_open
        assert not server_conn.core._send_open
        # h2 forgets closed streams too (it prunes them when counting open ones)
        assert conn.core.open_outbound_streams == 0
        assert len(conn.core._h2.streams) < 10
        assert server_conn.core.open_inbound_streams == 0
        assert len(server_conn.core._h2.streams) < 10


async def test_streams_reset_with_unread_data_give_the_connection_window_back(
    server_cert: WorkloadCertificate, client_cert: WorkloadCertificate
) -> None:
    chunk = 2 * 1024 * 1024  # eight unread chunks would fill the 16 MiB connection window for good

    async def serve(stream: HboneStream) -> None:
        with contextlib.suppress(HboneError):
            await stream.send(b"u" * chunk)
            await stream.wait_closed()

    async def handler(_peer: InboundPeer, _request: ConnectRequest) -> Decision:
        return Accept(serve)

    async with serving(handler, server_cert, client_cert) as (server, pool):
        for _ in range(12):
            stream = await pool.connect(make_key(server), "10.0.0.1:80")
            await wait_until(lambda: len(stream._rbuf) == chunk)  # noqa: B023 - awaited in this iteration
            stream.abort()  # the client never reads what it was sent
        assert pool.connections_opened == 1
        # and a reset that arrives after the data leaves it readable, while its window is released
        stream = await pool.connect(make_key(server), "10.0.0.1:80")
        await wait_until(lambda: len(stream._rbuf) == chunk)
        (server_stream,) = [s for c in server.connections for s in c.streams.values()]
        server_stream.abort()
        await wait_until(lambda: stream.error is not None)
        assert len(await stream.readexactly(chunk)) == chunk
        with pytest.raises(StreamReset):
            await stream.read()
        assert stream.conn.core._conn_unacked < stream.conn.settings.connection_window // 2


async def test_keepalive_goes_on_while_a_connection_drains(
    echo: EchoServer, server_cert: WorkloadCertificate, client_cert: WorkloadCertificate
) -> None:
    # h2 alone refuses to send PING once a GOAWAY went either way ("SEND_PING in state CLOSED"); a graceful
    # drain keeps the connection open for its streams, so keepalive must keep working on both sides.
    settings = HboneSettings(keepalive_interval=0.02, keepalive_timeout=5)
    server = HboneServer(listen(), lambda: server_cert, forward_to(echo.port), settings)
    await server.start()
    pool = ConnectionPool(lambda _i: client_cert, settings=settings)
    try:
        stream = await pool.connect(make_key(server), "10.0.0.1:80")
        (server_conn,) = server.connections
        server_conn.goaway()
        await wait_until(lambda: stream.conn.core.goaway_received)
        pings = {"client": 0, "server": 0}
        for side, conn in (("client", stream.conn), ("server", server_conn)):
            original = conn._send_ping

            def counting(side: str = side, original: Callable[[], None] = original) -> None:
                pings[side] += 1
                original()

            conn._send_ping = counting  # type: ignore[method-assign]
        # each PING is sent only after the previous one was answered
        await wait_until(lambda: min(pings.values()) >= 3)
        assert not stream.conn.closed
        assert not server_conn.closed
        await stream.send(b"alive")
        assert await stream.readexactly(5) == b"alive"
        stream.write_eof()
        assert await stream.read() == b""
    finally:
        await pool.close()
        await server.close()


class _UnreadTransport:
    """Just enough of an asyncio transport for an HboneConnection whose peer never reads what we write."""

    def __init__(self) -> None:
        self.buffered = 0
        self.reading = True
        self.closing = False

    def get_extra_info(self, _name: str, default: object = None) -> object:
        return default

    def write(self, data: bytes) -> None:
        self.buffered += len(data)

    def writelines(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    abort = close


async def test_a_peer_that_never_reads_cannot_grow_our_buffer_with_pings() -> None:
    conn = HboneConnection(client_side=False, settings=HboneSettings(keepalive_interval=0))
    transport = _UnreadTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]

    def feed(data: bytes) -> None:
        view = memoryview(data)
        while view:
            buf = conn.get_buffer(len(view))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            conn.buffer_updated(n)
            view = view[n:]

    feed(PREFACE + frame_header(0, 0x4, 0, 0))
    conn.pause_writing()  # what the transport does once its buffer passes its high-water mark
    paused_at = transport.buffered
    burst = (frame_header(8, 0x6, 0, 0) + b"12345678") * 1000  # each PING costs us a 17-byte ACK
    for _ in range(1000):  # 17 MB of PINGs, if nothing stopped us reading
        if not transport.is_reading():
            break
        feed(burst)
    assert not transport.is_reading()
    assert transport.buffered <= paused_at + CONTROL_SLACK + len(burst)
    conn.resume_writing()  # the peer read: so do we again
    assert transport.is_reading()
    conn.connection_lost(None)


async def test_rapid_reset_cannot_start_unbounded_handler_work(
    server_cert: WorkloadCertificate, client_cert: WorkloadCertificate
) -> None:
    # CVE-2023-44487: HEADERS then RST_STREAM at once, over and over. Reset streams stop counting against
    # SETTINGS_MAX_CONCURRENT_STREAMS, but each would leave a handler (policy, an upstream connect) behind.
    release = asyncio.Event()
    started = 0

    async def handler(_peer: InboundPeer, _request: ConnectRequest) -> Decision:
        nonlocal started
        started += 1
        await release.wait()
        return Reject(503)

    settings = HboneSettings(server_max_concurrent_streams=10)
    async with serving(handler, server_cert, client_cert, server_settings=settings) as (server, pool):
        conn = (await pool._checkout(make_key(server))).conn  # a connection; no CONNECT answer awaited
        codes: list[int] = []
        terminated = conn._terminated

        def record(event: ev.ConnectionTerminated) -> None:
            codes.append(event.error_code)
            terminated(event)

        conn._terminated = record  # type: ignore[method-assign]
        for _ in range(200):
            if not conn.usable:
                break
            conn.open_stream("10.0.0.1:80").abort()
        await wait_until(lambda: conn.closed)
        assert codes == [ErrorCodes.ENHANCE_YOUR_CALM]
        assert 10 < started <= 10 + MAX_PENDING_RESETS
        release.set()
