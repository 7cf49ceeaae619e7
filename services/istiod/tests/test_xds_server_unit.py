"""DiscoveryServer logic without sockets: debounced batching state, slow-client protection, debug view."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import pytest
from istiod.xds.cache import ResourceCache
from istiod.xds.metrics import XdsMetrics
from istiod.xds.server import Connection, DiscoveryServer, StreamRefused
from meshkit.metrics import new_registry
from meshkit.xds.server_core import Resource, ServerStream
from meshkit.xds.types import ADDRESS_TYPE, content_version
from meshproto.envoy.service.discovery.v3 import discovery_pb2


def _resource(name: str, body: bytes) -> Resource:
    return Resource.build(name, content_version(body), body)


async def test_slow_client_stream_is_ended_not_buffered() -> None:
    cache = ResourceCache()
    server = DiscoveryServer(cache, XdsMetrics(new_registry()), max_queued=3)
    conn = Connection("c1", "peer", None, ServerStream(cache))
    server.connections[conn.id] = conn
    conn.stream.receive(discovery_pb2.DeltaDiscoveryRequest(type_url=ADDRESS_TYPE))  # wildcard, empty answer
    for i in range(5):
        cache.resources[ADDRESS_TYPE][f"w{i}"] = _resource(f"w{i}", f"body{i}".encode())
        server._send(conn, ADDRESS_TYPE, [f"w{i}"], None)
    items = [conn.queue.get_nowait() for _ in range(conn.queue.qsize())]
    assert len(items) == 5
    assert all(isinstance(i, tuple) for i in items[:3])
    refused = items[3]
    assert isinstance(refused, StreamRefused)
    assert refused.code == grpc.StatusCode.UNAVAILABLE


async def test_notify_merges_changes_until_pushed() -> None:
    cache = ResourceCache()
    server = DiscoveryServer(cache, XdsMetrics(new_registry()))
    conn = Connection("c1", "peer", None, ServerStream(cache))
    server.connections[conn.id] = conn
    conn.stream.receive(discovery_pb2.DeltaDiscoveryRequest(type_url=ADDRESS_TYPE))
    for i in range(3):
        cache.resources[ADDRESS_TYPE][f"w{i}"] = _resource(f"w{i}", f"body{i}".encode())
        server.notify(ADDRESS_TYPE, {f"w{i}"})
    server.push_now()
    assert server.push_rounds == 1
    assert conn.queue.qsize() == 1  # one response carrying all three
    view = server.debug_clients()[0]["types"][ADDRESS_TYPE]
    assert sorted(view["versions"]) == ["w0", "w1", "w2"]
    assert len(view["unacked_nonces"]) == 2  # the initial answer and the push, neither ACKed here
    server.push_now()  # nothing pending: no round
    assert server.push_rounds == 1


@pytest.mark.parametrize(
    ("node_id", "instance_ips", "refused"),
    [
        ("ztunnel~10.0.0.9~zt.istio-system~istio-system.svc.cluster.local", None, None),
        ("waypoint~10.0.0.9~wp.app~app.svc.cluster.local", None, None),
        (
            "ztunnel~not-an-ip~zt.istio-system~istio-system.svc.cluster.local",
            "10.0.0.9",
            None,
        ),  # metadata wins
        ("ztunnel~not-an-ip~zt.istio-system~istio-system.svc.cluster.local", None, "no valid IP"),
        ("gateway~10.0.0.9~zt.istio-system~istio-system.svc.cluster.local", None, "invalid node type"),
        ("ztunnel~10.0.0.9~zt.istio-system", None, "4 parts"),
    ],
)
async def test_node_id_checked_as_istiod(node_id: str, instance_ips: str | None, refused: str | None) -> None:
    server = DiscoveryServer(ResourceCache(), XdsMetrics(new_registry()))
    conn = Connection("c1", "peer", None, ServerStream(ResourceCache()))
    req = discovery_pb2.DeltaDiscoveryRequest(type_url=ADDRESS_TYPE)
    req.node.id = node_id
    if instance_ips is not None:
        req.node.metadata.update({"INSTANCE_IPS": instance_ips})
    if refused is None:
        server._identify(conn, req)
        assert conn.node is not None
        assert str(conn.node) == node_id
        return
    with pytest.raises(StreamRefused, match=refused) as info:
        server._identify(conn, req)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert conn.node is None


@dataclass(frozen=True)
class _Caller:
    service_account_namespace: str


@pytest.mark.parametrize(
    ("node_id", "metadata_ns", "caller_ns", "accepted"),
    [
        ("ztunnel~10.0.0.9~zt.v1.app~app.svc.cluster.local", None, "app", True),  # ns from the DNS domain
        ("ztunnel~10.0.0.9~zt.v1.app~app.svc.cluster.local", None, "v1", False),  # not from the dotted pod id
        ("ztunnel~10.0.0.9~zt.app~app.svc.cluster.local", "other", "app", False),  # metadata NAMESPACE wins
        ("ztunnel~10.0.0.9~zt.app~app.svc.cluster.local", "other", "other", True),
    ],
)
def test_identity_check_uses_the_proxy_config_namespace(
    node_id: str, metadata_ns: str | None, caller_ns: str, accepted: bool
) -> None:
    server = DiscoveryServer(ResourceCache(), XdsMetrics(new_registry()))
    conn = Connection("c1", "peer", _Caller(caller_ns), ServerStream(ResourceCache()))
    req = discovery_pb2.DeltaDiscoveryRequest(type_url=ADDRESS_TYPE)
    req.node.id = node_id
    if metadata_ns is not None:
        req.node.metadata.update({"NAMESPACE": metadata_ns})
    if accepted:
        server._identify(conn, req)
        return
    with pytest.raises(StreamRefused) as info:
        server._identify(conn, req)
    assert info.value.code == grpc.StatusCode.PERMISSION_DENIED
