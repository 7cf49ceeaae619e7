"""Outbound routing decisions (§4.1): service vs workload, waypoints, passthrough, drops, loops."""

from __future__ import annotations

import random

from meshkit.identity.spiffe import Identity
from ztunnel.proxy.route import Drop, Hbone, Passthrough, Plain, plan_outbound
from ztunnel.state.records import GatewayAddress, LoadBalancing, NamespacedHostname, Service, Workload
from ztunnel.state.state import State

WP_HOST = NamespacedHostname("default", "waypoint.default.svc.cluster.local")
WP_GW = GatewayAddress(WP_HOST, None, 15008)


def state() -> State:
    s = State()
    s.insert_workload(Workload("src", "src", "default", addresses=("10.77.1.10",), tunnel_protocol="HBONE"))
    s.insert_workload(
        Workload(
            "srv",
            "srv",
            "default",
            addresses=("10.77.2.10",),
            tunnel_protocol="HBONE",
            service_account="srv",
            services={"default/svc.default.svc.cluster.local": {80: 9080}},
        )
    )
    s.insert_workload(Workload("plain", "plain", "default", addresses=("10.77.2.20",)))
    s.insert_workload(
        Workload(
            "wp",
            "wp",
            "default",
            addresses=("10.77.3.10",),
            tunnel_protocol="HBONE",
            service_account="waypoint",
            services={"default/waypoint.default.svc.cluster.local": {15008: 15008}},
        )
    )
    s.insert_service(
        Service(
            "svc", "default", "svc.default.svc.cluster.local", vips=(("", "10.96.0.1"),), ports={80: 8080}
        )
    )
    s.insert_service(
        Service(
            "waypoint",
            "default",
            "waypoint.default.svc.cluster.local",
            vips=(("", "10.96.0.99"),),
            ports={15008: 15008},
        )
    )
    return s


def src(s: State) -> Workload:
    wl = s.find_workload_by_ip("10.77.1.10")
    assert wl is not None
    return wl


def test_service_vip_goes_to_endpoint_with_target_port() -> None:
    s = state()
    plan = plan_outbound(s, src(s), ("10.96.0.1", 80), random.Random(1))
    assert isinstance(plan, Hbone)
    assert plan.dial == ("10.77.2.10", 15008)
    assert plan.authority == ("10.77.2.10", 9080)
    assert plan.identities == (Identity("cluster.local", "default", "srv"),)
    assert plan.service is not None


def test_undeclared_service_port_drops() -> None:
    s = state()
    assert isinstance(plan_outbound(s, src(s), ("10.96.0.1", 81), random.Random(1)), Drop)


def test_unknown_destination_passes_through() -> None:
    s = state()
    assert plan_outbound(s, src(s), ("93.184.216.34", 443), random.Random(1)) == Passthrough(
        ("93.184.216.34", 443)
    )


def test_uncaptured_workload_gets_plain_tcp() -> None:
    s = state()
    plan = plan_outbound(s, src(s), ("10.77.2.20", 8080), random.Random(1))
    assert isinstance(plan, Plain)
    assert plan.target == ("10.77.2.20", 8080)


def test_loopback_to_ztunnel_port_is_a_loop() -> None:
    s = state()
    assert isinstance(plan_outbound(s, src(s), ("127.0.0.1", 15001), random.Random(1)), Drop)


def test_service_waypoint_keeps_original_authority() -> None:
    s = state()
    svc = s.find_service("default/svc.default.svc.cluster.local")
    assert svc is not None
    s.insert_service(Service(**{**{f: getattr(svc, f) for f in svc.__slots__}, "waypoint": WP_GW}))  # type: ignore[arg-type]
    plan = plan_outbound(s, src(s), ("10.96.0.1", 80), random.Random(1))
    assert isinstance(plan, Hbone)
    assert plan.via_waypoint
    assert plan.dial == ("10.77.3.10", 15008)
    assert plan.authority == ("10.96.0.1", 80)
    assert plan.identities == (Identity("cluster.local", "default", "waypoint"),)


def test_unknown_waypoint_fails_closed() -> None:
    s = state()
    svc = s.find_service("default/svc.default.svc.cluster.local")
    assert svc is not None
    missing = GatewayAddress(NamespacedHostname("default", "nope.default.svc.cluster.local"), None)
    s.insert_service(Service(**{**{f: getattr(svc, f) for f in svc.__slots__}, "waypoint": missing}))  # type: ignore[arg-type]
    assert isinstance(plan_outbound(s, src(s), ("10.96.0.1", 80), random.Random(1)), Drop)


def test_workload_waypoint_unless_coming_from_it() -> None:
    s = state()
    srv = s.find_workload_by_ip("10.77.2.10")
    assert srv is not None
    s.insert_workload(Workload(**{**{f: getattr(srv, f) for f in srv.__slots__}, "waypoint": WP_GW}))  # type: ignore[arg-type]
    plan = plan_outbound(s, src(s), ("10.77.2.10", 9080), random.Random(1))
    assert isinstance(plan, Hbone)
    assert plan.via_waypoint
    wp = s.find_workload_by_ip("10.77.3.10")
    assert wp is not None
    direct = plan_outbound(s, wp, ("10.77.2.10", 9080), random.Random(1))  # the waypoint itself: no loop
    assert isinstance(direct, Hbone)
    assert not direct.via_waypoint
    assert direct.dial == ("10.77.2.10", 15008)


def test_passthrough_service_mode() -> None:
    s = state()
    s.insert_service(
        Service("ext", "default", "ext.example.com", vips=(("", "10.96.0.7"),), ports={443: 443},
                load_balancer=LoadBalancing(mode="PASSTHROUGH"))
    )  # fmt: skip
    assert plan_outbound(s, src(s), ("10.96.0.7", 443), random.Random(1)) == Passthrough(("10.96.0.7", 443))


def test_hostname_workload_is_resolved_on_demand() -> None:
    s = state()
    s.insert_workload(
        Workload(
            "ext",
            "ext",
            "default",
            hostname="api.example.com",
            services={"default/ext.example.com": {443: 8443}},
        )
    )
    s.insert_service(Service("ext", "default", "ext.example.com", vips=(("", "10.96.0.8"),), ports={443: 0}))
    plan = plan_outbound(s, src(s), ("10.96.0.8", 443), random.Random(1))
    assert plan == Plain(
        ("api.example.com", 8443), s.workloads.by_uid["ext"], s.find_service("default/ext.example.com"), True
    )


def test_service_sans_are_expected_too_and_bad_ones_ignored() -> None:
    s = state()
    svc = s.find_service("default/svc.default.svc.cluster.local")
    assert svc is not None
    sans = ("spiffe://cluster.local/ns/default/sa/extra", "not-a-spiffe-id", "spiffe://broken")
    s.insert_service(Service(**{**{f: getattr(svc, f) for f in svc.__slots__}, "subject_alt_names": sans}))  # type: ignore[arg-type]
    plan = plan_outbound(s, src(s), ("10.96.0.1", 80), random.Random(1))
    assert isinstance(plan, Hbone)
    assert plan.identities == (
        Identity("cluster.local", "default", "extra"),
        Identity("cluster.local", "default", "srv"),
    )
