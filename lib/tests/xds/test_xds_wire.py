"""The hand-framed DeltaDiscoveryResponse parses exactly as protobuf would build it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from meshkit.xds.wire import any_bytes, parse_response, resource_entry, response_bytes
from meshproto.envoy.service.discovery.v3 import discovery_pb2

text = st.text(max_size=300)
resources = st.lists(st.tuples(text, text, st.binary(max_size=400), st.lists(text, max_size=3)), max_size=8)


@given(resources, st.lists(text, max_size=5), text, text)
def test_response_bytes_match_protobuf(items: list[tuple[str, str, bytes, list[str]]], removed: list[str],
                                       type_url: str, nonce: str) -> None:  # fmt: skip
    entries = [resource_entry(n, v, any_bytes("t", body), aliases) for n, v, body, aliases in items]
    parsed = parse_response(response_bytes(type_url, nonce, entries, removed))
    expected = discovery_pb2.DeltaDiscoveryResponse(type_url=type_url, nonce=nonce, removed_resources=removed)
    for name, version, body, aliases in items:
        res = expected.resources.add(name=name, version=version, aliases=aliases)
        res.resource.type_url = "t"
        res.resource.value = body
    assert parsed == expected
