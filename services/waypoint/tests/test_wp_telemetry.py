"""The waypoint's metric labels: Istio's standard request and TCP label sets (behaviour.md §6.3), filled from
the tunnel's baggage and TLS peer (source), the chosen endpoint (destination) and the intended Service."""

from __future__ import annotations

from meshkit.hbone.server import InboundPeer
from meshkit.identity.spiffe import Identity
from prometheus_client import CollectorRegistry
from waypoint import records as rec
from waypoint.proxy import Downstream, request_labels
from waypoint.telemetry import RequestMetrics, source_peer, tcp_labels

HOST = "reviews.default.svc.cluster.local"
PEER = InboundPeer(Identity("cluster.local", "default", "sleep"), ("10.0.0.1", 40000), ("10.0.0.2", 15008))
BAGGAGE = "k8s.cluster.name=c1,k8s.namespace.name=default,k8s.deployment.name=sleep,service.version=v1"
SERVICE = rec.Service(HOST, "reviews", "default", ("10.96.0.1",), (rec.ServicePort(80, 8080, "TCP"),))
ENDPOINT = rec.Endpoint(
    "10.1.0.1", 8080, workload="reviews-v1", namespace="default", identity="spiffe://cluster.local/ns/default/sa/reviews",
    canonical_name="reviews",
)  # fmt: skip

TCP = {
    "reporter": "waypoint",
    "source_workload": "sleep",
    "source_canonical_service": "sleep",  # no service.name in the baggage: the workload name
    "source_canonical_revision": "v1",
    "source_workload_namespace": "default",
    "source_principal": "spiffe://cluster.local/ns/default/sa/sleep",
    "source_app": "sleep",
    "source_version": "v1",
    "source_cluster": "c1",
    "destination_service": HOST,
    "destination_service_namespace": "default",
    "destination_service_name": "reviews",
    "destination_workload": "reviews-v1",
    "destination_canonical_service": "reviews",
    "destination_canonical_revision": "unknown",
    "destination_workload_namespace": "default",
    "destination_principal": "spiffe://cluster.local/ns/default/sa/reviews",
    "destination_app": "reviews",
    "destination_version": "unknown",
    "destination_cluster": "unknown",
    "request_protocol": "tcp",
    "response_flags": "-",
    "connection_security_policy": "mutual_tls",
}


def _downstream(baggage: str | None) -> Downstream:
    return Downstream(PEER, SERVICE, 80, "10.96.0.1:80", source_peer(baggage, PEER.identity.uri))


def _exported(registry: CollectorRegistry, name: str) -> list[dict[str, str]]:
    return [s.labels for m in registry.collect() for s in m.samples if s.name == name]


def test_tcp_chain_labels() -> None:
    registry = CollectorRegistry(auto_describe=True)
    labels = request_labels(_downstream(BAGGAGE), None, ENDPOINT, "tcp", "", "-")
    RequestMetrics(registry).record_tcp(tcp_labels(labels), sent=3, received=4)
    for name in ("istio_tcp_connections_opened_total", "istio_tcp_sent_bytes_total"):
        assert _exported(registry, name) == [TCP], name


def test_request_labels_without_baggage_or_endpoint() -> None:
    registry = CollectorRegistry(auto_describe=True)
    labels = request_labels(_downstream(None), None, None, "http", "503", "UH", "14")
    RequestMetrics(registry).record(labels, 1.0, 0, 0)
    [exported] = _exported(registry, "istio_requests_total")
    peers = {k: "unknown" for k in TCP if k.startswith(("source_", "destination_"))}
    assert exported == TCP | peers | {
        "source_principal": PEER.identity.uri,  # from the TLS peer, baggage or not
        "destination_service": HOST,  # the Service bound to the tunnel
        "destination_service_namespace": "default",
        "destination_service_name": "reviews",
        "request_protocol": "http",
        "response_code": "503",
        "grpc_response_status": "14",
        "response_flags": "UH",
    }
