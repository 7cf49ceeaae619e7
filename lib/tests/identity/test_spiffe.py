from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from meshkit.identity.spiffe import Identity, InvalidIdentity

segment = st.text(st.characters(categories=["Ll", "Nd"], include_characters="-."), min_size=1, max_size=20)


@given(segment, segment, segment)
def test_uri_roundtrip(td: str, ns: str, sa: str) -> None:
    identity = Identity(td, ns, sa)
    assert Identity.parse(identity.uri) == identity
    assert identity.principal == f"{td}/ns/{ns}/sa/{sa}"


@pytest.mark.parametrize(
    "uri",
    [
        "cluster.local/ns/a/sa/b",
        "spiffe://cluster.local/ns/a/sa/b/extra",
        "spiffe://cluster.local/ns/a/sb/b",
        "spiffe://cluster.local/ns//sa/b",
        "spiffe://cluster.local/a/b",
        "spiffe:///ns/a/sa/b",
    ],
)
def test_rejects_what_ztunnel_rejects(uri: str) -> None:
    with pytest.raises(InvalidIdentity):
        Identity.parse(uri)
