"""Double HBONE (behaviour.md §2.9): an HBONE connection whose TCP is itself an HBONE tunnel.

Multi-network traffic goes through the remote network's east/west gateway: an *outer* CONNECT (pooled,
mTLS to the gateway's identity, ``:authority`` = service hostname:port) carries a fresh *inner* mTLS
handshake to the final identities (the service's SANs) and an *inner* CONNECT with the same authority plus
``x-forwarded-network``. The gateway forwards the inner bytes opaquely. Inner connections are not pooled.

:class:`StreamTransport` presents an :class:`HboneStream` as an asyncio transport, so the stdlib's
``SSLProtocol`` can run TLS over it (on asyncio and uvloop alike) with an :class:`HboneConnection` on top.
Closing the inner connection half-closes the outer stream; a reset outer stream fails the inner connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from asyncio import sslproto
from collections.abc import Collection
from typing import Any

from meshkit.hbone import tls
from meshkit.hbone.connection import HboneConnection
from meshkit.hbone.errors import ConnectFailed, HboneError, IdentityError
from meshkit.hbone.pool import ConnectionPool, PoolKey
from meshkit.hbone.settings import HboneSettings
from meshkit.hbone.stream import HboneStream
from meshkit.identity.certs import WorkloadCertificate
from meshkit.identity.spiffe import Identity

__all__ = ["StreamTransport", "connect_double"]


class StreamTransport(asyncio.Transport):
    """An HBONE stream as a byte transport (the stream's sink), for TLS inside a tunnel."""

    def __init__(self, stream: HboneStream, protocol: asyncio.BaseProtocol) -> None:
        super().__init__()
        self._stream = stream
        self._protocol = protocol
        self._closing = False
        self._lost = False
        self._write_paused = False
        self._loop = asyncio.get_running_loop()
        stream.set_sink(self)

    # the outer stream's sink ---------------------------------------------------------------------------

    def stream_data(self, data: memoryview) -> None:
        if self._closing:
            return
        protocol = self._protocol
        if isinstance(protocol, asyncio.BufferedProtocol):
            while data:
                buf = memoryview(protocol.get_buffer(len(data)))
                n = min(len(buf), len(data))
                buf[:n] = data[:n]
                protocol.buffer_updated(n)
                data = data[n:]
        elif isinstance(protocol, asyncio.Protocol):
            protocol.data_received(bytes(data))

    def stream_eof(self) -> None:
        keep_open = isinstance(self._protocol, asyncio.Protocol | asyncio.BufferedProtocol) and bool(
            self._protocol.eof_received()
        )
        if not keep_open:
            self.close()

    def stream_failed(self, exc: HboneError) -> None:
        self._connection_lost(exc)

    # asyncio.Transport -----------------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._stream.finished:
            return
        self._stream.write(data)
        if not self._stream.write_ready and not self._write_paused:
            self._write_paused = True
            self._protocol.pause_writing()
            self._stream.when_writable(self._resume_writing)

    def _resume_writing(self) -> None:
        if self._write_paused:
            self._write_paused = False
            self._protocol.resume_writing()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def write_eof(self) -> None:
        self._stream.write_eof()

    def can_write_eof(self) -> bool:
        return True

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._stream.write_eof()
            self._loop.call_soon(self._connection_lost, None)

    def abort(self) -> None:
        self._closing = True
        self._stream.abort()
        self._connection_lost(None)

    def _force_close(self, exc: BaseException | None) -> None:  # called by asyncio's SSLProtocol
        self._closing = True
        self._stream.abort()
        self._connection_lost(exc)

    def _connection_lost(self, exc: BaseException | None) -> None:
        if not self._lost:
            self._lost = True
            self._closing = True
            self._protocol.connection_lost(exc if isinstance(exc, Exception) or exc is None else None)

    def pause_reading(self) -> None:
        self._stream.pause_reading()

    def resume_reading(self) -> None:
        self._stream.resume_reading()

    def is_reading(self) -> bool:
        return not self._closing

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def get_write_buffer_size(self) -> int:
        return len(self._stream.pending)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        conn = self._stream.conn
        if name == "peername":
            return conn.peer_address
        if name == "sockname":
            return conn.local_address
        return default


async def connect_double(
    pool: ConnectionPool,
    outer_key: PoolKey,
    authority: str,
    inner_certificate: WorkloadCertificate,
    inner_identities: Collection[Identity],
    *,
    outer_headers: list[tuple[str, str]] | None = None,
    inner_headers: list[tuple[str, str]] | None = None,
    settings: HboneSettings | None = None,
) -> HboneStream:
    """Open a double-HBONE tunnel and return the inner stream (after the inner 200).

    ``outer_key`` dials the gateway (expected identity: the gateway's); ``inner_identities`` are the service
    SANs the final server must present; ``inner_headers`` should carry ``x-forwarded-network``.
    """
    settings = settings or pool.settings
    outer = await pool.connect(outer_key, authority, outer_headers)
    loop = asyncio.get_running_loop()
    handshake: asyncio.Future[None] = loop.create_future()
    opened: list[HboneStream] = []

    def on_stream_count(c: HboneConnection) -> None:
        if opened and not c.streams:
            c.close()  # one inner tunnel per inner connection: done with it

    conn = HboneConnection(
        client_side=True,
        settings=settings,
        verify=lambda sslobj: tls.verify_server_identity(sslobj, inner_identities),
        on_stream_count=on_stream_count,
        name=f"inner->{authority}",
    )
    protocol = sslproto.SSLProtocol(
        loop,
        conn,
        tls.client_context(inner_certificate),
        handshake,
        server_side=False,
        server_hostname=None,  # no SNI, as for any HBONE hop
        ssl_handshake_timeout=settings.connect_timeout,  # type: ignore[arg-type]  # seconds, float is fine
    )
    transport = StreamTransport(outer, protocol)
    protocol.connection_made(transport)
    try:
        async with asyncio.timeout(settings.connect_timeout):
            await handshake
            inner = conn.open_stream(authority, inner_headers)  # raises if the identity check failed
            opened.append(inner)
            await inner.response()
    except BaseException as exc:
        with contextlib.suppress(Exception):
            transport.abort()
        if isinstance(conn.error, IdentityError):
            raise conn.error from None  # the handshake's waiter only saw the abort that followed it
        if isinstance(exc, IdentityError | ConnectFailed) or not isinstance(exc, Exception):
            raise
        if isinstance(exc, OSError | TimeoutError | HboneError):
            raise ConnectFailed(f"inner HBONE to {authority} via {outer_key.dst} failed: {exc}") from exc
        raise
    return inner
