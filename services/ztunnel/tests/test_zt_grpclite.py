"""ztunnel.grpclite against grpc.aio: bidirectional streaming, status codes, keepalive on a dead peer."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import grpc
import pytest
from ztunnel import grpclite
from ztunnel.grpclite import Channel, GrpcError


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
    channel = await Channel.open(f"127.0.0.1:{port}", None)
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
    channel = await Channel.open(f"127.0.0.1:{port}", None)
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
    channel = await Channel.open(f"127.0.0.1:{port}", None)
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


def _tls_material(common_name_only: bool = False) -> tuple[bytes, bytes, bytes]:
    """(root PEM, server cert PEM for DNS name localhost, server key PEM); ``common_name_only``: the name is
    only in the subject CN (no SAN), which a client must not accept (RFC 6125 / upstream's rustls)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test istiod root")])
    root = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(1).not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder().issuer_name(ca_name).public_key(key.public_key())
        .serial_number(2).not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
    )  # fmt: skip
    if common_name_only:
        builder = builder.subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
    else:
        builder = builder.subject_name(x509.Name([])).add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=True
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return root.public_bytes(pem), cert.public_bytes(pem), key_pem


async def test_tls_with_alpn_and_hostname_check() -> None:
    root, cert, key = _tls_material()
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


async def test_hostname_in_the_common_name_only_is_refused() -> None:
    root, cert, key = _tls_material(common_name_only=True)
    server = grpc.aio.server()
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
    await server.start()
    try:
        with pytest.raises(ssl.SSLCertVerificationError, match=r"Hostname mismatch|hostname"):
            await Channel.open(f"127.0.0.1:{port}", root, server_name="localhost")
    finally:
        await server.stop(None)
