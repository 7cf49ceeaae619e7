"""TLS contexts and identity checks, over real handshakes (behaviour.md §2.2-§2.4)."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from meshkit.hbone import tls
from meshkit.hbone.errors import ConnectFailed, HboneError, IdentityError
from meshkit.hbone.pool import ConnectionPool, PoolKey
from meshkit.hbone.server import HboneServer
from meshkit.hbone.testing import TestCA
from meshkit.identity.certs import WorkloadCertificate
from meshkit.identity.spiffe import Identity

from .conftest import CLIENT_ID, SERVER_ID, EchoServer, close_writer, forward_to, listen, serving


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
    async with serving(forward_to(echo.port), server_cert, client_cert) as (server, pool):
        wrong = Identity("cluster.local", "ns1", "someone-else")
        with pytest.raises(IdentityError, match="not one of the expected"):
            await pool.connect(PoolKey.of(CLIENT_ID, "127.0.0.1", [wrong], server.address), "10.0.0.1:80")
        assert pool.connection_count() == 0
        # one of several expected identities is enough
        ok = PoolKey.of(CLIENT_ID, "127.0.0.1", [wrong, SERVER_ID], server.address)
        stream = await pool.connect(ok, "10.0.0.1:80")
        stream.abort()


async def test_server_rejects_client_from_foreign_root(
    server_cert: WorkloadCertificate, echo: EchoServer
) -> None:
    foreign = TestCA(name="foreign root")
    # the client trusts our root (so it would accept the server) but presents a foreign-issued cert
    client = foreign.issue(CLIENT_ID, extra_roots_pem=server_cert.roots_pem)
    async with serving(forward_to(echo.port), server_cert, client) as (server, pool):
        key = PoolKey.of(CLIENT_ID, "127.0.0.1", [SERVER_ID], server.address)
        with pytest.raises((ConnectFailed, IdentityError)):
            await pool.connect(key, "1.1.1.1:1")
        assert not server.connections  # the failed handshake left nothing behind


async def test_client_rejects_server_from_foreign_root(
    client_cert: WorkloadCertificate, echo: EchoServer
) -> None:
    foreign = TestCA(name="foreign root")
    async with serving(
        forward_to(echo.port), foreign.issue(SERVER_ID, extra_roots_pem=client_cert.roots_pem), client_cert
    ) as (server, pool):
        with pytest.raises(ConnectFailed, match="TLS handshake"):
            await pool.connect(PoolKey.of(CLIENT_ID, "127.0.0.1", [SERVER_ID], server.address), "1.1.1.1:1")


async def test_server_rejects_client_of_another_trust_domain(
    ca: TestCA, server_cert: WorkloadCertificate, echo: EchoServer
) -> None:
    client = ca.issue(uris=["spiffe://other.domain/ns/a/sa/b"])
    async with serving(forward_to(echo.port), server_cert, client) as (server, pool):
        with pytest.raises((ConnectFailed, IdentityError)):
            await pool.connect(
                PoolKey.of(client.identity, "127.0.0.1", [SERVER_ID], server.address), "1.1.1.1:1"
            )


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
        await close_writer(writer)
        assert not any(c.peer_identity for c in server.connections)
    finally:
        await server.close()


def _handshake(
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    on_server: Callable[[ssl.SSLSocket], object],
    on_client: Callable[[ssl.SSLSocket], object],
) -> tuple[object, object]:
    """A real TLS handshake over a socket pair; returns what each callback returned (or raised)."""
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    results: dict[str, object] = {}

    def call(side: str, fn: Callable[[ssl.SSLSocket], object], sock: ssl.SSLSocket) -> None:
        try:
            results[side] = fn(sock)
        except Exception as exc:
            results[side] = exc

    def run_server() -> None:
        try:
            with server_ctx.wrap_socket(a, server_side=True) as ss:
                call("server", on_server, ss)
                ss.sendall(b"!")  # after any NewSessionTicket: the client reads past them
        except (ssl.SSLError, OSError) as exc:
            results.setdefault("server", exc)

    thread = threading.Thread(target=run_server)
    thread.start()
    try:
        with client_ctx.wrap_socket(b, server_hostname=None) as cs:
            assert cs.recv(1) == b"!"
            call("client", on_client, cs)
    finally:
        thread.join(10)
    return results["server"], results["client"]


def _verify_server(ca: TestCA, server: WorkloadCertificate, expected: list[Identity]) -> object:
    client = ca.issue(CLIENT_ID)
    _, outcome = _handshake(
        tls.server_context(server),
        tls.client_context(client),
        lambda _ss: None,
        lambda cs: tls.verify_server_identity(cs, expected),
    )
    return outcome


def _verify_client(ca: TestCA, client: WorkloadCertificate) -> object:
    outcome, _ = _handshake(
        tls.server_context(ca.issue(SERVER_ID)),
        tls.client_context(client),
        lambda ss: tls.verify_client_identity(ss, "cluster.local"),
        lambda _cs: None,
    )
    return outcome


def test_peer_identity_is_the_first_spiffe_san(ca: TestCA) -> None:
    cert = ca.issue(
        uris=["https://example.com/x", "spiffe://cluster.local/ns/a/sa/first", "spiffe://td/ns/b/sa/c"]
    )
    assert _verify_client(ca, cert) == Identity("cluster.local", "a", "first")


def test_client_accepts_a_server_when_any_of_its_spiffe_sans_is_expected(ca: TestCA) -> None:
    # upstream's verifier: at least one URI SAN equals an expected identity; the others do not matter
    two = ca.issue(uris=["spiffe://cluster.local/ns/x/sa/other", SERVER_ID.uri])
    assert _verify_server(ca, two, [SERVER_ID]) == SERVER_ID
    # the same certificate does not pass for an identity it does not carry
    outcome = _verify_server(ca, two, [Identity("cluster.local", "ns1", "third")])
    assert isinstance(outcome, IdentityError)


@pytest.mark.parametrize(
    ("uris", "dns"),
    [
        ([], []),  # no SAN at all
        ([], ["server.ns1.svc.cluster.local"]),  # a DNS SAN only
        (["https://server.ns1/sa/server"], []),  # a URI that is not SPIFFE
        (["spiffe://cluster.local/ns1/server"], []),  # SPIFFE, but not Istio's five segments
        (["spiffe://other.domain/ns/ns1/sa/server"], []),  # same names, another trust domain
    ],
)
def test_client_rejects_a_server_without_the_expected_spiffe_san(
    ca: TestCA, uris: list[str], dns: list[str]
) -> None:
    server = ca.issue(SERVER_ID, uris=uris, dns=dns)
    assert isinstance(_verify_server(ca, server, [SERVER_ID]), IdentityError)
    assert isinstance(_verify_server(ca, ca.issue(SERVER_ID), []), IdentityError)  # nothing expected


@pytest.mark.parametrize(
    ("uris", "dns"),
    [([], []), ([], ["client.ns2"]), (["https://client.ns2"], []), (["spiffe://other.domain/ns/a/sa/b"], [])],
)
def test_server_rejects_a_client_without_a_spiffe_san_in_its_trust_domain(
    ca: TestCA, uris: list[str], dns: list[str]
) -> None:
    outcome = _verify_client(ca, ca.issue(CLIENT_ID, uris=uris, dns=dns))
    assert isinstance(outcome, IdentityError)
    # any SPIFFE SAN in our trust domain lets it in (upstream: any); the identity is still the first one
    mixed = ca.issue(uris=["spiffe://other.domain/ns/a/sa/b", CLIENT_ID.uri])
    assert _verify_client(ca, mixed) == Identity("other.domain", "a", "b")


def test_server_sends_no_session_tickets(ca: TestCA) -> None:
    server, client = ca.issue(SERVER_ID), ca.issue(CLIENT_ID)
    ticketing = tls.client_context(client)
    ticketing.options &= ~ssl.OP_NO_TICKET  # a client that would take tickets

    def has_ticket(cs: ssl.SSLSocket) -> bool:
        return cs.session is not None and cs.session.has_ticket

    control = tls.server_context(server)
    control.num_tickets = 2
    assert _handshake(control, ticketing, lambda _ss: None, has_ticket)[1] is True  # the probe works
    assert _handshake(tls.server_context(server), ticketing, lambda _ss: None, has_ticket)[1] is False
    assert tls.client_context(client).options & ssl.OP_NO_TICKET


class _HangUp(asyncio.Protocol):
    """Closes each connection once its TLS handshake is done."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


async def test_client_sends_no_sni(
    server_cert: WorkloadCertificate, client_cert: WorkloadCertificate
) -> None:
    names: list[str | None] = []
    ctx = tls.server_context(server_cert)
    ctx.sni_callback = lambda _sslobj, name, _ctx: names.append(name)  # OpenSSL runs it with or without SNI

    loop = asyncio.get_running_loop()
    server = await loop.create_server(_HangUp, sock=listen(), ssl=ctx)
    pool = _pool(client_cert)
    try:
        with pytest.raises(HboneError):
            await pool.connect(
                PoolKey.of(CLIENT_ID, "127.0.0.1", [SERVER_ID], server.sockets[0].getsockname()), "1.1.1.1:1"
            )
        assert names == [None]
    finally:
        await pool.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("found", "message"),
    [
        (0, "HBONE connection refused: no certificate"),  # none when the connection is accepted
        (1, "HBONE handshake refused: no certificate"),  # gone between the accept and the handshake
    ],
)
async def test_certificate_provider_refuses_connections_while_it_has_none(
    caplog: pytest.LogCaptureFixture, ca: TestCA, echo: EchoServer, found: int, message: str
) -> None:
    server_cert, client_cert = ca.issue(SERVER_ID), ca.issue(CLIENT_ID)
    lookups: list[int] = []  # counts the provider's calls while "gone" is set
    gone = False

    def certificate() -> WorkloadCertificate | None:
        if not gone:
            return server_cert
        lookups.append(1)
        return server_cert if len(lookups) <= found else None

    server = HboneServer(listen(), certificate, forward_to(echo.port))
    await server.start()
    pool = _pool(client_cert)
    key = PoolKey.of(CLIENT_ID, "127.0.0.1", [SERVER_ID], server.address)
    caplog.set_level(logging.DEBUG)
    try:
        gone = True
        with pytest.raises(ConnectFailed):
            await pool.connect(key, "1.1.1.1:1")
        assert not server.connections
        gone = False  # the certificate is back: the next connection is served
        stream = await pool.connect(key, "1.1.1.1:1")
        stream.abort()
    finally:
        await pool.close()
        await server.close()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert message in [r.getMessage() for r in caplog.records]


async def _s_server(
    cert: WorkloadCertificate, tmp: Path, suite: str
) -> tuple[asyncio.subprocess.Process, int]:
    (tmp / "c.pem").write_bytes(cert.chain_pem)
    (tmp / "k.pem").write_bytes(cert.private_key_pem)
    # s_server stops at EOF on its stdin: the pipe stays open until the test kills it
    proc = await asyncio.create_subprocess_exec(
        "openssl", "s_server", "-accept", "127.0.0.1:0",
        "-cert", str(tmp / "c.pem"), "-key", str(tmp / "k.pem"),
        "-tls1_3", "-ciphersuites", suite, "-alpn", "h2", "-naccept", "1",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    async with asyncio.timeout(20):
        while not (line := await proc.stdout.readline()).startswith(b"ACCEPT"):
            assert line, "openssl s_server did not start"
    return proc, int(line.rsplit(b":", 1)[1])


@pytest.mark.parametrize(
    ("suite", "ok"), [("TLS_CHACHA20_POLY1305_SHA256", False), ("TLS_AES_128_GCM_SHA256", True)]
)
async def test_client_offers_only_aes_gcm(
    server_cert: WorkloadCertificate, client_cert: WorkloadCertificate, tmp_path: Path, suite: str, ok: bool
) -> None:
    proc, port = await _s_server(server_cert, tmp_path, suite)
    try:
        ctx = tls.client_context(client_cert)
        if ok:
            _reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="")
            assert writer.get_extra_info("ssl_object").cipher()[0] == suite
            await close_writer(writer)
        else:
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="")
            assert proc.stdout is not None
            said = await asyncio.wait_for(proc.stdout.read(), 20)
            assert b"no shared cipher" in said, said
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()


class _NoopLibssl:
    """Stands in for libssl: finds the options right, 'succeeds' at setting suites and changes nothing."""

    def __init__(self, options: int) -> None:
        self.options = options

    def SSL_CTX_get_options(self, _pointer: int) -> int:
        return self.options

    def SSL_CTX_set_ciphersuites(self, _pointer: int, _suites: bytes) -> int:
        return 1


def test_suite_restriction_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # libssl said yes but nothing changed: the check on get_ciphers() raises
    monkeypatch.setattr(tls, "_LIBSSL", _NoopLibssl(int(fresh.options)))
    with pytest.raises(RuntimeError, match="not restricted"):
        tls._restrict_tls13_suites(fresh)
    # a pointer that is not this context's SSL_CTX is never written through
    monkeypatch.setattr(tls, "_LIBSSL", _NoopLibssl(int(fresh.options) ^ 1))
    with pytest.raises(RuntimeError, match="not its own"):
        tls._restrict_tls13_suites(fresh)
    monkeypatch.undo()
    tls._restrict_tls13_suites(fresh)  # the real libssl restricts it
    assert {c["name"] for c in fresh.get_ciphers() if c["protocol"] == "TLSv1.3"} == set(tls.TLS13_SUITES)


def test_negotiated_parameters_are_checked_per_connection(ca: TestCA) -> None:
    server, client = ca.issue(SERVER_ID), ca.issue(CLIENT_ID)
    _, outcome = _handshake(
        tls.server_context(server), tls.client_context(client), lambda _ss: None, tls.check_negotiated
    )
    assert outcome is None

    class Chacha:
        def version(self) -> str:
            return "TLSv1.3"

        def cipher(self) -> tuple[str, str, int]:
            return ("TLS_CHACHA20_POLY1305_SHA256", "TLSv1.3", 256)

    with pytest.raises(HboneError, match="CHACHA20"):
        tls.check_negotiated(Chacha())  # type: ignore[arg-type]
