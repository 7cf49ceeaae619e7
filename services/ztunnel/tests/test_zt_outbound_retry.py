"""The outbound proxy retries an HBONE connect once only when a pooled connection died under it (the peer
closed or reset before answering, e.g. its GOAWAY race during a handover), never when the peer is
unreachable: a refused TCP connect, a failed TLS handshake or a timeout fail at once (a black-holed peer used
to cost two full connect timeouts)."""

from __future__ import annotations

import socket
import time
from types import SimpleNamespace

import pytest
from meshkit.hbone.errors import ConnectFailed, ConnectionClosed, StreamReset
from meshkit.hbone.pool import ConnectionPool, PoolKey
from meshkit.hbone.settings import HboneSettings
from meshkit.hbone.stream import HboneStream
from meshkit.hbone.testing import TestCA
from meshkit.identity.spiffe import Identity
from meshkit.sockets import HostSocketFactory, open_tcp
from ztunnel.proxy.outbound import OutboundProxy

SRC = Identity("cluster.local", "default", "client")
DST = Identity("cluster.local", "default", "server")
PLAN = SimpleNamespace(authority="10.0.0.9:8080")


def outbound(pool: object) -> OutboundProxy:
    return OutboundProxy(None, pool)  # type: ignore[arg-type]  # _open uses only the pool


class CountingConnector:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, key: PoolKey) -> socket.socket:
        self.calls += 1
        return await open_tcp(HostSocketFactory(), *key.dst)  # as a pod's connector does, on the host


def real_pool(connector: CountingConnector, timeout_s: float = 10.0) -> ConnectionPool:
    ca = TestCA()
    cert = ca.issue(SRC)
    return ConnectionPool(lambda _id: cert, connector, HboneSettings(connect_timeout=timeout_s))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_refused_connect_is_not_retried() -> None:
    connector = CountingConnector()
    pool = real_pool(connector)
    key = PoolKey.of(SRC, "127.0.0.1", [DST], ("127.0.0.1", free_port()))
    try:
        with pytest.raises(ConnectFailed):
            await outbound(pool)._open(key, PLAN, [])  # type: ignore[arg-type]
    finally:
        await pool.close()
    assert connector.calls == 1


async def test_black_holed_peer_costs_one_timeout() -> None:
    listener = socket.create_server(("127.0.0.1", 0))  # accepts into the backlog, never answers TLS
    connector = CountingConnector()
    pool = real_pool(connector, timeout_s=1.0)
    key = PoolKey.of(SRC, "127.0.0.1", [DST], listener.getsockname())
    started = time.monotonic()
    try:
        with pytest.raises(ConnectFailed, match="timed out"):
            await outbound(pool)._open(key, PLAN, [])  # type: ignore[arg-type]
    finally:
        await pool.close()
        listener.close()
    assert connector.calls == 1
    assert time.monotonic() - started < 1.9  # one timeout, not two


class ScriptedPool:
    """``connect`` raises the scripted errors in turn, then answers (which errors retry is pure logic)."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def connect(self, key: PoolKey, authority: str, headers: object) -> HboneStream:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "stream"  # type: ignore[return-value]


def wrapped(cause: BaseException | None, status: int = 0) -> ConnectFailed:
    exc = ConnectFailed("connect failed", status)
    exc.__cause__ = cause
    return exc


KEY = PoolKey.of(SRC, "10.0.0.1", [DST], ("10.0.0.9", 15008))


@pytest.mark.parametrize("cause", [ConnectionClosed("peer went away"), StreamReset(7, remote=True)])
async def test_pooled_connection_dying_under_us_is_retried_once(cause: BaseException) -> None:
    pool = ScriptedPool(wrapped(cause))
    assert await outbound(pool)._open(KEY, PLAN, []) == "stream"  # type: ignore[arg-type, comparison-overlap]
    assert pool.calls == 2
    twice = ScriptedPool(wrapped(cause), wrapped(cause))
    with pytest.raises(ConnectFailed):
        await outbound(twice)._open(KEY, PLAN, [])  # type: ignore[arg-type]
    assert twice.calls == 2  # once only


@pytest.mark.parametrize(
    "error",
    [
        wrapped(ConnectionRefusedError("refused")),
        wrapped(OSError("TLS handshake failed")),
        wrapped(None),  # the connect timeout
        wrapped(None, status=503),
    ],
)
async def test_other_connect_failures_are_not_retried(error: ConnectFailed) -> None:
    pool = ScriptedPool(error)
    with pytest.raises(ConnectFailed):
        await outbound(pool)._open(KEY, PLAN, [])  # type: ignore[arg-type]
    assert pool.calls == 1
