"""Cluster layouts: instances never share names or addresses."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from meshtest.cluster.config import ClusterLayout, owned_by, pod_netns_name


def test_instances_are_disjoint() -> None:
    layouts = [ClusterLayout(cache=Path("/c"), workers=3, instance=i) for i in range(10)]
    for a, b in itertools.combinations(layouts, 2):
        assert {n.name for n in a.nodes}.isdisjoint(n.name for n in b.nodes)
        assert {n.ip for n in a.nodes}.isdisjoint(n.ip for n in b.nodes)
        assert {n.pod_cidr for n in a.nodes}.isdisjoint(n.pod_cidr for n in b.nodes)
        assert a.bridge != b.bridge
        assert a.run != b.run
        for name in [n.name for n in a.nodes] + [a.bridge, pod_netns_name("u-1", a.instance)]:
            assert owned_by(name, a.instance)
            assert not owned_by(name, b.instance)


def test_default_instance_names() -> None:
    layout = ClusterLayout(cache=Path("/c"))
    assert [(n.name, n.ip, n.pod_cidr) for n in layout.nodes] == [
        ("amb-cp", "172.18.0.2", "10.244.0.0/24"),
        ("amb-w1", "172.18.0.3", "10.244.1.0/24"),
        ("amb-w2", "172.18.0.4", "10.244.2.0/24"),
    ]
    assert layout.api_url == "https://172.18.0.2:6443"
    assert (
        len(
            max((n.host_veth for n in ClusterLayout(cache=Path("/c"), workers=15, instance=9).nodes), key=len)
        )
        <= 15
    )


def test_bad_instance_is_rejected() -> None:
    with pytest.raises(ValueError, match="instance"):
        ClusterLayout(cache=Path("/c"), instance=10)
