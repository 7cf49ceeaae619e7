"""h2c (HTTP/2 cleartext, incl. gRPC) inside a tunnel.

Not parsed at L7 yet: an h2c connection is passed through at L4 to one endpoint of the Service (chosen by
the DestinationRule LB), with TCP metrics. Routing, L7 policy and per-request telemetry for h2c/gRPC are
listed as not done in the waypoint README.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshkit.hbone.stream import HboneStream

if TYPE_CHECKING:
    from waypoint.proxy import Downstream, WaypointProxy


async def serve_h2c(proxy: WaypointProxy, stream: HboneStream, down: Downstream, first: bytes) -> None:
    await proxy._serve_tcp(stream, down, first)
