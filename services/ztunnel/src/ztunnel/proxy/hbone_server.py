"""ztunnel's in-pod HBONE server: ``meshkit.hbone.server.HboneServer`` fed by the pod's certificate, plus a
stream lookup for live byte counts.

Draining is the base class's public API: :meth:`~meshkit.hbone.server.HboneServer.stop_accepting` closes the
listening socket (with ``tcp_migrate_req`` the connections still queued on it move to the new ztunnel's
listener of the same SO_REUSEPORT group), and ``close(grace_s)`` sends GOAWAY on every connection so the
client opens no new stream on it, lets in-flight streams finish (each connection closes with its last
stream), and closes what is left at the deadline. A client's pool dials again for its next stream and lands
on the new ztunnel: that is the handover.

No certificate, no handshake: the pod's certificate provider answers ``None`` once its certificate is gone
(expired while the CA is unreachable, or the workload was removed while connections drain), the base
server's public "refuse this connection" hook (see :data:`meshkit.hbone.server.CertProvider`): the
connection is refused cleanly (``handshake_failure`` alert, one info line).
"""

from __future__ import annotations

from meshkit.hbone.server import HboneServer
from meshkit.hbone.stream import HboneStream

__all__ = ["DrainableHboneServer"]


class DrainableHboneServer(HboneServer):
    """``certificate()`` is the pod's current certificate, ``None`` while it has none."""

    def find_stream(self, peer: tuple[str, int], stream_id: int) -> HboneStream | None:
        """The stream of a CONNECT being handled (for live byte counts), by TCP peer and stream id."""
        for conn in self.connections:
            if conn.peer_address == peer:
                return conn.streams.get(stream_id)
        return None
