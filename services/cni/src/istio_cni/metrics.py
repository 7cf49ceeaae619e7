"""Node agent metrics (one object, registered on the registry the app passes in)."""

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
        self.ztunnel_connected = Gauge(
            "istio_cni_ztunnel_connected", "ztunnels connected over ZDS (snapshot acked).", registry=r
        )
        self.zds_requests = Counter(
            "istio_cni_zds_requests", "ZDS requests after the snapshot.", ["type", "result"], registry=r
        )
        self.install_repairs = Counter(
            "istio_cni_install_repairs", "Times the CNI config or launcher was restored.", registry=r
        )
