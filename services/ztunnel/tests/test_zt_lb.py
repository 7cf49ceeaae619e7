"""Endpoint selection: weighted random by capacity, healthy only, locality modes (§4.2)."""

from __future__ import annotations

import random
from collections import Counter

from ztunnel.state.lb import locality_rank, select_endpoint
from ztunnel.state.records import Endpoint, LoadBalancing, Locality, Service, Workload

SVC = Service("s", "default", "s.default", vips=(("", "10.96.0.1"),), ports={80: 8080})
SRC = Workload("src", "src", "default", addresses=("10.77.0.100",), node="n1", locality=Locality("r1", "z1"))


def ep(uid: str, **kw: object) -> tuple[Workload, Endpoint]:
    wl = Workload(uid, uid, "default", addresses=(f"10.77.1.{len(uid)}",), **kw)  # type: ignore[arg-type]
    return wl, Endpoint(uid, {})


def test_undeclared_port_has_no_upstream() -> None:
    assert select_endpoint(SVC, [ep("a")], 81, SRC) is None


def test_target_port_resolution_prefers_workload_map() -> None:
    wl, _ = ep("a")
    picked = select_endpoint(SVC, [(wl, Endpoint("a", {80: 9999}))], 80, SRC)
    assert picked == (wl, 9999)
    picked = select_endpoint(SVC, [(wl, Endpoint("a", {}))], 80, SRC)
    assert picked == (wl, 8080)


def test_unhealthy_skipped_unless_allow_all() -> None:
    sick = ep("sick", healthy=False)
    assert select_endpoint(SVC, [sick], 80, SRC) is None
    allow = Service(
        **{
            **{f: getattr(SVC, f) for f in SVC.__slots__},
            "load_balancer": LoadBalancing(health_policy="ALLOW_ALL"),
        }
    )  # type: ignore[arg-type]
    assert select_endpoint(allow, [sick], 80, SRC) is not None


def test_weighted_by_capacity() -> None:
    rng = random.Random(7)
    heavy, light = ep("heavy", capacity=9), ep("li", capacity=1)
    counts = Counter(select_endpoint(SVC, [heavy, light], 80, SRC, rng)[0].uid for _ in range(2000))  # type: ignore[index]
    assert 0.85 < counts["heavy"] / 2000 < 0.95
    assert select_endpoint(SVC, [ep("zero", capacity=0)], 80, SRC) is None


def test_failover_prefers_closest() -> None:
    lb = LoadBalancing(("NETWORK", "REGION", "ZONE"), "FAILOVER")
    svc = Service("s", "default", "s.default", ports={80: 80}, load_balancer=lb)
    near = ep("near", locality=Locality("r1", "z1"))
    mid = ep("mid", locality=Locality("r1", "z9"))
    far = ep("far", locality=Locality("r9", "z1"))
    for _ in range(20):
        assert select_endpoint(svc, [near, mid, far], 80, SRC)[0].uid == "near"  # type: ignore[index]
    assert select_endpoint(svc, [mid, far], 80, SRC)[0].uid == "mid"  # type: ignore[index]


def test_network_first_bonus() -> None:
    prefs = ("NETWORK", "REGION", "ZONE")
    other_net_same_zone = Workload("a", "a", "d", network="nw2", locality=Locality("r1", "z1"))
    same_net_far = Workload("b", "b", "d", locality=Locality("r9", "z9"))
    assert locality_rank(prefs, SRC, same_net_far) > locality_rank(prefs, SRC, other_net_same_zone)


def test_strict_drops_non_matching() -> None:
    svc = Service(
        "s", "default", "s.default", ports={80: 80}, load_balancer=LoadBalancing(("NODE",), "STRICT")
    )
    local, remote = ep("local", node="n1"), ep("remote", node="n2")
    assert select_endpoint(svc, [local, remote], 80, SRC)[0].uid == "local"  # type: ignore[index]
    assert select_endpoint(svc, [remote], 80, SRC) is None
