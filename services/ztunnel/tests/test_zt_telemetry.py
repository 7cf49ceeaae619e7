"""ztunnel's connection metrics: Istio's common traffic labels, with names, order and values as behaviour.md
§7.1-§7.2 encode them (scrapes are compared with upstream's text, so the order is pinned too)."""

from __future__ import annotations

from meshkit.identity.spiffe import Identity
from prometheus_client import CollectorRegistry
from ztunnel.metrics import ProxyMetrics
from ztunnel.proxy.telemetry import ConnectionRecord, Endpoints
from ztunnel.state.records import Locality, Service, Workload

SRC = Workload(
    uid="u1",
    name="sleep-5d8f",
    namespace="app",
    workload_name="sleep",
    canonical_name="sleep",
    canonical_revision="v1",
    cluster_id="c1",
    locality=Locality("r1", "z1"),
)
DST = Workload(uid="u2", name="echo-7c4", namespace="app", workload_name="echo", canonical_name="echo")
SVC = Service("echo", "app", "echo.app.svc.cluster.local")

EXPECTED = {
    "reporter": "source",
    "source_workload": "sleep",
    "source_canonical_service": "sleep",
    "source_canonical_revision": "v1",
    "source_workload_namespace": "app",
    "source_principal": "spiffe://cluster.local/ns/app/sa/sleep",
    "source_app": "sleep",
    "source_version": "v1",
    "source_cluster": "c1",
    "destination_service": "echo.app.svc.cluster.local",
    "destination_service_namespace": "app",
    "destination_service_name": "echo",
    "destination_workload": "echo",
    "destination_canonical_service": "echo",
    "destination_canonical_revision": "unknown",
    "destination_workload_namespace": "app",
    "destination_principal": "spiffe://cluster.local/ns/app/sa/echo",
    "destination_app": "echo",
    "destination_version": "unknown",
    "destination_cluster": "Kubernetes",
    "request_protocol": "tcp",
    "response_flags": "-",
    "connection_security_policy": "mutual_tls",
    "source_region": "r1",
    "source_zone": "z1",
    "destination_region": "unknown",
    "destination_zone": "unknown",
}


def _samples(registry: CollectorRegistry, name: str) -> list[tuple[list[tuple[str, str]], float]]:
    return [
        (list(s.labels.items()), s.value) for m in registry.collect() for s in m.samples if s.name == name
    ]


def test_connection_labels_names_order_and_values() -> None:
    registry = CollectorRegistry(auto_describe=True)
    endpoints = Endpoints(
        "outbound",
        ("10.0.0.1", 40000),
        ("10.0.0.2", 8080),
        src_workload=SRC,
        src_identity=Identity("cluster.local", "app", "sleep"),
        dst_workload=DST,
        dst_identity=Identity("cluster.local", "app", "echo"),
        dst_service=SVC,
        mtls=True,
    )
    record = ConnectionRecord(ProxyMetrics(registry), endpoints)
    record.open()
    record.add_bytes(5, 7)
    record.close()
    for name, value in [
        ("istio_tcp_connections_opened_total", 1.0),
        ("istio_tcp_connections_closed_total", 1.0),
        ("istio_tcp_received_bytes_total", 5.0),
        ("istio_tcp_sent_bytes_total", 7.0),
    ]:
        assert _samples(registry, name) == [(list(EXPECTED.items()), value)], name


def test_unknown_peers_and_plaintext() -> None:
    registry = CollectorRegistry(auto_describe=True)
    record = ConnectionRecord(ProxyMetrics(registry), Endpoints("inbound", ("10.0.0.1", 1), ("10.0.0.2", 2)))
    record.open()
    record.close("refused", "CONNECT")
    [(labels, value)] = _samples(registry, "istio_tcp_connections_failed_total")
    assert value == 1.0
    assert [k for k, _ in labels] == list(EXPECTED)
    expected = dict.fromkeys(EXPECTED, "unknown") | {
        "reporter": "destination",
        "request_protocol": "tcp",
        "response_flags": "CONNECT",
    }
    assert dict(labels) == expected
