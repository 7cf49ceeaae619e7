"""ztunnel's in-pod HBONE server: ``meshkit.hbone.server.HboneServer`` fed by the pod's certificate, plus a
stream lookup for live byte counts.

Draining is the base class's public API: :meth:`~meshkit.hbone.server.HboneServer.stop_accepting` closes the
listening socket (with ``tcp_migrate_req`` the connections still queued on it move to the new ztunnel's
listener of the same SO_REUSEPORT group), and ``close(grace_s)`` sends GOAWAY on every connection so the
client opens no new stream on it, lets in-flight streams finish (each connection closes with its last
stream), and closes what is left at the deadline. A client's pool dials again for its next stream and lands
on the new ztunnel: that is the handover.

No certificate, no handshake: the pod's certificate provider raises ``LookupError`` once its certificate
is gone (expired while the CA is unreachable, or the workload was removed while connections drain). We
answer ``None`` to the base server then, its public "refuse this connection" hook (see
:data:`meshkit.hbone.server.CertProvider`): the connection is refused cleanly (``handshake_failure`` alert,
one info line), where a ``LookupError`` escaping the accept and SNI callbacks would leak the socket.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

from meshkit.hbone.server import Handler, HboneServer
from meshkit.hbone.settings import HboneSettings
from meshkit.hbone.stream import HboneStream
from meshkit.identity.certs import WorkloadCertificate
from meshkit.logs import kv

__all__ = ["DrainableHboneServer"]

log = logging.getLogger("proxy.inbound")


class DrainableHboneServer(HboneServer):
    """``certificate()`` is the pod's current certificate and raises ``LookupError`` while it has none."""

    def __init__(
        self,
        sock: socket.socket,
        certificate: Callable[[], WorkloadCertificate],
        handler: Handler,
        settings: HboneSettings | None = None,
        *,
        name: str = "hbone-server",
    ) -> None:
        def current() -> WorkloadCertificate | None:
            try:
                return certificate()
            except LookupError as exc:
                log.debug("pod has no certificate", extra=kv(server=name, error=str(exc)))
                return None  # refuses the connection

        super().__init__(sock, current, handler, settings, name=name)

    def find_stream(self, peer: tuple[str, int], stream_id: int) -> HboneStream | None:
        """The stream of a CONNECT being handled (for live byte counts), by TCP peer and stream id."""
        for conn in self.connections:
            if conn.peer_address == peer:
                return conn.streams.get(stream_id)
        return None
