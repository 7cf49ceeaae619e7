"""The xDS client's metrics (``istio_xds_*``, behaviour.md §7.1), apart from :mod:`meshkit.xds.client`.

A module of its own because ztunnel records them from its own small gRPC client and must not import grpcio
(:mod:`meshkit.xds.client` holds the grpc.aio one); prometheus-client is all this needs.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

__all__ = ["XdsClientMetrics"]


class XdsClientMetrics:
    """``istio_xds_*`` client metrics (behaviour.md §7.1 names)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.messages = Counter("istio_xds_message", "xDS responses received.", ["url"], registry=registry)
        self.message_bytes = Counter(
            "istio_xds_message_bytes", "Bytes of xDS responses received.", ["url"], registry=registry
        )
        self.terminations = Counter(
            "istio_xds_connection_terminations", "xDS stream ends.", ["reason"], registry=registry
        )
