"""istiod xDS metrics under Istio's names (``pilot_*``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_CONVERGENCE_BUCKETS = (0.1, 0.5, 1, 3, 5, 10, 20, 30)


class XdsMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.pushes = Counter("pilot_xds_pushes", "Pushes by xDS type.", ["type"], registry=registry)
        self.push_errors = Counter(
            "pilot_xds_push_errors",
            "Pushes that could not be sent, by xDS type.",
            ["type"],
            registry=registry,
        )
        self.rejects = Counter(
            "pilot_total_xds_rejects", "Responses a client NACKed, by xDS type.", ["type"], registry=registry
        )
        self.connected = Gauge("pilot_xds", "Connected xDS clients.", ["version"], registry=registry)
        self.convergence = Histogram(
            "pilot_proxy_convergence_time", "Seconds from a config change to its push reaching a client.",
            buckets=_CONVERGENCE_BUCKETS, registry=registry,
        )  # fmt: skip
        self.auth_failures = Counter(
            "pilot_xds_auth_failures", "xDS streams refused by authentication or identity checks.",
            registry=registry,
        )  # fmt: skip
