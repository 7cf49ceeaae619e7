"""Double HBONE (behaviour.md §2.9): inner mTLS + CONNECT through an outer tunnel to an east/west gateway."""

from __future__ import annotations

import asyncio

import pytest
from meshkit.hbone.double import connect_double
from meshkit.hbone.errors import ConnectFailed, IdentityError
from meshkit.hbone.pool import ConnectionPool, PoolKey
from meshkit.hbone.request import ConnectRequest
from meshkit.hbone.server import HboneServer, InboundPeer
from meshkit.hbone.testing import TestCA
from meshkit.identity.certs import WorkloadCertificate
from meshkit.identity.spiffe import Identity

from .conftest import CLIENT_ID, EchoServer, forward_to, listen, wait_until

GATEWAY_ID = Identity("cluster.local", "istio-system", "eastwest-gateway")
FINAL_ID = Identity("cluster.local", "ns1", "reviews")
AUTHORITY = "reviews.ns1.svc.cluster.local:9080"


async def test_double_hbone_round_trip(
    ca: TestCA, echo: EchoServer, client_cert: WorkloadCertificate
) -> None:
    seen: list[tuple[InboundPeer, ConnectRequest]] = []
    final = HboneServer(listen(), lambda: ca.issue(FINAL_ID), forward_to(echo.port, seen))
    await final.start()
    outer_seen: list[tuple[InboundPeer, ConnectRequest]] = []
    # the gateway forwards the tunnel's bytes opaquely to the final server's HBONE port
    gateway = HboneServer(listen(), lambda: ca.issue(GATEWAY_ID), forward_to(final.address[1], outer_seen))
    await gateway.start()
    pool = ConnectionPool(lambda _i: client_cert)
    try:
        outer_key = PoolKey.of(CLIENT_ID, "127.0.0.1", [GATEWAY_ID], gateway.address)
        inner = await connect_double(
            pool,
            outer_key,
            AUTHORITY,
            client_cert,
            [FINAL_ID],
            inner_headers=[("x-forwarded-network", "net1")],
        )
        await inner.send(b"across networks")
        inner.write_eof()
        assert await inner.readexactly(15) == b"across networks"
        assert await inner.read() == b""
        # both hops saw the client's identity and the service authority; only the inner one the network
        (outer_peer, outer_request), (inner_peer, inner_request) = outer_seen[0], seen[0]
        assert outer_peer.identity == inner_peer.identity == CLIENT_ID
        assert str(outer_request.authority) == str(inner_request.authority) == AUTHORITY
        assert inner_request.forwarded_network == "net1"
        assert outer_request.forwarded_network is None
        # the inner connection closes with its stream, which ends the outer stream too
        await wait_until(lambda: inner.conn.closed)
        await wait_until(lambda: not any(c.streams for c in gateway.connections))
    finally:
        await pool.close()
        await gateway.close()
        await final.close()


async def test_double_hbone_checks_the_final_identity(
    ca: TestCA, echo: EchoServer, client_cert: WorkloadCertificate
) -> None:
    final = HboneServer(listen(), lambda: ca.issue(FINAL_ID), forward_to(echo.port))
    await final.start()
    gateway = HboneServer(listen(), lambda: ca.issue(GATEWAY_ID), forward_to(final.address[1]))
    await gateway.start()
    pool = ConnectionPool(lambda _i: client_cert)
    try:
        outer_key = PoolKey.of(CLIENT_ID, "127.0.0.1", [GATEWAY_ID], gateway.address)
        wrong = Identity("cluster.local", "ns1", "ratings")
        with pytest.raises(IdentityError):
            await connect_double(pool, outer_key, AUTHORITY, client_cert, [wrong])
        await wait_until(lambda: not any(c.streams for c in gateway.connections))
        # a gateway that cannot reach the final server answers 503 on the outer hop
        await final.close()
        with pytest.raises(ConnectFailed) as info:
            await connect_double(pool, outer_key, AUTHORITY, client_cert, [FINAL_ID])
        assert info.value.status == 503
    finally:
        await pool.close()
        await gateway.close()
        await final.close()
        await asyncio.sleep(0)
