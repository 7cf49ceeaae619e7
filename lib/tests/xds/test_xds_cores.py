"""The sans-IO client and server cores pumped against each other in memory (no sockets)."""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.message import Message
from meshkit.xds.client_core import ClientCore, Rejected
from meshkit.xds.server_core import Resource, ServerStream
from meshkit.xds.types import ADDRESS_TYPE, AUTHORIZATION_TYPE, NodeId, content_version
from meshkit.xds.wire import any_bytes, parse_response
from meshproto.envoy.config.core.v3 import base_pb2
from meshproto.istio.security import authorization_pb2
from meshproto.istio.workload import workload_pb2


class Source:
    def __init__(self) -> None:
        self.tables: dict[str, dict[str, Resource]] = {ADDRESS_TYPE: {}, AUTHORIZATION_TYPE: {}}

    def put_workload(self, uid: str, ip: bytes = b"\x0a\x00\x00\x01", name: str = "w") -> None:
        msg = workload_pb2.Address(workload=workload_pb2.Workload(uid=uid, name=name, addresses=[ip]))
        body = any_bytes(ADDRESS_TYPE, msg.SerializeToString())
        self.tables[ADDRESS_TYPE][uid] = Resource.build(uid, content_version(body), body, [f"/{ip.hex()}"])

    def put_policy(self, key: str) -> None:
        ns, name = key.split("/")
        body = any_bytes(
            AUTHORIZATION_TYPE, authorization_pb2.Authorization(name=name, namespace=ns).SerializeToString()
        )
        self.tables[AUTHORIZATION_TYPE][key] = Resource.build(
            key, content_version(body), body, send_version=False
        )

    def get(self, type_url: str, name: str) -> Resource | None:
        return self.tables[type_url].get(name)

    def names(self, type_url: str) -> Iterable[str]:
        return self.tables[type_url].keys()

    def lookup(self, type_url: str, key: str) -> list[Resource]:
        return [r for r in self.tables[type_url].values() if key in r.aliases]


class Store:
    def __init__(self, reject: set[str] | None = None) -> None:
        self.items: dict[str, dict[str, Message]] = {ADDRESS_TYPE: {}, AUTHORIZATION_TYPE: {}}
        self.reject = reject or set()
        self.applied: list[tuple[str, list[str], list[str]]] = []

    def apply(self, type_url: str, upserts: list[tuple[str, Message]], removes: list[str]) -> list[Rejected]:
        self.applied.append((type_url, [n for n, _ in upserts], removes))
        bad = [Rejected(n, "refused by test") for n, _ in upserts if n in self.reject]
        for name, msg in upserts:
            if name not in self.reject:
                self.items[type_url][name] = msg
        for name in removes:
            self.items[type_url].pop(name, None)
        return bad


NODE = base_pb2.Node(id=str(NodeId.ztunnel("10.0.0.9", "ztunnel-abc", "istio-system")))


def pump(server: ServerStream, client: ClientCore, responses: list[bytes]) -> list[str]:
    """Deliver responses to the client and its ACKs/NACKs back; returns NACK messages."""
    nacks = []
    while responses:
        resp = parse_response(responses.pop(0))
        ack = client.handle(resp)
        got = server.receive(ack)
        if got.nack:
            nacks.append(got.nack.message)
        responses.extend(r.encode() for r in got.responses)
    return nacks


def connect(server: ServerStream, client: ClientCore) -> list[str]:
    responses: list[bytes] = []
    for req in client.initial_requests():
        got = server.receive(req)
        assert got.initial
        responses.extend(r.encode() for r in got.responses)
    return pump(server, client, responses)


def test_initial_requests_answered_even_when_empty() -> None:
    source, store = Source(), Store()
    client = ClientCore(NODE, store)
    reqs = client.initial_requests()
    assert [r.type_url for r in reqs] == [ADDRESS_TYPE, AUTHORIZATION_TYPE]
    assert all(r.node.id == NODE.id and not r.resource_names_subscribe for r in reqs)  # wildcard
    connect(ServerStream(source), client)
    assert client.synced
    assert store.applied == [(ADDRESS_TYPE, [], []), (AUTHORIZATION_TYPE, [], [])]


def test_add_update_remove_and_versions() -> None:
    source, store = Source(), Store()
    source.put_workload("Kubernetes//Pod/a/w1")
    source.put_policy("a/p1")
    server, client = ServerStream(source), ClientCore(NODE, store)
    connect(server, client)
    assert set(store.items[ADDRESS_TYPE]) == {"Kubernetes//Pod/a/w1"}
    assert set(store.items[AUTHORIZATION_TYPE]) == {"a/p1"}
    assert client.versions[AUTHORIZATION_TYPE] == {"a/p1": ""}  # policies carry no version (upstream)
    source.put_workload("Kubernetes//Pod/a/w1", name="renamed")
    source.put_workload("Kubernetes//Pod/a/w2")
    push = server.push(ADDRESS_TYPE, ["Kubernetes//Pod/a/w1", "Kubernetes//Pod/a/w2"])
    assert push is not None
    pump(server, client, [push.encode()])
    assert store.items[ADDRESS_TYPE]["Kubernetes//Pod/a/w1"].workload.name == "renamed"  # type: ignore[attr-defined]
    assert server.push(ADDRESS_TYPE, ["Kubernetes//Pod/a/w1"]) is None  # unchanged ⇒ nothing to send
    del source.tables[ADDRESS_TYPE]["Kubernetes//Pod/a/w2"]
    push = server.push(ADDRESS_TYPE, ["Kubernetes//Pod/a/w2"])
    assert push is not None
    assert push.removed == ["Kubernetes//Pod/a/w2"]
    pump(server, client, [push.encode()])
    assert set(store.items[ADDRESS_TYPE]) == {"Kubernetes//Pod/a/w1"}


def test_nack_is_partial_and_not_resent_until_changed() -> None:
    source, store = Source(), Store(reject={"bad"})
    source.put_workload("good")
    source.put_workload("bad")
    server, client = ServerStream(source), ClientCore(NODE, store)
    nacks = connect(server, client)
    assert nacks == ["bad: refused by test"]
    assert set(store.items[ADDRESS_TYPE]) == {"good"}
    assert "bad" not in client.versions[ADDRESS_TYPE]
    assert server.push(ADDRESS_TYPE, ["bad"]) is None  # NACKed: not resent while unchanged
    source.put_workload("bad", name="fixed")
    assert server.push(ADDRESS_TYPE, ["bad"]) is not None


def test_reconnect_resumes_with_initial_resource_versions() -> None:
    source, store = Source(), Store()
    for i in range(3):
        source.put_workload(f"w{i}")
    client = ClientCore(NODE, store)
    connect(ServerStream(source), client)
    store.applied.clear()
    # while disconnected: w0 changes, w1 goes away, w3 appears
    source.put_workload("w0", name="changed")
    del source.tables[ADDRESS_TYPE]["w1"]
    source.put_workload("w3")
    reqs = client.initial_requests()
    assert set(reqs[0].initial_resource_versions) == {"w0", "w1", "w2"}
    connect(ServerStream(source), client)
    upserted = [n for t, ups, _ in store.applied if t == ADDRESS_TYPE for n in ups]
    removed = [n for t, _, rm in store.applied if t == ADDRESS_TYPE for n in rm]
    assert sorted(upserted) == ["w0", "w3"]  # w2 unchanged: not resent
    assert removed == ["w1"]
    assert set(store.items[ADDRESS_TYPE]) == {"w0", "w2", "w3"}


def test_on_demand_subscription_by_alias() -> None:
    source, store = Source(), Store()
    source.put_workload("w1", ip=b"\x0a\x00\x00\x05")
    server = ServerStream(source)
    client = ClientCore(NODE, store, on_demand=True)
    reqs = client.initial_requests()
    assert list(reqs[0].resource_names_subscribe) == ["*"]
    assert list(reqs[0].resource_names_unsubscribe) == ["*"]
    connect(server, client)
    assert store.items[ADDRESS_TYPE] == {}  # subscribed to nothing yet
    got = server.receive(client.on_demand_request("/0a000005"))
    (resp,) = got.responses
    parsed = parse_response(resp.encode())
    assert [(r.name, list(r.aliases)) for r in parsed.resources] == [("w1", ["/0a000005"])]
    missing = server.receive(client.on_demand_request("/0a0000ff")).responses[0]
    assert parse_response(missing.encode()).removed_resources == ["/0a0000ff"]


def test_decode_failure_rejected_alone() -> None:
    source, store = Source(), Store()
    source.put_workload("good")
    body = any_bytes(ADDRESS_TYPE, b"\xff\xff\xff")
    source.tables[ADDRESS_TYPE]["garbage"] = Resource.build("garbage", content_version(body), body)
    nacks = connect(ServerStream(source), ClientCore(NODE, store))
    assert len(nacks) == 1
    assert nacks[0].startswith("garbage: cannot decode")
    assert set(store.items[ADDRESS_TYPE]) == {"good"}


def test_node_id_round_trip() -> None:
    node = NodeId.parse("ztunnel~10.0.0.9~ztunnel-abc.istio-system~istio-system.svc.cluster.local")
    assert (node.type, node.ip, node.pod_name, node.pod_namespace) == (
        "ztunnel",
        "10.0.0.9",
        "ztunnel-abc",
        "istio-system",
    )
    assert str(node) == "ztunnel~10.0.0.9~ztunnel-abc.istio-system~istio-system.svc.cluster.local"
    dotted = NodeId.parse("ztunnel~10.0.0.9~zt.v1.istio-system~istio-system.svc.cluster.local")
    assert (dotted.pod_name, dotted.pod_namespace) == ("zt.v1", "istio-system")  # names may hold dots


def test_node_from_env() -> None:
    from meshkit.xds.node import node_from_env

    env = {"INSTANCE_IP": "10.0.0.3", "POD_NAME": "ztunnel-x", "POD_NAMESPACE": "istio-system"}
    env |= {"NODE_NAME": "n1", "ISTIO_META_CLUSTER_ID": "Kubernetes", "ISTIO_METAJSON_LABELS": '{"a": "b"}'}
    env["OTHER"] = "x"
    node = node_from_env(env, {"DNS_CAPTURE": "true"})
    assert node.id == "ztunnel~10.0.0.3~ztunnel-x.istio-system~istio-system.svc.cluster.local"
    fields = node.metadata.fields
    assert fields["NAMESPACE"].string_value == "istio-system"
    assert fields["INSTANCE_IPS"].string_value == "10.0.0.3"
    assert fields["CLUSTER_ID"].string_value == "Kubernetes"
    assert fields["DNS_CAPTURE"].string_value == "true"
    assert fields["LABELS"].struct_value.fields["a"].string_value == "b"
    assert "OTHER" not in fields
    assert node_from_env({}).id == "ztunnel~1.1.1.1~.~.svc.cluster.local"


def test_on_demand_reconnect_resumes_earlier_lookups() -> None:
    """istiod adds ``initial_resource_versions`` names to a non-wildcard subscription (delta.go): a resumed
    on-demand client keeps receiving what it looked up before, and a lookup that now fails is released."""
    source, store = Source(), Store()
    source.put_workload("w1", ip=b"\x0a\x00\x00\x05")
    source.put_workload("w2", ip=b"\x0a\x00\x00\x06")
    client = ClientCore(NODE, store, on_demand=True)
    server = ServerStream(source)
    connect(server, client)
    pump(
        server, client, [r.encode() for r in server.receive(client.on_demand_request("/0a000005")).responses]
    )
    assert set(store.items[ADDRESS_TYPE]) == {"w1"}
    client.requested.add("/0a0000ff")  # asked for, never answered: resent with version ""
    # reconnect: w1 changed meanwhile
    source.put_workload("w1", ip=b"\x0a\x00\x00\x05", name="changed")
    server = ServerStream(source)
    (address_req, _) = client.initial_requests()
    assert dict(address_req.initial_resource_versions)["/0a000005"] == ""
    got = server.receive(address_req)
    (resp,) = got.responses
    parsed = parse_response(resp.encode())
    assert [r.name for r in parsed.resources] == ["w1"]
    assert list(parsed.removed_resources) == [
        "/0a0000ff"
    ]  # unresolvable: released, the alias that resolved is not
    assert server.subscribed(ADDRESS_TYPE, "w1")
    assert not server.subscribed(ADDRESS_TYPE, "w2")
    # and pushes for it keep coming on the new stream
    source.put_workload("w1", ip=b"\x0a\x00\x00\x05", name="again")
    assert server.push(ADDRESS_TYPE, ["w1", "w2"]) is not None


def test_unsubscribe_then_resubscribe_sends_again() -> None:
    source = Source()
    source.put_workload("w1", ip=b"\x0a\x00\x00\x05")
    server = ServerStream(source)
    client = ClientCore(NODE, Store(), on_demand=True)
    connect(server, client)
    assert server.receive(client.on_demand_request("w1")).responses
    from meshproto.envoy.service.discovery.v3 import discovery_pb2

    server.receive(
        discovery_pb2.DeltaDiscoveryRequest(type_url=ADDRESS_TYPE, resource_names_unsubscribe=["w1"])
    )
    assert not server.subscribed(ADDRESS_TYPE, "w1")
    again = server.receive(client.on_demand_request("w1")).responses
    assert [r.names for r in again] == [["w1"]]
