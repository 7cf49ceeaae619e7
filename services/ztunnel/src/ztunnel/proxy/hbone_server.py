"""HBONE server with a handover-safe drain (subclass of ``meshkit.hbone.server.HboneServer``).

Why: h2 4.4.1 moves a connection to CLOSED as soon as a GOAWAY is sent or received, after which neither side
can send HEADERS or DATA, so a GOAWAY-based drain kills every in-flight stream. During a ztunnel handover
that would fail live connections. Instead we:

1. stop accepting (the listening socket closes; with ``tcp_migrate_req`` queued connections move to the new
   ztunnel's listener of the same SO_REUSEPORT group);
2. close each HBONE connection the moment it carries no stream (the client's pool sees EOF and dials
   again, landing on the new ztunnel; a stream opened in that instant fails before any answer and the
   client's outbound retries it once);
3. at the deadline, close what is left.
"""

from __future__ import annotations

import asyncio

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

    def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()

    async def drain(self, deadline_s: float) -> None:
        """Stop accepting, close connections as they go idle, then close everything at the deadline."""
        self.stop_accepting()
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline_s
        while self.connections and loop.time() < end:
            for conn in list(self.connections):
                if not conn.streams:
                    conn.close()
            await asyncio.sleep(0.005)  # poll: connections expose no "became idle" event
        await self.close(0.0)
