"""The client connection pool: pooled HBONE connections keyed as upstream ztunnel does (behaviour.md §2.8).

Key: (source identity, source IP, expected destination identities, destination address). A connection
carries at most ``pool_max_streams_per_connection`` streams in its life (and never more at once than the
peer's SETTINGS_MAX_CONCURRENT_STREAMS); then it leaves the pool, finishes its streams and closes, and the
next stream opens a new connection, so connections per key are unbounded. A connection is never handed out
again once it failed, got a GOAWAY, or was built with a certificate that is no longer the identity's current
one (rotation: new streams go to a new connection, old streams finish on the old one). A pooled connection
with no streams for ``pool_unused_release_timeout`` is closed.

Sockets come from an injected :data:`Connector` (ztunnel dials from the pod netns with mark 1337); the
certificate for the source identity from an injected :data:`CertProvider`, read at every stream open.
Concurrent opens for a key with no usable connection share one dial.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

from meshkit.hbone import tls
from meshkit.hbone.connection import HboneConnection
from meshkit.hbone.errors import ConnectFailed, ConnectionClosed, HboneError, IdentityError, StreamReset
from meshkit.hbone.request import format_authority
from meshkit.hbone.settings import HboneSettings
from meshkit.hbone.stream import HboneStream
from meshkit.identity.certs import WorkloadCertificate
from meshkit.identity.spiffe import Identity
from meshkit.logs import kv
from meshkit.sockets import HostSocketFactory, open_tcp

__all__ = ["CertProvider", "ConnectionPool", "Connector", "PoolKey", "host_connector"]

log = logging.getLogger("hbone")


@dataclass(frozen=True, slots=True)
class PoolKey:
    """Upstream's ``WorkloadKey``: who connects, from where, to whom we expect, and where we dial."""

    src_identity: Identity
    src_ip: str
    dst_identities: frozenset[Identity]
    dst: tuple[str, int]

    @classmethod
    def of(
        cls, src_identity: Identity, src_ip: str, dst_identities: Collection[Identity], dst: tuple[str, int]
    ) -> PoolKey:
        return cls(src_identity, src_ip, frozenset(dst_identities), (dst[0], dst[1]))


Connector = Callable[[PoolKey], Awaitable[socket.socket]]
CertProvider = Callable[[Identity], WorkloadCertificate]


def host_connector() -> Connector:
    """Dial ``key.dst`` from the host network namespace (tests, benchmarks)."""
    factory = HostSocketFactory()

    async def connect(key: PoolKey) -> socket.socket:
        return await open_tcp(factory, *key.dst)

    return connect


class _Pooled:
    __slots__ = ("cert", "conn", "idle_timer", "key", "opened")

    def __init__(self, key: PoolKey, conn: HboneConnection, cert: WorkloadCertificate) -> None:
        self.key = key
        self.conn = conn
        self.cert = cert
        self.opened = 0
        self.idle_timer: asyncio.TimerHandle | None = None


class ConnectionPool:
    """Opens HBONE streams over pooled connections."""

    def __init__(
        self,
        certificate: CertProvider,
        connector: Connector | None = None,
        settings: HboneSettings | None = None,
        *,
        name: str = "hbone-pool",
    ) -> None:
        self.settings = settings or HboneSettings()
        self.name = name
        self._certificate = certificate
        self._connector = connector or host_connector()
        self._contexts = tls.ContextCache(tls.client_context)
        self._pool: dict[PoolKey, list[_Pooled]] = {}
        self._all: dict[HboneConnection, _Pooled] = {}
        self._dialing: dict[PoolKey, asyncio.Future[_Pooled]] = {}
        self.connections_opened = 0
        self._closed = False

    # -- public -----------------------------------------------------------------------------------------

    def connection_count(self, key: PoolKey | None = None) -> int:
        """Open connections (pooled or retired-but-busy), for ``key`` or in total."""
        return sum(1 for p in self._all.values() if key is None or p.key == key)

    async def connect(
        self, key: PoolKey, authority: str | tuple[str, int], headers: list[tuple[str, str]] | None = None
    ) -> HboneStream:
        """Open a CONNECT stream to ``authority`` (``ip:port``) and wait for 200.

        Raises :class:`ConnectFailed` (with ``status`` for a non-200 answer) or :class:`IdentityError`.
        """
        if not isinstance(authority, str):
            authority = format_authority(*authority)
        timeout = self.settings.connect_timeout
        stream: HboneStream | None = None
        try:
            async with asyncio.timeout(timeout):
                pooled = await self._checkout(key)
                stream = pooled.conn.open_stream(authority, headers)
                self._count_stream(pooled)
                await stream.response()
        except BaseException as exc:
            if stream is not None:
                stream.abort()
            if isinstance(exc, TimeoutError):
                raise ConnectFailed(f"HBONE connect to {key.dst} timed out after {timeout}s") from None
            if isinstance(exc, ConnectionClosed | StreamReset):
                # e.g. the server dropped us after the handshake (TLS 1.3 checks client certs late)
                raise ConnectFailed(f"HBONE connect to {key.dst} failed before an answer: {exc}") from exc
            raise
        return stream

    async def close(self) -> None:
        """Close every connection (streams on them fail)."""
        self._closed = True
        for pooled in list(self._all.values()):
            pooled.conn.close()
            pooled.conn.abort()
        for pooled in list(self._all.values()):
            await pooled.conn.wait_closed()
        for fut in self._dialing.values():
            fut.cancel()

    # -- checkout -----------------------------------------------------------------------------------------

    def _limit(self, pooled: _Pooled) -> bool:
        """True while ``pooled`` may take another stream."""
        conn = pooled.conn
        return (
            conn.usable
            and pooled.opened < self.settings.pool_max_streams_per_connection
            and conn.core.open_outbound_streams < conn.core.peer_max_concurrent_streams
        )

    async def _checkout(self, key: PoolKey) -> _Pooled:
        while True:
            if self._closed:
                raise HboneError("connection pool is closed")
            cert = self._certificate(key.src_identity)
            for pooled in list(self._pool.get(key, ())):
                if pooled.cert != cert or not self._limit(pooled):
                    self._retire(pooled)
                    continue
                return pooled
            dialing = self._dialing.get(key)
            if dialing is None:
                dialing = asyncio.get_running_loop().create_future()
                self._dialing[key] = dialing
                try:
                    pooled = await self._dial(key, cert)
                except Exception as exc:
                    dialing.set_exception(exc)
                    dialing.exception()  # retrieved: the waiters, if any, re-raise it themselves
                    raise
                except BaseException:
                    dialing.cancel()  # the dialer was cancelled: waiters dial again themselves
                    raise
                finally:
                    self._dialing.pop(key, None)
                dialing.set_result(pooled)
                return pooled
            try:
                await asyncio.shield(dialing)  # then re-check: the new connection may already be full
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if dialing.cancelled() and task is not None and not task.cancelling():
                    continue
                raise

    async def _dial(self, key: PoolKey, cert: WorkloadCertificate) -> _Pooled:
        ctx = self._contexts.get(cert)
        try:
            sock = await self._connector(key)
        except OSError as exc:
            raise ConnectFailed(
                f"connect to {key.dst} failed: {exc} "
                f"(maybe a NetworkPolicy is blocking HBONE port {key.dst[1]})"
            ) from exc

        def verify(sslobj: ssl.SSLObject) -> Identity:
            return tls.verify_server_identity(sslobj, key.dst_identities)

        def factory() -> HboneConnection:
            return HboneConnection(
                client_side=True,
                settings=self.settings,
                verify=verify,
                on_close=self._on_close,
                on_stream_count=self._on_stream_count,
                name=f"{self.name}->{key.dst[0]}:{key.dst[1]}",
            )

        loop = asyncio.get_running_loop()
        try:
            _transport, conn = await loop.create_connection(
                factory,
                sock=sock,
                ssl=ctx,
                server_hostname="",
                ssl_handshake_timeout=self.settings.connect_timeout,
            )
        except (OSError, ssl.SSLError) as exc:
            sock.close()
            raise ConnectFailed(f"TLS handshake with {key.dst} failed: {exc}") from exc
        if conn.error is not None:
            if isinstance(conn.error, IdentityError):
                raise conn.error
            raise ConnectFailed(f"HBONE connection to {key.dst} rejected: {conn.error}")
        pooled = _Pooled(key, conn, cert)
        self._pool.setdefault(key, []).append(pooled)
        self._all[conn] = pooled
        self.connections_opened += 1
        log.debug("HBONE connection opened", extra=kv(pool=self.name, dst=key.dst, src=str(key.src_identity)))
        return pooled

    # -- bookkeeping --------------------------------------------------------------------------------------

    def _count_stream(self, pooled: _Pooled) -> None:
        pooled.opened += 1
        if pooled.idle_timer is not None:
            pooled.idle_timer.cancel()
            pooled.idle_timer = None
        if pooled.opened >= self.settings.pool_max_streams_per_connection:
            self._retire(pooled)

    def _retire(self, pooled: _Pooled) -> None:
        """Take ``pooled`` out of the pool; it closes when its last stream ends."""
        conns = self._pool.get(pooled.key)
        if conns is not None and pooled in conns:
            conns.remove(pooled)
            if not conns:
                del self._pool[pooled.key]
        if not pooled.conn.streams:
            pooled.conn.close()

    def _in_pool(self, pooled: _Pooled) -> bool:
        return pooled in self._pool.get(pooled.key, ())

    def _on_stream_count(self, conn: HboneConnection) -> None:
        pooled = self._all.get(conn)
        if pooled is None:
            return
        if not conn.usable:
            self._retire(pooled)
            return
        if conn.streams:
            return
        if not self._in_pool(pooled):
            conn.close()
        elif pooled.idle_timer is None and self.settings.pool_unused_release_timeout > 0:
            loop = asyncio.get_running_loop()
            pooled.idle_timer = loop.call_later(
                self.settings.pool_unused_release_timeout, self._release_idle, pooled
            )

    def _release_idle(self, pooled: _Pooled) -> None:
        pooled.idle_timer = None
        if not pooled.conn.streams:
            log.debug("HBONE idle connection released", extra=kv(pool=self.name, dst=pooled.key.dst))
            self._retire(pooled)

    def _on_close(self, conn: HboneConnection) -> None:
        pooled = self._all.pop(conn, None)
        if pooled is None:
            return
        if pooled.idle_timer is not None:
            pooled.idle_timer.cancel()
        conns = self._pool.get(pooled.key)
        if conns is not None and pooled in conns:
            conns.remove(pooled)
            if not conns:
                del self._pool[pooled.key]
