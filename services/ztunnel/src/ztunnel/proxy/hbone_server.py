"""ztunnel's in-pod HBONE server: ``meshkit.hbone.server.HboneServer`` plus a stream lookup for live byte
counts.

Draining is the base class's public API: :meth:`~meshkit.hbone.server.HboneServer.stop_accepting` closes the
listening socket (with ``tcp_migrate_req`` the connections still queued on it move to the new ztunnel's
listener of the same SO_REUSEPORT group), and ``close(grace_s)`` sends GOAWAY on every connection so the
client opens no new stream on it, lets in-flight streams finish (each connection closes with its last
stream), and closes what is left at the deadline. A client's pool dials again for its next stream and lands
on the new ztunnel: that is the handover.

No certificate, no handshake: the pod's certificate provider raises ``LookupError`` once its certificate
is gone (expired while the CA is unreachable, or the workload was removed while connections drain). The
base server calls the provider when it accepts a connection and again in the TLS SNI callback of each
handshake, and lets the error escape there (the accepted socket leaked; an error escaping an SNI callback
is an "unraisable" exception). We turn both into a clean refusal: the connection gets a protocol that only
closes it, the handshake fails with a ``handshake_failure`` alert, and one info line says why. (This
overrides two of the base class's private hooks; ``meshkit.hbone`` has no public one for "no certificate
now".)
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import cast

from meshkit.hbone.connection import HboneConnection
from meshkit.hbone.server import HboneServer
from meshkit.hbone.stream import HboneStream
from meshkit.logs import kv

__all__ = ["DrainableHboneServer"]

log = logging.getLogger("proxy.inbound")


class _Refused(asyncio.Protocol):
    """Stands in for an HBONE connection while we have no certificate: its TLS handshake fails (see
    :meth:`DrainableHboneServer._pick_context`), and should it ever complete, the connection is dropped."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.Transport, transport).abort()  # a cast: uvloop's transports are no subclasses


class DrainableHboneServer(HboneServer):
    def _new_connection(self) -> HboneConnection:
        try:
            return super()._new_connection()
        except LookupError as exc:
            log.info("HBONE connection refused: no certificate", extra=kv(server=self.name, error=str(exc)))
            return _Refused()  # type: ignore[return-value]  # asyncio only needs a Protocol

    def _pick_context(  # type: ignore[override]  # may return an alert, as ssl's sni_callback allows
        self, sslobj: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext
    ) -> int | None:
        try:
            super()._pick_context(sslobj, server_name, ctx)
        except LookupError as exc:  # went away between the accept and the handshake
            log.debug("HBONE handshake refused: no certificate", extra=kv(server=self.name, error=str(exc)))
            return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE
        return None

    def find_stream(self, peer: tuple[str, int], stream_id: int) -> HboneStream | None:
        """The stream of a CONNECT being handled (for live byte counts), by TCP peer and stream id."""
        for conn in self.connections:
            if conn.peer_address == peer:
                return conn.streams.get(stream_id)
        return None
