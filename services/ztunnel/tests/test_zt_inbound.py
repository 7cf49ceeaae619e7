"""Inbound HBONE decisions (§2.7, §4.4, §4.6) on loopback: status per failure, hostname authority, policy."""

from __future__ import annotations

import asyncio
import socket

from meshkit.drain import Drain
from meshkit.hbone.request import parse_request
from meshkit.hbone.server import Forward, InboundPeer, Reject
from meshkit.identity.spiffe import Identity
from meshkit.settings import load
from meshkit.sockets import HostSocketFactory
from meshkit.zds import WorkloadInfo
from prometheus_client import CollectorRegistry
from ztunnel.metrics import DnsMetrics, ProxyMetrics
from ztunnel.proxy.context import PodContext, ProxyServices
from ztunnel.proxy.inbound import InboundProxy
from ztunnel.settings import Settings
from ztunnel.state.records import Authorization, Match, Service, Workload
from ztunnel.state.state import State

CLIENT = Identity("cluster.local", "default", "client")
SVC = Service("app", "default", "app.default.svc.cluster.local", vips=(("", "10.96.0.5"),), ports={80: 0})


def make(port: int) -> tuple[InboundProxy, State]:
    state = State()
    state.insert_workload(
        Workload(
            "app", "app", "default", addresses=("127.0.0.1",), tunnel_protocol="HBONE", service_account="app",
            services={SVC.key: {80: port}},
        )
    )  # fmt: skip
    state.insert_service(SVC)
    registry = CollectorRegistry()
    settings = load(Settings, {"WORKLOAD_WAIT": "50ms"})
    services = ProxyServices(
        settings,
        state,
        None,
        ProxyMetrics(registry),
        DnsMetrics(registry),
        Drain(),
        spoof_source=False,  # type: ignore[arg-type]
    )
    pod = PodContext("uid", WorkloadInfo("app", "default", "app"), HostSocketFactory(), services)
    return InboundProxy(pod), state


def peer() -> InboundPeer:
    return InboundPeer(CLIENT, ("127.0.0.1", 40000), ("127.0.0.1", 15008))


def connect(authority: str) -> object:
    return parse_request(1, [(":method", "CONNECT"), (":authority", authority)])


async def test_status_codes() -> None:
    proxy, state = make(8080)
    assert await proxy.handle(peer(), connect("10.9.9.9:8080")) == Reject(
        400, "authority 10.9.9.9:8080 is not this pod"
    )  # type: ignore[arg-type]
    decision = await proxy.handle(peer(), connect("127.0.0.1:15001"))  # type: ignore[arg-type]
    assert isinstance(decision, Reject)
    assert decision.status == 503
    decision = await proxy.handle(peer(), connect("nope.default.svc.cluster.local:80"))  # type: ignore[arg-type]
    assert isinstance(decision, Reject)
    assert decision.status == 503
    state.insert_policy(
        Authorization(
            "d", "default", "NAMESPACE", "DENY", (((Match(destination_ports=frozenset({8080})),),),)
        )
    )
    decision = await proxy.handle(peer(), connect("127.0.0.1:8080"))  # type: ignore[arg-type]
    assert isinstance(decision, Reject)
    assert decision.status == 401


async def test_unknown_local_workload_is_503() -> None:
    proxy, state = make(8080)
    state.apply_addresses([], ["app"])
    decision = await proxy.handle(peer(), connect("127.0.0.1:8080"))  # type: ignore[arg-type]
    assert isinstance(decision, Reject)
    assert decision.status == 503


async def test_hostname_authority_maps_service_port_to_target() -> None:
    app = socket.create_server(("127.0.0.1", 0))
    app.setblocking(False)
    port = app.getsockname()[1]
    proxy, _ = make(port)
    try:
        decision = await proxy.handle(peer(), connect("app.default.svc.cluster.local:80"))  # type: ignore[arg-type]
        assert isinstance(decision, Forward)
        sock = await decision.connect()
        accepted, _ = await asyncio.wait_for(asyncio.get_running_loop().sock_accept(app), 5)
        assert accepted.getsockname()[1] == port
        accepted.close()
        sock.close()
    finally:
        app.close()


def test_source_labels_from_baggage() -> None:
    from ztunnel.proxy.inbound import workload_from_baggage

    wl = workload_from_baggage(
        "k8s.cluster.name=c1,k8s.namespace.name=ns,k8s.deployment.name=web,service.name=web,service.version=v2,"
        "cloud.region=r,cloud.availability_zone=z"
    )
    assert wl is not None
    assert (wl.namespace, wl.workload_name, wl.workload_type) == ("ns", "web", "deployment")
    assert (wl.canonical_name, wl.canonical_revision, wl.cluster_id) == ("web", "v2", "c1")
    assert (wl.locality.region, wl.locality.zone) == ("r", "z")
    assert workload_from_baggage(None) is None


def test_proxy_v2_header_layout() -> None:
    from ztunnel.proxy.proxy_protocol import SIGNATURE, header

    raw = header(("10.77.1.10", 40000), ("10.77.2.10", 8080), CLIENT.uri)
    assert raw.startswith(SIGNATURE)
    ver_cmd, family, length = raw[12], raw[13], int.from_bytes(raw[14:16], "big")
    assert (ver_cmd, family) == (0x21, 0x11)
    body = raw[16:]
    assert len(body) == length
    assert body[:4] == bytes([10, 77, 1, 10])
    assert body[4:8] == bytes([10, 77, 2, 10])
    assert int.from_bytes(body[8:10], "big") == 40000
    assert int.from_bytes(body[10:12], "big") == 8080
    assert body[12] == 0xD0
    assert body[15:].decode() == CLIENT.uri


async def test_application_tunnel_gets_proxy_header() -> None:
    from ztunnel.proxy.proxy_protocol import SIGNATURE

    tunnel = socket.create_server(("127.0.0.1", 0))
    tunnel.setblocking(False)
    tunnel_port = tunnel.getsockname()[1]
    proxy, state = make(8080)
    wl = state.workloads.by_uid["app"]
    state.insert_workload(
        Workload(
            **{**{f: getattr(wl, f) for f in wl.__slots__}, "application_tunnel": ("PROXY", tunnel_port)}
        )
    )  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    try:
        decision = await proxy.handle(peer(), connect("127.0.0.1:8080"))  # type: ignore[arg-type]
        assert isinstance(decision, Forward)
        sock = await decision.connect()
        accepted, _ = await asyncio.wait_for(loop.sock_accept(tunnel), 5)
        accepted.setblocking(False)
        data = await asyncio.wait_for(loop.sock_recv(accepted, 4096), 5)
        assert data.startswith(SIGNATURE)
        assert CLIENT.uri.encode() in data
        assert int.from_bytes(data[16 + 10 : 16 + 12], "big") == 8080  # the original target port
        accepted.close()
        sock.close()
    finally:
        tunnel.close()


async def test_sandwiched_waypoint_accepts_its_targets() -> None:
    from ztunnel.state.records import GatewayAddress, NamespacedHostname

    proxy, state = make(8080)
    waypoint = GatewayAddress(
        NamespacedHostname("default", SVC.hostname), None, 15008
    )  # "app" is the waypoint
    state.insert_service(
        Service(
            "b",
            "default",
            "b.default.svc.cluster.local",
            vips=(("", "10.96.0.7"),),
            ports={80: 80},
            waypoint=waypoint,
        )
    )
    decision = await proxy.handle(peer(), connect("10.96.0.7:80"))  # type: ignore[arg-type]
    assert isinstance(decision, Forward)
    decision = await proxy.handle(peer(), connect("10.96.0.8:80"))  # type: ignore[arg-type]
    assert isinstance(decision, Reject)
    assert decision.status == 400


def _with_tunnel(state: State, tunnel: tuple[str, int]) -> None:
    wl = state.workloads.by_uid["app"]
    fields = {f: getattr(wl, f) for f in wl.__slots__}
    state.insert_workload(Workload(**{**fields, "application_tunnel": tunnel}))  # type: ignore[arg-type]


async def _accepts(server: socket.socket) -> bool:
    try:
        conn, _ = await asyncio.wait_for(asyncio.get_running_loop().sock_accept(server), 0.5)
    except TimeoutError:
        return False
    conn.close()
    return True


async def test_foreign_authority_is_never_dialled() -> None:
    """A pod with an application tunnel (or a sandwiched waypoint) accepts an authority that is not its own
    IP, but the connection still goes to the pod's own IP (the HBONE destination): a peer must not be able to
    make ztunnel dial other addresses from inside the pod (§2.7: the authority only picks the port)."""
    foreign = socket.create_server(("127.0.0.2", 0))
    port = foreign.getsockname()[1]
    local = socket.create_server(("127.0.0.1", port))
    for s in (foreign, local):
        s.setblocking(False)
    proxy, state = make(port)
    _with_tunnel(state, ("NONE", 0))
    try:
        decision = await proxy.handle(peer(), connect(f"127.0.0.2:{port}"))  # type: ignore[arg-type]
        assert isinstance(decision, Forward)
        sock = await decision.connect()
        sock.close()
        assert await _accepts(local)
        assert not await _accepts(foreign)
    finally:
        foreign.close()
        local.close()


async def test_proxy_header_names_the_authority() -> None:
    """The PROXY header's destination is what the peer asked for (the authority), not the pod's address."""
    tunnel = socket.create_server(("127.0.0.1", 0))
    tunnel.setblocking(False)
    proxy, state = make(8080)
    _with_tunnel(state, ("PROXY", tunnel.getsockname()[1]))
    loop = asyncio.get_running_loop()
    try:
        decision = await proxy.handle(peer(), connect("10.1.2.3:9090"))  # type: ignore[arg-type]
        assert isinstance(decision, Forward)
        sock = await decision.connect()
        accepted, _ = await asyncio.wait_for(loop.sock_accept(tunnel), 5)
        accepted.setblocking(False)
        data = await asyncio.wait_for(loop.sock_recv(accepted, 4096), 5)
        assert data[16 + 4 : 16 + 8] == bytes([10, 1, 2, 3])
        assert int.from_bytes(data[16 + 10 : 16 + 12], "big") == 9090
        accepted.close()
        sock.close()
    finally:
        tunnel.close()
