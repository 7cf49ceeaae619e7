"""Shared fixtures for HBONE tests: a test CA, certificates, and a running server + pool on loopback.

Every async test here runs twice: on asyncio's loop and on uvloop (ztunnel's and the waypoint's loop), whose
transports differ (no asyncio base classes, their own SSL layer, pseudo-sockets).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import pytest_asyncio
import uvloop
from meshkit.hbone.pool import ConnectionPool, PoolKey
from meshkit.hbone.request import ConnectRequest
from meshkit.hbone.server import Decision, Forward, HboneServer, InboundPeer
from meshkit.hbone.settings import HboneSettings
from meshkit.hbone.testing import TestCA
from meshkit.identity.certs import WorkloadCertificate
from meshkit.identity.spiffe import Identity


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


SERVER_ID = Identity("cluster.local", "ns1", "server")
CLIENT_ID = Identity("cluster.local", "ns2", "client")


@pytest.fixture(scope="session")
def ca() -> TestCA:
    return TestCA()


@pytest.fixture(scope="session")
def server_cert(ca: TestCA) -> WorkloadCertificate:
    return ca.issue(SERVER_ID)


@pytest.fixture(scope="session")
def client_cert(ca: TestCA) -> WorkloadCertificate:
    return ca.issue(CLIENT_ID)


def listen() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


class EchoServer:
    """A plain TCP echo upstream that half-closes when its peer does."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0
        self.writers: set[asyncio.StreamWriter] = set()
        self.handlers_done = 0

    async def __aenter__(self) -> EchoServer:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.writers.add(writer)
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
                writer.write_eof()
                await writer.drain()
            except OSError:
                pass
            finally:
                self.writers.discard(writer)
                self.handlers_done += 1
                writer.close()

        self.server = await asyncio.start_server(echo, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        await self.server.wait_closed()


Handler = Callable[[InboundPeer, ConnectRequest], Awaitable[Decision]]


async def close_writer(writer: asyncio.StreamWriter) -> None:
    """Close and wait until the transport is really closed: one left for the loop's teardown is garbage
    collected later with a ResourceWarning (an error under this suite's warning filter)."""
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 10)


async def wait_until(cond: Callable[[], bool], limit_s: float = 10.0) -> None:
    """Wait (bounded) for protocol state that has no event of its own, e.g. a window filling up."""
    async with asyncio.timeout(limit_s):
        while not cond():  # noqa: ASYNC110 - the states polled here have no asyncio.Event to wait on
            await asyncio.sleep(0.005)


def forward_to(port: int, seen: list[tuple[InboundPeer, ConnectRequest]] | None = None) -> Handler:
    """A handler that forwards every CONNECT to 127.0.0.1:``port`` regardless of authority."""

    async def handler(peer: InboundPeer, request: ConnectRequest) -> Decision:
        if seen is not None:
            seen.append((peer, request))

        async def connect() -> socket.socket:
            sock = socket.socket()
            sock.setblocking(False)
            try:
                await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
            except BaseException:
                sock.close()
                raise
            return sock

        return Forward(connect)

    return handler


@contextlib.asynccontextmanager
async def serving(
    handler: Handler,
    server_cert: WorkloadCertificate,
    client_certs: WorkloadCertificate | dict[Identity, WorkloadCertificate],
    *,
    server_settings: HboneSettings | None = None,
    pool_settings: HboneSettings | None = None,
) -> AsyncIterator[tuple[HboneServer, ConnectionPool]]:
    """A running server with ``handler`` and a pool presenting ``client_certs`` (one, or per identity)."""
    server = HboneServer(listen(), lambda: server_cert, handler, server_settings)
    await server.start()
    certs = client_certs

    def certificate(identity: Identity) -> WorkloadCertificate:
        return certs if isinstance(certs, WorkloadCertificate) else certs[identity]

    pool = ConnectionPool(certificate, settings=pool_settings)
    try:
        yield server, pool
    finally:
        await pool.close()
        await server.close()


@dataclass
class Mesh:
    """A server and a pool that trusts it, on loopback."""

    server: HboneServer
    pool: ConnectionPool
    key: PoolKey
    certs: dict[Identity, WorkloadCertificate] = field(default_factory=dict)


@pytest_asyncio.fixture
async def echo() -> AsyncIterator[EchoServer]:
    async with EchoServer() as server:
        yield server


def make_key(server: HboneServer, expected: Identity = SERVER_ID) -> PoolKey:
    return PoolKey.of(CLIENT_ID, "127.0.0.1", [expected], server.address)


@pytest_asyncio.fixture
async def mesh(
    echo: EchoServer, server_cert: WorkloadCertificate, client_cert: WorkloadCertificate
) -> AsyncIterator[Mesh]:
    settings = HboneSettings()
    server = HboneServer(listen(), lambda: server_cert, forward_to(echo.port), settings)
    await server.start()
    certs = {CLIENT_ID: client_cert}
    pool = ConnectionPool(lambda ident: certs[ident], settings=settings)
    try:
        yield Mesh(server, pool, make_key(server), certs)
    finally:
        await pool.close()
        await server.close()
