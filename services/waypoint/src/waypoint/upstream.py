"""Upstream side of the waypoint: HTTP/1.1 exchanges over HBONE tunnels to endpoint pods, kept alive.

Each endpoint (``podIP:targetPort``) gets a small free-list of open tunnels carrying HTTP/1.1 keep-alive
connections; a tunnel is one CONNECT stream on the HBONE :class:`~meshkit.hbone.pool.ConnectionPool`
(``podIP:15008``, ``:authority = podIP:targetPort``, the waypoint's own certificate), so the TLS handshake
and the CONNECT are paid once per connection, not per request (python-perf.md §5).

Failures are classified for the retry policy and the response flags (Envoy's names):
``connect-failure`` (UF: dial, TLS, non-200 CONNECT), ``reset`` (UC: the tunnel ended before a full
response), ``timeout`` (UT). A reused keep-alive tunnel that the backend had already closed fails as
``reset`` *before sending anything back*; the caller retries that once on a fresh tunnel.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from meshkit.hbone.errors import ConnectFailed, HboneError, IdentityError
from meshkit.hbone.stream import HboneStream

from waypoint.http1 import BadMessage, Response, ResponseParser
from waypoint.tlsstream import TlsStream

__all__ = ["StreamOpener", "UpstreamError", "UpstreamPool", "relay_streams"]

log = logging.getLogger("waypoint.upstream")

#: Opens a tunnel to ``(address, target port)``; raises ConnectFailed/IdentityError/OSError.
StreamOpener = Callable[[str, int], Awaitable[HboneStream]]


class UpstreamError(Exception):
    """An exchange with a backend failed; ``kind`` is connect-failure, reset or timeout."""

    def __init__(self, kind: str, detail: str, *, reused: bool = False, sent: bool = True) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.reused = reused

    @property
    def flag(self) -> str:
        return {"connect-failure": "UF", "reset": "UC", "timeout": "UT"}.get(self.kind, "UF")


@dataclass(slots=True)
class _Tunnel:
    stream: HboneStream | TlsStream
    requests: int = 0


class UpstreamPool:
    """Keep-alive HTTP/1.1 tunnels per endpoint."""

    def __init__(self, opener: StreamOpener, max_idle_per_endpoint: int = 64) -> None:
        self._open = opener
        self._idle: dict[tuple[str, int, int], list[_Tunnel]] = {}
        self._max_idle = max_idle_per_endpoint
        self.opened = 0

    async def exchange(
        self,
        address: str,
        port: int,
        data: bytes,
        *,
        head: bool = False,
        tls: ssl.SSLContext | None = None,
        sni: str = "",
        max_requests: int = 0,
    ) -> Response:
        """Send one serialized request and return the response (raises :class:`UpstreamError`).

        ``tls``: originate TLS to the app inside the tunnel (DestinationRule SIMPLE).
        """
        key = (address, port, id(tls) if tls is not None else 0)
        tunnel, reused = self._take(key), True
        if tunnel is None:
            tunnel, reused = await self._dial(address, port, tls, sni), False
        try:
            resp, reusable = await self._roundtrip(tunnel, data, head)
        except UpstreamError as exc:
            exc.reused = reused
            tunnel.stream.abort()
            raise
        except BaseException:
            tunnel.stream.abort()  # cancelled (timeout): the tunnel is mid-exchange, never reuse it
            raise
        tunnel.requests += 1
        if max_requests and tunnel.requests >= max_requests:
            reusable = False  # DestinationRule maxRequestsPerConnection
        if reusable and not tunnel.stream.finished and len(self._idle.setdefault(key, [])) < self._max_idle:
            self._idle[key].append(tunnel)
        else:
            tunnel.stream.write_eof()
            if not tunnel.stream.finished:
                tunnel.stream.abort()
        return resp

    def _take(self, key: tuple[str, int, int]) -> _Tunnel | None:
        idle = self._idle.get(key)
        while idle:
            tunnel = idle.pop()
            if not tunnel.stream.finished and tunnel.stream.error is None:
                return tunnel
        return None

    async def _dial(self, address: str, port: int, tls: ssl.SSLContext | None, sni: str) -> _Tunnel:
        try:
            stream = await self._open(address, port)
        except (ConnectFailed, IdentityError, OSError, HboneError) as exc:
            raise UpstreamError("connect-failure", str(exc) or type(exc).__name__, sent=False) from exc
        self.opened += 1
        if tls is None:
            return _Tunnel(stream)
        wrapped = TlsStream(stream, tls, sni=sni)
        try:
            await wrapped.handshake()
        except (ssl.SSLError, HboneError) as exc:
            stream.abort()
            raise UpstreamError("connect-failure", f"TLS to the app failed: {exc}", sent=False) from exc
        return _Tunnel(wrapped)

    async def _roundtrip(self, tunnel: _Tunnel, data: bytes, head: bool) -> tuple[Response, bool]:
        stream = tunnel.stream
        parser = ResponseParser(head_only=head)
        try:
            stream.write(data)
            while True:
                chunk = await stream.read()
                if not chunk:
                    done = parser.feed_eof()
                    if done:
                        return done[0], False
                    raise UpstreamError("reset", "upstream closed the connection before a full response")
                done = parser.feed(chunk)
                if done:
                    resp = done[0]
                    return resp, resp.keep_alive and not head
        except HboneError as exc:
            raise UpstreamError("reset", f"upstream reset: {exc}") from exc
        except BadMessage as exc:
            raise UpstreamError("reset", f"bad upstream response: {exc}") from exc

    def prune(self, keep: set[str]) -> None:
        """Close idle tunnels to endpoint addresses that are no longer in the config."""
        for key in [k for k in self._idle if k[0] not in keep]:
            for tunnel in self._idle.pop(key):
                tunnel.stream.abort()

    def close(self) -> None:
        for tunnels in self._idle.values():
            for tunnel in tunnels:
                tunnel.stream.abort()
        self._idle.clear()


async def relay_streams(a: HboneStream, b: HboneStream, first: bytes = b"") -> tuple[int, int]:
    """Copy bytes both ways between two HBONE streams until both directions end (TCP passthrough).

    Returns (bytes a→b, bytes b→a). A reset on either side aborts the other.
    """
    if first:
        b.write(first)

    async def pump(src: HboneStream, dst: HboneStream) -> int:
        n = 0
        while chunk := await src.read():
            n += len(chunk)
            dst.write(chunk)
            await dst.drain()
        dst.write_eof()
        return n

    failed = False
    try:
        async with asyncio.TaskGroup() as group:
            up = group.create_task(pump(a, b))
            down = group.create_task(pump(b, a))
    except* HboneError:
        failed = True
    if failed:
        a.abort()
        b.abort()
        return a.bytes_received, b.bytes_received
    return up.result() + len(first), down.result()
