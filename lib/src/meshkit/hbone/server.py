"""The HBONE server (inbound 15008): mTLS, one handler call per CONNECT, then relay (behaviour.md §2.4, §2.7).

The caller gives a listening socket (ztunnel opens it inside the pod netns through its SocketFactory), a
callable returning the current server certificate, and a :data:`Handler`. For each CONNECT the server
validates method and ``:authority`` (400 otherwise), then awaits ``handler(peer, request)`` which returns:

- :class:`Reject` → that status (401 for a policy deny, 400/503 for the other §2.7 steps);
- :class:`Forward` → the server calls ``connect()`` (bounded by ``upstream_connect_timeout``); failure → 503;
  success → 200 (with ``response_headers``, e.g. baggage), then :func:`~meshkit.hbone.relay.relay`, then
  ``on_done(RelayResult)`` for telemetry;
- :class:`Accept` → 200, then ``serve(stream)`` owns the stream (the waypoint terminates tunnels this way).

A handler (or a ``Forward.connect``) that raises gets 503; an ``Accept.serve`` that raises resets its
stream. The client certificate must chain to the roots and carry a SPIFFE SAN in our trust domain, or the TLS
connection is dropped before any stream. A rotated server certificate is picked up by the next handshake
(the context is swapped in the handshake's servername callback, which OpenSSL runs whether or not the client
sent SNI).

Refusing connections is the certificate provider's call (:data:`CertProvider`, the public hook for it): it is
asked when a connection is accepted and again in that connection's handshake, and ``None`` ("no certificate
now", e.g. ztunnel's pod whose certificate expired while the CA is unreachable) refuses the connection: its
handshake fails with a ``handshake_failure`` alert (should the certificate come back in between, the
connection is dropped right after the handshake instead). One info line is logged per refused accept;
nothing is raised, and connections already open go on.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

from h2.errors import ErrorCodes

from meshkit.drain import TaskOwner
from meshkit.hbone import tls
from meshkit.hbone.connection import HboneConnection
from meshkit.hbone.relay import RelayResult, relay
from meshkit.hbone.request import BadRequest, ConnectRequest, parse_request
from meshkit.hbone.settings import HboneSettings
from meshkit.hbone.stream import HboneStream
from meshkit.identity.certs import WorkloadCertificate
from meshkit.identity.spiffe import Identity
from meshkit.logs import kv

__all__ = ["Accept", "Decision", "Forward", "Handler", "HboneServer", "InboundPeer", "Reject"]

#: CONNECTs still being handled beyond SETTINGS_MAX_CONCURRENT_STREAMS (only streams the client reset early
#: get there) before the connection is dropped with ENHANCE_YOUR_CALM: the HTTP/2 "rapid reset" attack
#: (CVE-2023-44487) would otherwise start unbounded handler work; hyper's h2, under ztunnel, allows 20
MAX_PENDING_RESETS = 20

log = logging.getLogger("hbone")


@dataclass(frozen=True, slots=True)
class InboundPeer:
    """The verified client of one HBONE connection."""

    identity: Identity
    address: tuple[str, int]
    local_address: tuple[str, int]


@dataclass(frozen=True, slots=True)
class Reject:
    status: int = 401
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Forward:
    connect: Callable[[], Awaitable[socket.socket]]
    response_headers: tuple[tuple[str, str], ...] = ()
    on_done: Callable[[RelayResult], None] | None = None


@dataclass(frozen=True, slots=True)
class Accept:
    serve: Callable[[HboneStream], Awaitable[None]]
    response_headers: tuple[tuple[str, str], ...] = field(default=())


Decision = Reject | Forward | Accept
Handler = Callable[[InboundPeer, ConnectRequest], Awaitable[Decision]]
#: The server certificate to present now (rotation-aware: a new one is picked up by the next handshake), or
#: ``None`` to refuse new connections while there is none (see the module docstring). Keep it cheap: it is
#: called twice per accepted connection, never per stream.
CertProvider = Callable[[], WorkloadCertificate | None]


class _Refused(asyncio.Protocol):
    """Stands in for the HBONE connection of a refused accept. Its handshake normally fails (the SNI callback
    finds no certificate either); should it complete, the connection is dropped at once."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.Transport, transport).abort()  # a cast: uvloop's transports are no subclasses


class HboneServer:
    """Serves HBONE on a listening socket until :meth:`close`."""

    def __init__(
        self,
        sock: socket.socket,
        certificate: CertProvider,
        handler: Handler,
        settings: HboneSettings | None = None,
        *,
        name: str = "hbone-server",
    ) -> None:
        self.settings = settings or HboneSettings()
        self.name = name
        self.connections: set[HboneConnection] = set()
        self._handling: dict[HboneConnection, int] = {}  # CONNECTs whose handler or relay still runs
        self._sock = sock
        self._certificate = certificate
        self._handler = handler
        self._contexts = tls.ContextCache(self._server_context)
        self._server: asyncio.Server | None = None
        self._tasks = TaskOwner(name)

    def _server_context(self, cert: WorkloadCertificate) -> ssl.SSLContext:
        ctx = tls.server_context(cert)
        ctx.sni_callback = self._pick_context
        return ctx

    def _pick_context(
        self, sslobj: ssl.SSLObject, _server_name: str | None, _ctx: ssl.SSLContext
    ) -> int | None:
        cert = self._certificate()
        if cert is None:  # went away between the accept and the handshake
            log.debug("HBONE handshake refused: no certificate", extra=kv(server=self.name))
            return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE
        current = self._contexts.get(cert)
        if sslobj.context is not current:
            sslobj.context = current
        return None

    @property
    def address(self) -> tuple[str, int]:
        name = self._sock.getsockname()
        return name[0], name[1]

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        cert = self._certificate()
        if cert is None:
            raise LookupError(f"{self.name}: no server certificate to start with")
        ctx = self._contexts.get(cert)
        self._server = await loop.create_server(
            self._new_connection,
            sock=self._sock,
            ssl=ctx,
            ssl_handshake_timeout=self.settings.connect_timeout,
        )

    def _new_connection(self) -> asyncio.BaseProtocol:
        cert = self._certificate()
        if cert is None:
            log.info("HBONE connection refused: no certificate", extra=kv(server=self.name))
            return _Refused()
        trust_domain = cert.identity.trust_domain
        return HboneConnection(
            client_side=False,
            settings=self.settings,
            verify=lambda sslobj: tls.verify_client_identity(sslobj, trust_domain),
            on_request=self._on_request,
            on_open=self.connections.add,
            on_close=self.connections.discard,
            name=f"{self.name}-conn",
        )

    def _on_request(self, stream: HboneStream) -> None:
        conn = stream.conn
        try:
            request = parse_request(stream.stream_id, stream.request_headers)
        except BadRequest as exc:
            log.info("HBONE bad request", extra=kv(peer=conn.peer_address, error=str(exc)))
            conn.respond(stream, 400)
            return
        assert conn.peer_identity is not None
        handling = self._handling.get(conn, 0)
        if handling >= self.settings.server_max_concurrent_streams + MAX_PENDING_RESETS:
            # Only streams the client reset while we still handle them get past the concurrent-stream limit.
            log.warning(
                "HBONE client resets streams faster than they are handled: dropping the connection",
                extra=kv(peer=conn.peer_address, identity=str(conn.peer_identity), handling=handling),
            )
            conn.close(ErrorCodes.ENHANCE_YOUR_CALM)
            return
        self._handling[conn] = handling + 1
        peer = InboundPeer(conn.peer_identity, conn.peer_address, conn.local_address)
        task = self._tasks.spawn(self._serve(peer, request, stream), name=f"stream-{stream.stream_id}")
        task.add_done_callback(lambda _task: self._handled(conn))

    def _handled(self, conn: HboneConnection) -> None:
        left = self._handling.get(conn, 0) - 1
        if left > 0:
            self._handling[conn] = left
        else:
            self._handling.pop(conn, None)

    async def _serve(self, peer: InboundPeer, request: ConnectRequest, stream: HboneStream) -> None:
        conn = stream.conn
        try:
            decision = await self._handler(peer, request)
        except Exception:
            log.exception(
                "HBONE handler failed", extra=kv(peer=peer.address, authority=str(request.authority))
            )
            conn.respond(stream, 503)
            return
        if isinstance(decision, Reject):
            conn.respond(stream, decision.status)
        elif isinstance(decision, Accept):
            conn.respond(stream, 200, list(decision.response_headers))
            try:
                await decision.serve(stream)
            except Exception:
                log.exception("HBONE stream handler failed", extra=kv(peer=peer.address))
                stream.abort()  # never leave the client waiting on a stream nobody serves
        else:
            await self._forward(decision, stream)

    async def _forward(self, decision: Forward, stream: HboneStream) -> None:
        conn = stream.conn
        try:
            sock = await asyncio.wait_for(decision.connect(), self.settings.upstream_connect_timeout)
        except Exception as exc:  # OSError, timeout, or a bug in connect(): the client gets its 503 anyway
            log.info("HBONE upstream connect failed", extra=kv(peer=conn.peer_address, error=repr(exc)))
            conn.respond(stream, 503)
            if decision.on_done is not None:
                decision.on_done(RelayResult(0, 0, f"upstream connect failed: {exc!r}"))
            return
        if stream.finished:  # the client gave up while we dialled
            sock.close()
            return
        conn.respond(stream, 200, list(decision.response_headers))
        result = await relay(sock, stream)
        if decision.on_done is not None:
            decision.on_done(result)

    def stop_accepting(self) -> None:
        """Close the listening socket; connections already accepted go on."""
        if self._server is not None:
            self._server.close()

    async def close(self, grace_s: float = 0.0) -> None:
        """Drain: stop accepting, GOAWAY on every connection (open streams finish, each connection closes with
        its last stream), wait up to ``grace_s`` for that, then close what is left."""
        self.stop_accepting()
        for conn in list(self.connections):
            conn.goaway()
        if grace_s > 0 and self.connections:
            closing = [asyncio.ensure_future(c.wait_closed()) for c in self.connections]
            _done, pending = await asyncio.wait(closing, timeout=grace_s)
            for fut in pending:
                fut.cancel()
        for conn in list(self.connections):
            conn.abort()
        await self._tasks.close()
        for conn in list(self.connections):
            await conn.wait_closed()
        if self._server is not None:
            await self._server.wait_closed()
