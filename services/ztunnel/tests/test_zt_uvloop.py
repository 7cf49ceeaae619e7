"""ztunnel runs on uvloop (``python -m ztunnel``): its protocols must work with uvloop's transports, which are
not ``asyncio.Transport`` subclasses. These tests run with asserts on (pytest), on a uvloop loop."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
import uvloop
from ztunnel.grpclite import Channel
from ztunnel.proxy.tcp_relay import relay_tcp


def _pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    for sock in (client, accepted):
        sock.setblocking(False)
    return client, accepted


def test_grpclite_channel_opens_on_uvloop() -> None:
    async def main() -> bytes:
        got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            got.set_result(await reader.readexactly(24))
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        channel = await Channel.open(f"http://127.0.0.1:{port}")
        try:
            assert channel.transport is not None
            return await asyncio.wait_for(got, 5)
        finally:
            channel.close()
            server.close()
            await server.wait_closed()

    assert uvloop.run(main()) == b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def test_tcp_relay_on_uvloop() -> None:
    async def main() -> tuple[bytes, bytes, int, int]:
        loop = asyncio.get_running_loop()
        app, down = _pair()  # app <-> ztunnel's downstream side
        up, srv = _pair()  # ztunnel's upstream side <-> server
        task = asyncio.ensure_future(relay_tcp(down, up))
        try:
            await loop.sock_sendall(app, b"ping")
            request = await asyncio.wait_for(loop.sock_recv(srv, 16), 5)
            await loop.sock_sendall(srv, b"pong!")
            response = await asyncio.wait_for(loop.sock_recv(app, 16), 5)
            app.shutdown(socket.SHUT_WR)
            srv.shutdown(socket.SHUT_WR)
            result = await asyncio.wait_for(task, 5)
        finally:
            app.close()
            srv.close()
        return request, response, result.up, result.down

    assert uvloop.run(main()) == (b"ping", b"pong!", 4, 5)


def test_tcp_relay_keeps_bytes_intact_under_backpressure_on_uvloop() -> None:
    """Megabytes through the relay to a slow reader: uvloop keeps a reference to what it could not write at
    once, so the relay must not hand it its reused read buffer (the bytes would be overwritten)."""
    payload = bytes(i % 251 for i in range(8 * 1024 * 1024))

    async def main() -> bytes:
        loop = asyncio.get_running_loop()
        app, down = _pair()
        up, srv = _pair()
        task = asyncio.ensure_future(relay_tcp(down, up))
        received = bytearray()

        async def read_slowly() -> None:
            while chunk := await loop.sock_recv(srv, 4096):
                received.extend(chunk)
                if len(received) % (256 * 1024) < 4096:
                    await asyncio.sleep(0.01)  # a slow reader, so the relay's writes queue up

        reader = asyncio.ensure_future(read_slowly())
        try:
            await asyncio.wait_for(loop.sock_sendall(app, payload), 60)
            app.shutdown(socket.SHUT_WR)
            await asyncio.wait_for(reader, 60)
            srv.shutdown(socket.SHUT_WR)
            await asyncio.wait_for(task, 10)
        finally:
            reader.cancel()
            app.close()
            srv.close()
        return bytes(received)

    assert uvloop.run(main()) == payload


def _rst(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def _sees_reset(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bool:
    try:
        return await asyncio.wait_for(loop.sock_recv(sock, 16), 5) == b""
    except ConnectionResetError:
        return True


@pytest.mark.parametrize("early", [True, False], ids=["before-the-relay", "mid-stream"])
def test_tcp_relay_carries_a_client_reset_on_uvloop(early: bool) -> None:
    """The client resets (before the relay attached both sides, or while relaying): the relay must end and
    reset the server side, not hang with the upstream connection open."""

    async def main() -> tuple[str | None, bool]:
        loop = asyncio.get_running_loop()
        app, down = _pair()
        up, srv = _pair()
        try:
            if early:
                _rst(app)
                await asyncio.sleep(0.05)  # let the RST arrive before the relay starts
            task = asyncio.ensure_future(relay_tcp(down, up))
            if not early:
                await loop.sock_sendall(app, b"x")
                assert await asyncio.wait_for(loop.sock_recv(srv, 16), 5) == b"x"
                _rst(app)
            result = await asyncio.wait_for(task, 5)
            return result.error, await _sees_reset(loop, srv)
        finally:
            app.close()
            srv.close()

    error, reset = uvloop.run(main())
    assert error is not None
    assert reset
