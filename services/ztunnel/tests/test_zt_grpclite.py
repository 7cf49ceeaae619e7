"""ztunnel.grpclite against grpc.aio: bidirectional streaming, status codes, keepalive on a dead peer."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from ztunnel import grpclite
from ztunnel.grpclite import Channel, GrpcError

TlsMaterial = Callable[..., tuple[bytes, bytes, bytes]]


async def echo_stream(
    requests: AsyncIterator[bytes], _context: grpc.aio.ServicerContext
) -> AsyncIterator[bytes]:
    async for item in requests:
        if item == b"fail":
            raise ValueError("boom")
        yield item.upper()


async def serve() -> tuple[grpc.aio.Server, int]:
    handler = grpc.stream_stream_rpc_method_handler(echo_stream)  # raw bytes both ways
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Echo", {"Chat": handler})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def test_bidi_stream_and_large_messages() -> None:
    server, port = await serve()
    channel = await Channel.open(f"http://127.0.0.1:{port}")
    try:
        call = channel.stream("/test.Echo/Chat")
        big = b"x" * (3 * 1024 * 1024)  # beyond one window and many frames
        for message in (b"a", b"bc", big):
            await call.send(message)
            assert await asyncio.wait_for(call.recv(), 10) == message.upper()
        await call.send(b"", end=True)
        assert await asyncio.wait_for(call.recv(), 10) == b""
        assert await asyncio.wait_for(call.recv(), 10) is None  # clean end: status OK
    finally:
        channel.close()
        await server.stop(None)


async def test_error_status_and_unknown_method() -> None:
    server, port = await serve()
    channel = await Channel.open(f"http://127.0.0.1:{port}")
    try:
        call = channel.stream("/test.Echo/Chat")
        await call.send(b"fail")
        with pytest.raises(GrpcError) as info:
            await asyncio.wait_for(call.recv(), 10)
        assert info.value.code == 2  # UNKNOWN: the handler raised
        with pytest.raises(GrpcError) as info:
            await channel.unary("/test.Echo/Nope", b"x")
        assert info.value.code == 12  # UNIMPLEMENTED
    finally:
        channel.close()
        await server.stop(None)


async def test_keepalive_detects_a_silent_peer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grpclite, "KEEPALIVE_S", 0.05)
    monkeypatch.setattr(grpclite, "KEEPALIVE_TIMEOUT_S", 0.05)
    silent: list[asyncio.StreamWriter] = []

    async def accept(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        silent.append(writer)  # accepts and never answers anything

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    channel = await Channel.open(f"http://127.0.0.1:{port}")
    try:
        call = channel.stream("/x.Y/Z")
        with pytest.raises(GrpcError, match="keepalive"):
            await asyncio.wait_for(call.recv(), 10)
    finally:
        channel.close()
        for writer in silent:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_tls_with_alpn_and_hostname_check(tls_material: TlsMaterial) -> None:
    root, cert, key = tls_material()
    handler = grpc.stream_stream_rpc_method_handler(echo_stream)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Echo", {"Chat": handler})])
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
    await server.start()
    try:
        channel = await Channel.open(f"127.0.0.1:{port}", root, server_name="localhost")
        try:
            call = channel.stream("/test.Echo/Chat")
            await call.send(b"secure")
            assert await asyncio.wait_for(call.recv(), 10) == b"SECURE"
        finally:
            channel.close()
        with pytest.raises(OSError):  # ssl.SSLCertVerificationError: the name does not match
            await Channel.open(f"127.0.0.1:{port}", root, server_name="istiod.example")
    finally:
        await server.stop(None)


async def test_hostname_in_the_common_name_only_is_refused(tls_material: TlsMaterial) -> None:
    root, cert, key = tls_material(common_name_only=True)
    server = grpc.aio.server()
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
    await server.start()
    try:
        with pytest.raises(ssl.SSLCertVerificationError, match=r"Hostname mismatch|hostname"):
            await Channel.open(f"127.0.0.1:{port}", root, server_name="localhost")
    finally:
        await server.stop(None)


async def test_plaintext_channel_never_sends_a_token() -> None:
    seen: list[dict[str, str]] = []

    async def record(_request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        seen.append(dict(context.invocation_metadata() or ()))  # type: ignore[arg-type]
        return b"ok"

    handler = grpc.unary_unary_rpc_method_handler(record)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Echo", {"Who": handler})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = await Channel.open(f"http://127.0.0.1:{port}")
    try:
        metadata = [("authorization", "Bearer secret"), ("clusterid", "c1")]
        assert await channel.unary("/test.Echo/Who", b"x", metadata) == b"ok"
    finally:
        channel.close()
        await server.stop(None)
    assert "authorization" not in seen[0]
    assert seen[0]["clusterid"] == "c1"


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("istiod.istio-system.svc:15012", ("istiod.istio-system.svc:15012", True)),
        ("https://istiod:15012/", ("istiod:15012", True)),
        ("http://127.0.0.1:15010", ("127.0.0.1:15010", False)),
    ],
)
def test_tls_comes_from_the_scheme(address: str, expected: tuple[str, bool]) -> None:
    assert grpclite.parse_address(address) == expected


def test_unknown_scheme_and_empty_root_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(grpclite.ConfigError, match="scheme"):
        grpclite.parse_address("tcp://istiod:15012")
    with pytest.raises(grpclite.ConfigError, match="XDS_ROOT_CA is empty"):
        grpclite.read_root("", "XDS_ROOT_CA", "istiod:15012")
    with pytest.raises(grpclite.ConfigError, match="cannot read"):
        grpclite.read_root(str(tmp_path / "missing.pem"), "XDS_ROOT_CA", "istiod:15012")
    assert grpclite.read_root("SYSTEM", "XDS_ROOT_CA", "istiod:15012") is None  # the OS trust store
