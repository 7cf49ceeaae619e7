"""Hypothesis: whatever the sequence of changes, pushes, NACK-free applies and reconnects, the client ends up
holding exactly the server's resources, and a reconnect never resends what the client already has."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from meshkit.xds.client_core import ClientCore
from meshkit.xds.server_core import ServerStream
from meshkit.xds.types import ADDRESS_TYPE, AUTHORIZATION_TYPE

from .test_xds_cores import NODE, Source, Store, connect, pump

NAMES = [f"w{i}" for i in range(6)]
Op = tuple[str, str, int]

ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from(NAMES), st.integers(0, 3)),
        st.tuples(st.just("delete"), st.sampled_from(NAMES), st.just(0)),
        st.tuples(st.just("push"), st.just(""), st.just(0)),
        st.tuples(st.just("reconnect"), st.just(""), st.just(0)),
    ),
    max_size=40,
)


def held(store: Store) -> dict[str, str]:
    return {name: msg.workload.name for name, msg in store.items[ADDRESS_TYPE].items()}  # type: ignore[attr-defined]


def wanted(source: Source) -> dict[str, str]:
    from google.protobuf import any_pb2
    from meshproto.istio.workload import workload_pb2

    out = {}
    for name, res in source.tables[ADDRESS_TYPE].items():
        value = any_pb2.Any.FromString(res.any_bytes).value
        out[name] = workload_pb2.Address.FromString(value).workload.name
    return out


@settings(max_examples=150, deadline=None)
@given(ops)
def test_client_converges_to_server_state(sequence: list[Op]) -> None:
    source, store = Source(), Store()
    client = ClientCore(NODE, store)
    server = ServerStream(source)
    connect(server, client)
    dirty: set[str] = set()
    for op, name, variant in sequence:
        if op == "put":
            source.put_workload(name, name=f"{name}-v{variant}")
            dirty.add(name)
        elif op == "delete":
            source.tables[ADDRESS_TYPE].pop(name, None)
            dirty.add(name)
        elif op == "push":
            response = server.push(ADDRESS_TYPE, sorted(dirty))
            dirty.clear()
            if response is not None:
                pump(server, client, [response.encode()])
        else:
            before = len(store.applied)
            had = dict(client.versions[ADDRESS_TYPE])
            stale = {n for n, r in source.tables[ADDRESS_TYPE].items() if had.get(n) != r.version}
            server, dirty = ServerStream(source), set()
            connect(server, client)
            resent = [n for t, ups, _ in store.applied[before:] if t == ADDRESS_TYPE for n in ups]
            assert sorted(resent) == sorted(stale)  # exactly what changed, each once
    response = server.push(ADDRESS_TYPE, sorted(dirty))
    if response is not None:
        pump(server, client, [response.encode()])
    assert held(store) == wanted(source)
    assert set(client.versions[ADDRESS_TYPE]) == set(source.tables[ADDRESS_TYPE])
    assert client.versions[AUTHORIZATION_TYPE] == {}
