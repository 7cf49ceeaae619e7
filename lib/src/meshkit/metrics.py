"""Prometheus registry helper and the per-subsystem ``Metrics`` convention.

Each service builds one :class:`~prometheus_client.CollectorRegistry` with :func:`new_registry` in its
composition root and passes it down. Each subsystem owns one small metrics class whose constructor takes that
registry and registers its Counters, Gauges and Histograms under Istio's names (spec behaviour.md §7.1).
No code uses the global default registry, so two apps built in one test process never collide.

Example::

    class XdsMetrics:
        \"\"\"xDS client metrics (names from behaviour.md §7.1).\"\"\"

        def __init__(self, registry: CollectorRegistry) -> None:
            self.messages = Counter(
                "istio_xds_message_total", "xDS messages received.", ["url"], registry=registry
            )
            self.message_bytes = Counter(
                "istio_xds_message_bytes_total", "xDS message bytes received.", ["url"], registry=registry
            )
            self.terminations = Counter(
                "istio_xds_connection_terminations_total", "xDS stream ends.", ["reason"], registry=registry
            )

    registry = new_registry()
    xds = XdsMetrics(registry)
    xds.messages.labels(url=TYPE_URL).inc()
    app.router.add_get("/metrics", metrics_handler(registry))   # or: add_metrics_routes(app, registry)

Counter names may be given with or without ``_total``; prometheus-client appends it on exposition either way.
Importing this module turns off prometheus-client's ``*_created`` series process-wide: Istio does not emit
them, and scrapers comparing our output with upstream's would see extra series.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import prometheus_client
from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

__all__ = [
    "CONTENT_TYPE",
    "METRICS_PATHS",
    "BuildMetrics",
    "add_metrics_routes",
    "metrics_handler",
    "new_registry",
    "render",
]

#: The classic text exposition format 0.0.4: every Prometheus version scrapes it, and it is what Envoy serves.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
#: Both paths ztunnel serves on 15020 (behaviour.md §1); the waypoint serves the second.
METRICS_PATHS = ("/metrics", "/stats/prometheus")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def new_registry() -> CollectorRegistry:
    """A fresh registry without the process/platform collectors (each app owns exactly what it registers)."""
    return CollectorRegistry(auto_describe=True)


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The Prometheus text exposition of ``registry`` and its content type."""
    return generate_latest(registry), CONTENT_TYPE


def metrics_handler(registry: CollectorRegistry) -> Handler:
    """An aiohttp GET handler serving ``registry`` in the Prometheus text format."""

    async def handle(_request: web.Request) -> web.Response:
        body, content_type = render(registry)
        # aiohttp rejects a charset inside content_type=, so set the header verbatim.
        return web.Response(body=body, headers={"Content-Type": content_type})

    return handle


def add_metrics_routes(app: web.Application, registry: CollectorRegistry) -> None:
    """Serve ``registry`` on ``/metrics`` and ``/stats/prometheus`` of ``app``."""
    handler = metrics_handler(registry)
    for path in METRICS_PATHS:
        app.router.add_get(path, handler)


class BuildMetrics:
    """``istio_build{component, tag} 1``: every Istio component exports it (behaviour.md §7.1)."""

    def __init__(self, registry: CollectorRegistry, component: str, tag: str) -> None:
        self.build = Gauge(
            "istio_build", "Istio component build info.", ["component", "tag"], registry=registry
        )
        self.build.labels(component=component, tag=tag).set(1)
