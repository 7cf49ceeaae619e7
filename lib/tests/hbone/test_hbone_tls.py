"""TLS contexts and identity checks, over real handshakes (behaviour.md §2.2-§2.4)."""

from __future__ import annotations

import asyncio
import ssl

import pytest
from meshkit.hbone import tls
from meshkit.hbone.errors import ConnectFailed, IdentityError
from meshkit.hbone.pool import ConnectionPool, PoolKey
from meshkit.hbone.server import HboneServer
from meshkit.hbone.testing import TestCA
from meshkit.identity.certs import WorkloadCertificate
from meshkit.identity.spiffe import Identity

from .conftest import CLIENT_ID, SERVER_ID, EchoServer, forward_to, listen


def test_contexts_are_tls13_gcm_h2(
    server_cert: WorkloadCertificate, client_cert: WorkloadCertificate
) -> None:
    for ctx in (tls.server_context(server_cert), tls.client_context(client_cert)):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.maximum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        suites = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.3"}
        assert suites == {"TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256"}
    assert not tls.client_context(client_cert).check_hostname


async def _serve(server_cert: WorkloadCertificate, echo: EchoServer) -> HboneServer:
    server = HboneServer(listen(), lambda: server_cert, forward_to(echo.port))
    await server.start()
    return server


async def _openssl(port: int, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-alpn", "h2", *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    return proc.returncode or 0, out.decode(errors="replace")


async def test_server_refuses_chacha20_and_tls12(server_cert: WorkloadCertificate, echo: EchoServer) -> None:
    server = await _serve(server_cert, echo)
    try:
        port = server.address[1]
        code, out = await _openssl(port, "-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256")
        assert "Cipher is (NONE)" in out or code != 0
        code, out = await _openssl(port, "-tls1_2")
        assert "Cipher is (NONE)" in out or code != 0
        code, out = await _openssl(port, "-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256")
        assert "TLS_AES_128_GCM_SHA256" in out  # handshake proceeds to the client-cert demand
    finally:
        await server.close()


def _pool(cert: WorkloadCertificate) -> ConnectionPool:
    return ConnectionPool(lambda _ident: cert)


async def test_client_rejects_unexpected_server_identity(
    server_cert: WorkloadCertificate, client_cert: WorkloadCertificate, echo: EchoServer
) -> None:
    server = await _serve(server_cert, echo)
    pool = _pool(client_cert)
    try:
        wrong = Identity("cluster.local", "ns1", "someone-else")
        with pytest.raises(IdentityError, match="not one of the expected"):
            await pool.connect(PoolKey.of(CLIENT_ID, "127.0.0.1", [wrong], server.address), "10.0.0.1:80")
        assert pool.connection_count() == 0
        # one of several expected identities is enough
        ok = PoolKey.of(CLIENT_ID, "127.0.0.1", [wrong, SERVER_ID], server.address)
        stream = await pool.connect(ok, "10.0.0.1:80")
        stream.abort()
    finally:
        await pool.close()
        await server.close()


async def test_server_rejects_client_from_foreign_root(
    server_cert: WorkloadCertificate, echo: EchoServer
) -> None:
    foreign = TestCA(name="foreign root")
    # the client trusts our root (so it would accept the server) but presents a foreign-issued cert
    client = foreign.issue(CLIENT_ID, extra_roots_pem=server_cert.roots_pem)
    server = await _serve(server_cert, echo)
    pool = _pool(client)
    try:
        key = PoolKey.of(CLIENT_ID, "127.0.0.1", [SERVER_ID], server.address)
        with pytest.raises((ConnectFailed, IdentityError)):
            await pool.connect(key, "1.1.1.1:1")
        assert not server.connections  # the failed handshake left nothing behind
    finally:
        await pool.close()
        await server.close()


async def test_client_rejects_server_from_foreign_root(
    client_cert: WorkloadCertificate, echo: EchoServer
) -> None:
    foreign = TestCA(name="foreign root")
    server = await _serve(foreign.issue(SERVER_ID, extra_roots_pem=client_cert.roots_pem), echo)
    pool = _pool(client_cert)
    try:
        with pytest.raises(ConnectFailed, match="TLS handshake"):
            await pool.connect(PoolKey.of(CLIENT_ID, "127.0.0.1", [SERVER_ID], server.address), "1.1.1.1:1")
    finally:
        await pool.close()
        await server.close()


async def test_server_rejects_client_of_another_trust_domain(
    ca: TestCA, server_cert: WorkloadCertificate, echo: EchoServer
) -> None:
    client = ca.issue(uris=["spiffe://other.domain/ns/a/sa/b"])
    server = await _serve(server_cert, echo)
    pool = _pool(client)
    try:
        with pytest.raises((ConnectFailed, IdentityError)):
            await pool.connect(
                PoolKey.of(client.identity, "127.0.0.1", [SERVER_ID], server.address), "1.1.1.1:1"
            )
    finally:
        await pool.close()
        await server.close()


async def test_server_requires_a_client_certificate(
    server_cert: WorkloadCertificate, echo: EchoServer
) -> None:
    server = await _serve(server_cert, echo)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=server_cert.roots_pem.decode())
    ctx.set_alpn_protocols(["h2"])
    try:
        reader, writer = await asyncio.open_connection(*server.address, ssl=ctx, server_hostname="")
        # TLS 1.3 completes the client's side first; the server then sends an alert and closes: the
        # client never sees the server's HTTP/2 SETTINGS
        try:
            data = await asyncio.wait_for(reader.read(100), 10)
        except (ssl.SSLError, ConnectionResetError):
            data = b""
        assert data == b""
        writer.close()
        assert not any(c.peer_identity for c in server.connections)
    finally:
        await server.close()


def test_peer_identity_is_the_first_spiffe_san(ca: TestCA) -> None:
    cert = ca.issue(
        uris=["https://example.com/x", "spiffe://cluster.local/ns/a/sa/first", "spiffe://td/ns/b/sa/c"]
    )
    ids = _handshake_ids(ca, cert)
    assert ids == Identity("cluster.local", "a", "first")


def _handshake_ids(ca: TestCA, client: WorkloadCertificate) -> Identity:
    import socket
    import threading

    server_ctx = tls.server_context(ca.issue(SERVER_ID))
    client_ctx = tls.client_context(client)
    a, b = socket.socketpair()
    result: list[Identity] = []

    def run_server() -> None:
        with server_ctx.wrap_socket(a, server_side=True) as ss:
            result.append(tls.peer_identity(ss))

    thread = threading.Thread(target=run_server)
    thread.start()
    with client_ctx.wrap_socket(b, server_hostname=None) as cs:
        assert cs.selected_alpn_protocol() == "h2"
        assert cs.version() == "TLSv1.3"
        tls.verify_server_identity(cs, [SERVER_ID])
    thread.join(10)
    return result[0]
