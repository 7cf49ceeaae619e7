"""State: the one updater, conversion + rejection, indexes, lookups, waits."""

from __future__ import annotations

import asyncio
import ipaddress

from meshproto.istio.security import authorization_pb2 as authz_pb2
from meshproto.istio.workload import workload_pb2 as wl_pb2
from ztunnel.state.records import Service, Workload
from ztunnel.state.state import ADDRESS_TYPE, AUTHORIZATION_TYPE, State


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def wl_msg(uid: str, addr: str, **kw: object) -> wl_pb2.Address:
    w = wl_pb2.Workload(uid=uid, name=uid, namespace="default", addresses=[ip(addr)], **kw)  # type: ignore[arg-type]
    return wl_pb2.Address(workload=w)


def svc_msg(name: str, vip: str, ns: str = "default") -> wl_pb2.Address:
    s = wl_pb2.Service(
        name=name,
        namespace=ns,
        hostname=f"{name}.{ns}.svc.cluster.local",
        addresses=[wl_pb2.NetworkAddress(address=ip(vip))],
        ports=[wl_pb2.Port(service_port=80, target_port=8080)],
    )
    return wl_pb2.Address(service=s)


def test_apply_inserts_and_indexes() -> None:
    state = State()
    rejected = state.apply(
        ADDRESS_TYPE,
        [
            ("w1", wl_msg("w1", "10.77.0.1").SerializeToString()),
            ("default/a", svc_msg("a", "10.96.0.1").SerializeToString()),
        ],
        [],
    )
    assert rejected == []
    wl = state.find_workload_by_ip("10.77.0.1")
    assert wl is not None
    assert wl.identity.uri == "spiffe://cluster.local/ns/default/sa/default"
    svc = state.find_service_by_vip("10.96.0.1", "default")
    assert svc is not None
    assert svc.ports == {80: 8080}


def test_bad_resource_rejected_alone() -> None:
    state = State()
    bad = wl_pb2.Address(workload=wl_pb2.Workload(uid="bad", addresses=[b"\x01\x02"]))
    legacy = wl_pb2.Address(workload=wl_pb2.Workload(uid="legacy", tunnel_protocol=2))
    rejected = state.apply_addresses(
        [("bad", bad), ("legacy", legacy), ("empty", wl_pb2.Address()), ("ok", wl_msg("ok", "10.77.0.2"))], []
    )
    assert [name for name, _ in rejected] == ["bad", "legacy", "empty"]
    assert "4 or 16" in rejected[0][1]
    assert state.find_workload_by_ip("10.77.0.2") is not None


def test_update_replaces_indexes() -> None:
    state = State()
    state.apply_addresses([("w", wl_msg("w", "10.77.0.1"))], [])
    state.apply_addresses([("w", wl_msg("w", "10.77.0.9"))], [])
    assert state.find_workload_by_ip("10.77.0.1") is None
    assert state.find_workload_by_ip("10.77.0.9") is not None
    state.apply_addresses([], ["w"])
    assert state.find_workload_by_ip("10.77.0.9") is None
    assert len(state.workloads) == 0


def test_endpoints_staged_until_service_arrives() -> None:
    state = State()
    w = wl_pb2.Workload(
        uid="w",
        name="w",
        namespace="default",
        addresses=[ip("10.77.0.1")],
        services={
            "default/a.default.svc.cluster.local": wl_pb2.PortList(
                ports=[wl_pb2.Port(service_port=80, target_port=9090)]
            )
        },
    )
    state.apply_addresses([("w", wl_pb2.Address(workload=w))], [])
    assert "default/a.default.svc.cluster.local" in state.services.staged()
    state.apply_addresses([("default/a", svc_msg("a", "10.96.0.1"))], [])
    svc = state.find_service("default/a.default.svc.cluster.local")
    assert svc is not None
    assert [(wl.uid, ep.ports[80]) for wl, ep in state.endpoints(svc)] == [("w", 9090)]
    assert state.services.staged() == {}
    state.apply_addresses([], ["default/a.default.svc.cluster.local"])
    assert state.find_service("default/a.default.svc.cluster.local") is None


def test_vip_lookup_prefers_visible_then_same_namespace() -> None:
    state = State()
    state.insert_service(Service("a", "other", "a.other", vips=(("", "10.96.0.5"),), ports={80: 80}))
    state.insert_service(Service("a", "mine", "a.mine", vips=(("", "10.96.0.5"),), ports={80: 80}))
    state.insert_service(
        Service("a", "hidden", "a.hidden", vips=(("", "10.96.0.6"),), ports={80: 80}, visibility="NAMESPACE")
    )
    found = state.find_service_by_vip("10.96.0.5", "mine")
    assert found is not None
    assert found.namespace == "mine"
    assert state.find_service_by_vip("10.96.0.6", "mine") is None
    assert state.find_service_by_vip("10.96.0.6", "hidden") is not None


def test_policy_selection_and_listener() -> None:
    state = State()
    fired: list[int] = []
    state.on_policy_change(lambda: fired.append(1))
    pols = [
        (
            "default/ns-wide",
            authz_pb2.Authorization(name="ns-wide", namespace="default", scope=authz_pb2.NAMESPACE),
        ),
        (
            "istio-system/mesh",
            authz_pb2.Authorization(name="mesh", namespace="istio-system", scope=authz_pb2.GLOBAL),
        ),
        (
            "default/sel",
            authz_pb2.Authorization(name="sel", namespace="default", scope=authz_pb2.WORKLOAD_SELECTOR),
        ),
        ("other/x", authz_pb2.Authorization(name="x", namespace="other", scope=authz_pb2.NAMESPACE)),
    ]
    assert state.apply(AUTHORIZATION_TYPE, [(n, p.SerializeToString()) for n, p in pols], []) == []
    assert fired
    wl = Workload("w", "w", "default", authorization_policies=("default/sel", "default/missing"))
    assert [p.key for p in state.policies_for(wl)] == ["default/ns-wide", "default/sel", "istio-system/mesh"]
    state.apply_authorizations([], ["default/sel"])
    assert [p.key for p in state.policies_for(wl)] == ["default/ns-wide", "istio-system/mesh"]


async def test_fetch_pod_workload_waits_for_arrival() -> None:
    state = State()
    waiter = asyncio.ensure_future(state.fetch_pod_workload("p", "default", "sa", "node1", 5.0))
    await asyncio.sleep(0)
    assert not waiter.done()
    state.insert_workload(Workload("u", "p", "default", service_account="sa", node="node2"))
    await asyncio.sleep(0)
    assert not waiter.done()  # other node
    state.insert_workload(Workload("u2", "p", "default", service_account="sa", node="node1"))
    found = await asyncio.wait_for(waiter, 5)
    assert found is not None
    assert found.uid == "u2"


async def test_fetch_times_out() -> None:
    state = State()
    assert await state.fetch_pod_workload("p", "default", "sa", "n", 0.01) is None


def test_a_workload_entry_cannot_take_over_a_pod_ip() -> None:
    """Two workloads on one IP: the pod wins whatever the order (a user-written WorkloadEntry must not
    redirect or downgrade traffic to a pod), and removing one claimant leaves the other findable."""
    pod = Workload("Kubernetes//Pod/default/web", "web", "default", ("10.77.0.9",), tunnel_protocol="HBONE")
    entry_uid = "Kubernetes/networking.istio.io/WorkloadEntry/default/fake"
    entry = Workload(entry_uid, "fake", "default", ("10.77.0.9",))
    for first, second in ((pod, entry), (entry, pod)):
        state = State()
        state.insert_workload(first)
        state.insert_workload(second)
        assert state.find_workload_by_ip("10.77.0.9") == pod
        state.insert_workload(entry)  # an update of the entry changes nothing
        assert state.find_workload_by_ip("10.77.0.9") == pod
        state.apply_addresses([], [pod.uid])
        assert state.find_workload_by_ip("10.77.0.9") == entry
        state.insert_workload(pod)
        state.apply_addresses([], [entry.uid])
        assert state.find_workload_by_ip("10.77.0.9") == pod


def test_reused_pod_ip_survives_the_old_pods_removal() -> None:
    """A new pod gets the IP of a pod that is going away; the old one's last update and removal must not
    hide the new one (its traffic would leave as plaintext passthrough)."""
    old = Workload("Kubernetes//Pod/default/a", "a", "default", ("10.77.0.8",), tunnel_protocol="HBONE")
    new = Workload("Kubernetes//Pod/default/b", "b", "default", ("10.77.0.8",), tunnel_protocol="HBONE")
    state = State()
    state.insert_workload(old)
    state.insert_workload(new)
    state.insert_workload(old)  # the terminating pod's status update
    state.apply_addresses([], [old.uid])
    assert state.find_workload_by_ip("10.77.0.8") == new


def test_host_network_workloads_are_not_found_by_ip() -> None:
    """HostNetwork pods carry their node's IP: traffic to a node IP is not traffic to that pod (upstream)."""
    state = State()
    agent = "Kubernetes//Pod/kube-system/agent"
    node_ip = ("172.18.0.3",)
    state.insert_workload(Workload(agent, "agent", "kube-system", node_ip, network_mode="HostNetwork"))
    assert state.find_workload_by_ip("172.18.0.3") is None
    state.apply_addresses([], [agent])
    assert not state.workloads.by_addr


def test_pod_workload_prefers_the_pod_over_a_namesake() -> None:
    """ZDS joins on (name, namespace, service account, node); a WorkloadEntry of the same name (written by a
    user) must not be picked as the pod's workload, whatever its uid sorts like."""
    state = State()
    entry_uid = "A/networking.istio.io/WorkloadEntry/default/p"  # sorts before the pod's uid
    entry = Workload(entry_uid, "p", "default", ("10.77.0.66",), node="n1")
    pod = Workload("Kubernetes//Pod/default/p", "p", "default", ("10.77.0.6",), node="n1")
    state.insert_workload(entry)
    state.insert_workload(pod)
    assert state.find_pod_workload("p", "default", "default", "n1") == pod
    assert state.find_pod_workload("p", "default", "default", "n2") is None
