"""Istio's standard metric labels and the peer → labels mapping shared by ztunnel and the waypoint."""

from __future__ import annotations

import subprocess
import sys

from meshkit.istio_labels import (
    REQUEST_LABELS,
    REQUEST_TCP_LABELS,
    TRAFFIC_LABELS,
    Peer,
    peer_values,
    service_labels,
)

# behaviour.md §7.2, in the order given there
SPEC_TRAFFIC_LABELS = [
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_service",
    "destination_service_namespace",
    "destination_service_name",
    "destination_workload",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_cluster",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
    "source_region",
    "source_zone",
    "destination_region",
    "destination_zone",
]
# behaviour.md §6.3 (a set there)
SPEC_REQUEST_LABELS = [
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_canonical_service",
    "source_canonical_revision",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
]


def test_label_sets_are_the_specified_ones() -> None:
    assert list(TRAFFIC_LABELS) == SPEC_TRAFFIC_LABELS
    assert sorted(REQUEST_LABELS) == sorted(SPEC_REQUEST_LABELS)
    assert len(REQUEST_LABELS) == len(SPEC_REQUEST_LABELS)
    assert set(REQUEST_TCP_LABELS) == set(REQUEST_LABELS) - {"response_code", "grpc_response_status"}


def test_peer_maps_onto_either_side() -> None:
    peer = Peer(
        workload="web",
        namespace="shop",
        principal="spiffe://cluster.local/ns/shop/sa/web",
        canonical_service="web-svc",
        cluster="c1",
        zone="z1",
    )
    assert peer.labels("destination") == {
        "destination_workload": "web",
        "destination_canonical_service": "web-svc",
        "destination_canonical_revision": "unknown",
        "destination_workload_namespace": "shop",
        "destination_principal": "spiffe://cluster.local/ns/shop/sa/web",
        "destination_app": "web-svc",  # *_app is the canonical service (§7.2)
        "destination_version": "unknown",  # *_version the canonical revision
        "destination_cluster": "c1",
        "destination_region": "unknown",
        "destination_zone": "z1",
    }
    source = peer.labels("source")
    assert list(source) == [*SPEC_TRAFFIC_LABELS[1:9], "source_region", "source_zone"]
    assert list(source.values()) == list(peer.labels("destination").values())
    assert peer.values() == tuple(source.values())[:8]
    assert peer_values("", "", "", "", "", "") == ("unknown",) * 8


def test_service_labels() -> None:
    assert service_labels("web.shop.svc.cluster.local", "web", "shop") == {
        "destination_service": "web.shop.svc.cluster.local",
        "destination_service_namespace": "shop",
        "destination_service_name": "web",
    }
    assert set(service_labels("", "", "").values()) == {"unknown"}


def test_imports_nothing_heavy() -> None:
    """ztunnel imports this module and keeps its memory small by never importing aiohttp or grpc."""
    code = "import sys, meshkit.istio_labels; print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert not {"aiohttp", "grpc", "prometheus_client", "google"} & set(loaded), loaded
