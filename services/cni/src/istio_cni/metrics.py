"""Node agent metrics (one object, registered on the registry the app passes in).

Upstream's names where upstream has the metric (``ztunnel_connected``, ``istio_cni_install_ready``,
``istio_cni_installs_total``); the ambient pod metrics are ours, prefixed ``istio_cni_``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class CniMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.pods_enrolled = Gauge(
            "istio_cni_ambient_pods_enrolled", "Pods with in-pod redirection on this node.", registry=r
        )
        self.pods_pending = Gauge(
            "istio_cni_ambient_pods_pending", "Enrolled pods not yet acked by a ztunnel.", registry=r
        )
        self.enrolments = Counter(
            "istio_cni_ambient_enrolments", "Pod enrol/unenrol operations.", ["op", "result"], registry=r
        )
        self.plugin_events = Counter(
            "istio_cni_plugin_events", "ADD events from the CNI plugin.", ["result"], registry=r
        )
        self.ztunnel_connected = Gauge("ztunnel_connected", "number of connections to ztunnel", registry=r)
        self.install_ready = Gauge(
            "istio_cni_install_ready", "Whether the CNI plugin installation is ready or not", registry=r
        )
        self.installs = Counter(
            "istio_cni_installs",
            "CNI plugin installs (launcher or conflist written).",
            ["result"],
            registry=r,
        )
        self.zds_requests = Counter(
            "istio_cni_zds_requests", "ZDS requests after the snapshot.", ["type", "result"], registry=r
        )
        self.install_repairs = Counter(
            "istio_cni_install_repairs", "Times the CNI config or launcher was restored.", registry=r
        )
