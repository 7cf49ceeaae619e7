"""ztunnel's Prometheus metrics with Istio's names and labels (behaviour.md §7.1-§7.2).

Built on the registry the composition root passes in. Connection metrics are recorded at open (opened) and
close (closed, failed); byte counters are incremented while copying. The traffic labels are Istio's common
ones (``meshkit.istio_labels.TRAFFIC_LABELS``, shared with the waypoint).
"""

from __future__ import annotations

from meshkit.istio_labels import TRAFFIC_LABELS
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["FAILURE_FLAGS", "DnsMetrics", "ProxyMetrics", "WorkloadManagerMetrics", "build_info"]

#: response_flags values that count as a failed connection.
FAILURE_FLAGS = frozenset(
    {
        "CONNECT",
        "DENY",
        "TLS_FAILURE",
        "H2_HANDSHAKE_FAILURE",
        "NETWORK_POLICY",
        "IDENTITY_ERROR",
        "CERT_REVOKED",
    }
)


class ProxyMetrics:
    """TCP connection metrics of the proxies."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = list(TRAFFIC_LABELS)
        self.opened = Counter(
            "istio_tcp_connections_opened", "Connections opened.", labels, registry=registry
        )
        self.closed = Counter(
            "istio_tcp_connections_closed", "Connections closed.", labels, registry=registry
        )
        self.received_bytes = Counter(
            "istio_tcp_received_bytes", "Bytes in the request direction.", labels, registry=registry
        )
        self.sent_bytes = Counter(
            "istio_tcp_sent_bytes", "Bytes in the response direction.", labels, registry=registry
        )
        self.failed = Counter(
            "istio_tcp_connections_failed", "Failed connections.", labels, registry=registry
        )
        self.sockets_open = Gauge(
            "istio_tcp_sockets_open", "Open proxied sockets.", ["reporter"], registry=registry
        )
        self.on_demand_dns = Counter(
            "istio_on_demand_dns",
            "On-demand DNS lookups of hostname workloads.",
            ["source_workload", "source_workload_namespace", "hostname"],
            registry=registry,
        )


class DnsMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        labels = [
            "request_query_type",
            "request_protocol",
            "source_canonical_service",
            "source_canonical_revision",
        ]
        self.requests = Counter("istio_dns_requests", "DNS requests.", labels, registry=registry)
        self.upstream_requests = Counter(
            "istio_dns_upstream_requests", "Forwarded DNS requests.", labels, registry=registry
        )
        self.upstream_failures = Counter(
            "istio_dns_upstream_failures", "Failed forwarded DNS requests.", labels, registry=registry
        )
        self.upstream_duration = Histogram(
            "istio_dns_upstream_request_duration_seconds",
            "Forwarded DNS request duration.",
            labels,
            buckets=(0.0005, 0.001, 0.01, 0.1, 1, 5),
            registry=registry,
        )


class WorkloadManagerMetrics:
    """In-pod proxy counts; root registry names without the ``istio_`` prefix, as upstream."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.active = Gauge(
            "workload_manager_active_proxy_count", "Running in-pod proxies.", registry=registry
        )
        self.pending = Gauge(
            "workload_manager_pending_proxy_count", "In-pod proxies waiting to start.", registry=registry
        )
        self.started = Counter(
            "workload_manager_proxies_started", "In-pod proxies started.", registry=registry
        )
        self.stopped = Counter(
            "workload_manager_proxies_stopped", "In-pod proxies stopped.", registry=registry
        )


def build_info(registry: CollectorRegistry, tag: str) -> None:
    Gauge("istio_build", "Build information.", ["component", "tag"], registry=registry).labels(
        component="ztunnel", tag=tag
    ).set(1)
