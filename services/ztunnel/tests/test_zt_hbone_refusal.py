"""A pod whose certificate went away (expired while the CA is unreachable, or its workload removed) refuses
new HBONE handshakes cleanly: the client sees a failed connect, ztunnel logs one info line, and nothing
escapes as an error (a LookupError used to surface from the server's per-connection and SNI callbacks)."""

from __future__ import annotations

import logging
import socket

import pytest
from meshkit.hbone.errors import ConnectFailed
from meshkit.hbone.pool import ConnectionPool, PoolKey
from meshkit.hbone.server import Accept
from meshkit.hbone.stream import HboneStream
from meshkit.hbone.testing import TestCA
from meshkit.identity.certs import WorkloadCertificate
from meshkit.identity.spiffe import Identity
from ztunnel.proxy.hbone_server import DrainableHboneServer

SRC = Identity("cluster.local", "default", "client")
DST = Identity("cluster.local", "default", "server")


@pytest.mark.parametrize(
    ("still_found", "message"),
    [
        (0, "connection refused: no certificate"),  # gone before the connection is accepted
        (1, "handshake refused: no certificate"),  # gone between the accept and the TLS handshake
    ],
)
async def test_missing_certificate_refuses_handshakes_cleanly(
    caplog: pytest.LogCaptureFixture, still_found: int, message: str
) -> None:
    ca = TestCA()
    server_cert, client_cert = ca.issue(DST), ca.issue(SRC)
    gone = False
    lookups = 0

    def certificate() -> WorkloadCertificate | None:
        nonlocal lookups
        if gone:
            lookups += 1
            if lookups > still_found:
                return None
        return server_cert

    async def serve(stream: HboneStream) -> None:
        stream.close()

    sock = socket.create_server(("127.0.0.1", 0))
    server = DrainableHboneServer(sock, certificate, lambda _peer, _req: Accept(serve), name="hbone-test")
    await server.start()
    pool = ConnectionPool(lambda _id: client_cert)
    key = PoolKey.of(SRC, "127.0.0.1", [DST], sock.getsockname())
    try:
        gone = True  # the certificate goes away while the server runs
        caplog.set_level(logging.DEBUG)
        with pytest.raises(ConnectFailed):
            await pool.connect(key, "127.0.0.1:8080", [])
    finally:
        await pool.close()
        await server.close()
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert errors == [], [r.getMessage() for r in errors]
    assert any(message in r.getMessage() for r in caplog.records)
