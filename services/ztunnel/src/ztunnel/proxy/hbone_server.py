"""ztunnel's in-pod HBONE server: ``meshkit.hbone.server.HboneServer`` plus a stream lookup for live byte
counts.

Draining is the base class's public API: :meth:`~meshkit.hbone.server.HboneServer.stop_accepting` closes the
listening socket (with ``tcp_migrate_req`` the connections still queued on it move to the new ztunnel's
listener of the same SO_REUSEPORT group), and ``close(grace_s)`` sends GOAWAY on every connection so the
client opens no new stream on it, lets in-flight streams finish (each connection closes with its last
stream), and closes what is left at the deadline. A client's pool dials again for its next stream and lands
on the new ztunnel: that is the handover.
"""

from __future__ import annotations

from meshkit.hbone.server import HboneServer
from meshkit.hbone.stream import HboneStream

__all__ = ["DrainableHboneServer"]


class DrainableHboneServer(HboneServer):
    def find_stream(self, peer: tuple[str, int], stream_id: int) -> HboneStream | None:
        """The stream of a CONNECT being handled (for live byte counts), by TCP peer and stream id."""
        for conn in self.connections:
            if conn.peer_address == peer:
                return conn.streams.get(stream_id)
        return None
