"""End to end: two nodes with a ztunnel each, pods captured by the real in-pod iptables rules, ZDS driven as
the CNI agent drives it, certificates from an in-process CA, config given to both ztunnels."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from pathlib import Path

import aiohttp
import dnslib
import pytest
from ztunnel.state.records import Authorization, Match, Service, StringMatch, Workload

pytestmark = [pytest.mark.root, pytest.mark.slow]

SVC_KEY = "default/echo.default.svc.cluster.local"
VIP = "10.77.200.1"


def echo_service() -> Service:
    return Service("echo", "default", "echo.default.svc.cluster.local", vips=(("", VIP),), ports={80: 8080})


async def setup(
    mesh, topology, *, same_node: bool = False, extra_pods: tuple[str, ...] = (), hold: bool = False
):  # type: ignore[no-untyped-def]
    if not topology.nodes:
        topology.add_node()
        topology.add_node()
        topology.link_nodes()
    n1, n2 = topology.nodes
    client = topology.add_pod(n1, "client")
    server = topology.add_pod(n1 if same_node else n2, "server")
    extras = [topology.add_pod(n1, name) for name in extra_pods]
    mesh.workloads = [mesh.workload(client), mesh.workload(server, (SVC_KEY,)), *map(mesh.workload, extras)]
    mesh.services = [echo_service()]
    if hold:  # the pods are captured before the control plane knows them
        full, mesh.workloads = mesh.workloads, []
        await mesh.start(wait_ready=False)
        mesh.workloads = full
    else:
        await mesh.start()
    echo = await mesh.echo(server)
    return client, server, echo, extras


async def refused(mesh, pod, ip: str, port: int) -> bool:  # type: ignore[no-untyped-def]
    """True when the connection is reset/closed without an echo."""
    try:
        reply = await mesh.request(pod, ip, port, b"ping")
    except (ConnectionError, OSError):
        return True
    return reply == b""


@contextlib.asynccontextmanager
async def capture(netns: str, iface: str, out: Path):  # type: ignore[no-untyped-def]
    argv = [
        "ip",
        "netns",
        "exec",
        netns,
        "tcpdump",
        "--immediate-mode",
        "-i",
        iface,
        "-U",
        "-n",
        "-w",
        str(out),
    ]
    proc = await asyncio.create_subprocess_exec(*argv, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stderr is not None
        line = await asyncio.wait_for(proc.stderr.readline(), 10)  # "listening on ..." once it captures
        assert b"listening on" in line, line
        yield
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.communicate(), 10)


async def read_pcap(pcap: Path) -> str:
    proc = await asyncio.create_subprocess_exec(
        "tcpdump", "-nn", "-r", str(pcap), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    out, _ = await proc.communicate()
    return out.decode()


async def test_cross_node_service_is_tunnelled_and_encrypted(mesh, topology, tmp_path) -> None:  # type: ignore[no-untyped-def]
    client, _server, echo, _ = await setup(mesh, topology)
    secret = b"PLAINTEXT-MARKER-" * 64
    pcap = tmp_path / "link.pcap"
    async with capture(topology.nodes[0].ns.name, "link0", pcap):
        reply = await mesh.request(client, VIP, 80, secret)
    assert reply == secret
    assert echo.peers[0][0] == client.ip  # the app sees the client's own IP (original source preserved)
    raw = pcap.read_bytes()
    assert b"PLAINTEXT-MARKER" not in raw
    summary = await read_pcap(pcap)
    assert ".15008:" in summary  # the bytes crossed the node link on the HBONE port
    assert b"\x17\x03\x03" in raw  # TLS application-data records
    assert ":8080" not in summary  # never the app port in clear
    assert ":80:" not in summary


async def test_same_node_traffic_is_tunnelled(mesh, topology, tmp_path) -> None:  # type: ignore[no-untyped-def]
    client, server, echo, _ = await setup(mesh, topology, same_node=True)
    pcap = tmp_path / "bridge.pcap"
    async with capture(topology.nodes[0].ns.name, "br0", pcap):
        assert await mesh.request(client, VIP, 80, b"same node") == b"same node"
        assert await mesh.request(client, server.ip, 8080, b"by pod ip") == b"by pod ip"
    summary = await read_pcap(pcap)
    assert f"{server.ip}.15008:" in summary
    assert f"{server.ip}.8080:" not in summary
    assert echo.peers[0][0] == client.ip


async def test_deny_policy_resets(mesh, topology) -> None:  # type: ignore[no-untyped-def]
    client, _server, echo, _ = await setup(mesh, topology)
    assert await mesh.request(client, VIP, 80, b"before") == b"before"
    deny = Authorization(
        "deny-8080", "default", "NAMESPACE", "DENY", (((Match(destination_ports=frozenset({8080})),),),)
    )
    mesh.policies = [deny]
    mesh.publish()
    assert await refused(mesh, client, VIP, 80)
    assert len(echo.peers) == 1


async def test_allow_by_principal_admits_only_that_identity(mesh, topology) -> None:  # type: ignore[no-untyped-def]
    client, _server, echo, (intruder,) = await setup(mesh, topology, extra_pods=("intruder",))
    allow = Authorization(
        "allow-client",
        "default",
        "NAMESPACE",
        "ALLOW",
        (((Match(principals=(StringMatch("exact", "cluster.local/ns/default/sa/client"),)),),),),
    )
    mesh.policies = [allow]
    mesh.publish()
    assert await mesh.request(client, VIP, 80, b"friend") == b"friend"
    assert await refused(mesh, intruder, VIP, 80)
    assert [p[0] for p in echo.peers] == [client.ip]


async def test_policy_change_closes_existing_connection(mesh, topology) -> None:  # type: ignore[no-untyped-def]
    client, _server, echo, _ = await setup(mesh, topology)
    from meshkit.sockets import open_tcp

    sock = await open_tcp(mesh.factory(client), VIP, 80)
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(b"one")
    assert await asyncio.wait_for(reader.readexactly(3), 10) == b"one"
    mesh.policies = [
        Authorization(
            "deny-all", "default", "NAMESPACE", "DENY", (((Match(destination_ports=frozenset({8080})),),),)
        )
    ]
    mesh.publish()
    with contextlib.suppress(ConnectionError):
        assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
    assert len(echo.peers) == 1


async def test_strict_blocks_plaintext_from_uncaptured_pod(mesh, topology) -> None:  # type: ignore[no-untyped-def]
    client, server, _echo, _ = await setup(mesh, topology)
    outsider = topology.add_pod(topology.nodes[0], "outsider", captured=False)
    mesh.workloads.append(mesh.workload(outsider))
    mesh.publish()
    assert await mesh.request(outsider, server.ip, 8080, b"permissive") == b"permissive"
    from meshkit.sockets import open_tcp

    held = await open_tcp(
        mesh.factory(outsider), server.ip, 8080
    )  # a plaintext connection open across the change
    reader, writer = await asyncio.open_connection(sock=held)
    writer.write(b"open")
    assert await asyncio.wait_for(reader.readexactly(4), 10) == b"open"
    strict = Authorization(
        "istio_converted_static_strict",
        "istio-system",
        "GLOBAL",
        "DENY",
        (((Match(not_principals=(StringMatch("presence"),)),),),),
    )
    mesh.policies = [strict]
    mesh.publish()
    assert await refused(mesh, outsider, server.ip, 8080)
    with contextlib.suppress(ConnectionError):  # STRICT now denies it: ztunnel closes the existing connection
        assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
    assert await mesh.request(client, VIP, 80, b"mtls still fine") == b"mtls still fine"


async def test_dns_proxy_answers(mesh, topology) -> None:  # type: ignore[no-untyped-def]
    client, _server, _echo, _ = await setup(mesh, topology)
    loop = asyncio.get_running_loop()
    # direct (v4 and v6 loopback), and through the DNS capture rule
    for target in (("127.0.0.1", 15053), ("::1", 15053), ("10.77.1.1", 53)):
        for name in ("echo", "echo.default.svc.cluster.local"):
            sock = mesh.factory(client).bind_udp("::" if ":" in target[0] else "0.0.0.0", 0)
            try:
                await loop.sock_connect(sock, target)
                await loop.sock_sendall(sock, dnslib.DNSRecord.question(name, "A").pack())
                reply = dnslib.DNSRecord.parse(await asyncio.wait_for(loop.sock_recv(sock, 4096), 10))
            finally:
                sock.close()
            assert [str(rr.rdata) for rr in reply.rr] == [VIP], (target, name)
    _ = ipaddress


async def test_metrics_count_bytes(mesh, topology) -> None:  # type: ignore[no-untyped-def]
    client, _server, _echo, _ = await setup(mesh, topology)
    payload = b"x" * 10_000
    assert await mesh.request(client, VIP, 80, payload) == payload
    dst_app = mesh.apps["node2"]
    src_app = mesh.apps["node1"]

    async def scrape(app) -> str:  # type: ignore[no-untyped-def]
        async with aiohttp.ClientSession() as session, session.get(app.url("stats") + "/metrics") as resp:
            return await resp.text()

    def value(text: str, name: str, reporter: str) -> float:
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") and f'reporter="{reporter}"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    # closed-connection bookkeeping finishes just after the echo; wait for it, bounded
    async with asyncio.timeout(10):
        while value(await scrape(dst_app), "istio_tcp_connections_closed_total", "destination") < 1:  # noqa: ASYNC110
            await asyncio.sleep(0.05)  # metrics have no change event to wait on
    dst, src = await scrape(dst_app), await scrape(src_app)
    assert value(dst, "istio_tcp_received_bytes_total", "destination") == len(payload)
    assert value(dst, "istio_tcp_sent_bytes_total", "destination") == len(payload)
    assert value(src, "istio_tcp_received_bytes_total", "source") == len(payload)
    assert value(dst, "istio_tcp_connections_opened_total", "destination") == 1
    assert 'source_principal="spiffe://cluster.local/ns/default/sa/client"' in dst
    assert 'connection_security_policy="mutual_tls"' in dst
    # bytes of a connection that is still open reach the counters while it runs (source side: HBONE relay)
    from meshkit.sockets import open_tcp

    sock = await open_tcp(mesh.factory(client), VIP, 80)
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(b"y" * 5000)
    await asyncio.wait_for(reader.readexactly(5000), 10)
    src_app.services.flush_live()
    dst_app.services.flush_live()
    src, dst = await scrape(src_app), await scrape(dst_app)
    assert value(src, "istio_tcp_received_bytes_total", "source") == len(payload) + 5000
    assert value(src, "istio_tcp_sent_bytes_total", "source") == len(payload) + 5000
    assert value(dst, "istio_tcp_received_bytes_total", "destination") == len(payload) + 5000
    assert value(dst, "istio_tcp_sent_bytes_total", "destination") == len(payload) + 5000
    writer.close()
    dump = mesh.apps["node1"].config_dump()
    assert [w["name"] for w in dump["workloads"]] == ["client", "server"]
    assert "privateKey" not in str(dump)
    assert "PRIVATE KEY" not in str(dump)


@pytest.mark.parametrize("grpc_impl", ["lite", "grpcio"])
async def test_config_over_xds_and_control_plane_loss(mesh, topology, grpc_impl) -> None:  # type: ignore[no-untyped-def]
    await mesh.enable_xds(grpc_impl)
    client, _server, echo, _ = await setup(mesh, topology)
    assert await mesh.request(client, VIP, 80, b"via xds config") == b"via xds config"
    # a policy pushed over xDS takes effect
    mesh.policies = [
        Authorization(
            "deny-8080", "default", "NAMESPACE", "DENY", (((Match(destination_ports=frozenset({8080})),),),)
        )
    ]
    mesh.publish()
    dst_state = mesh.apps["node2"].state
    async with asyncio.timeout(10):
        while "default/deny-8080" not in dst_state.policies.by_key:  # noqa: ASYNC110
            await asyncio.sleep(0.01)  # the store has no public change event
    assert await refused(mesh, client, VIP, 80)
    mesh.policies = []
    mesh.publish()
    async with asyncio.timeout(10):
        while "default/deny-8080" in dst_state.policies.by_key:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    # istiod goes away (xDS server and CA): cached config and certificates keep serving old and new ones
    from meshkit.sockets import open_tcp

    sock = await open_tcp(mesh.factory(client), VIP, 80)
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(b"open")
    assert await asyncio.wait_for(reader.readexactly(4), 10) == b"open"
    await mesh.xds.stop()
    mesh.fetcher.available = False
    for i in range(5):
        assert await mesh.request(client, VIP, 80, b"still here %d" % i) == b"still here %d" % i
    writer.write(b"more")
    assert await asyncio.wait_for(reader.readexactly(4), 10) == b"more"
    writer.close()
    assert len(echo.peers) >= 7
    # istiod comes back on the same address: ztunnel reconnects, resumes, and takes new config again
    await mesh.xds.start(mesh.xds.port)
    mesh.policies = [
        Authorization(
            "deny-8080", "default", "NAMESPACE", "DENY", (((Match(destination_ports=frozenset({8080})),),),)
        )
    ]
    mesh.publish()
    async with asyncio.timeout(30):
        while "default/deny-8080" not in dst_state.policies.by_key:  # noqa: ASYNC110
            await asyncio.sleep(0.02)  # reconnect back-off, then the push
    assert await refused(mesh, client, VIP, 80)


async def test_hold_connections_until_workload_and_certificate_arrive(mesh, topology) -> None:  # type: ignore[no-untyped-def]
    client, _server, echo, _ = await setup(mesh, topology, hold=True)
    app = mesh.apps["node1"]
    assert not app.readiness.ready  # captured pods without workload/certificate: not ready
    pending = asyncio.create_task(mesh.request(client, VIP, 80, b"held, not dropped"))
    await asyncio.sleep(0.2)  # the connection is now waiting inside ztunnel for the pod's workload
    assert not pending.done()
    mesh.publish()  # workloads arrive (and with them the certificates)
    assert await asyncio.wait_for(pending, 10) == b"held, not dropped"
    await asyncio.wait_for(app.readiness.wait_ready(), 10)
    assert len(echo.peers) == 1


async def test_non_mesh_destinations_are_plaintext(mesh, topology, caplog) -> None:  # type: ignore[no-untyped-def]
    client, _server, _echo, _ = await setup(mesh, topology)
    outsider = topology.add_pod(topology.nodes[1], "outsider", captured=False)
    mesh.workloads.append(mesh.workload(outsider))
    mesh.publish()
    plain = await mesh.echo(outsider, 9090)
    caplog.set_level("INFO", logger="access")
    # a known workload without HBONE: plain TCP from the client's pod; its own IP is what the app sees
    assert await mesh.request(client, outsider.ip, 9090, b"plain to uncaptured") == b"plain to uncaptured"
    assert plain.peers[0][0] == client.ip

    def complete() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "access" and r.getMessage() == "connection complete"]

    async with asyncio.timeout(10):
        while not complete():  # noqa: ASYNC110 - the record is written as the relay ends, just after the echo
            await asyncio.sleep(0.01)
    records = complete()
    assert len(records) == 1  # one access-log record per connection
    fields = records[0].kv  # type: ignore[attr-defined]
    assert fields["direction"] == "outbound"
    assert fields["dst.addr"] == f"{outsider.ip}:9090"
    assert fields["bytes_sent"] == len(b"plain to uncaptured")
    assert "src.identity" not in fields  # no mTLS


async def test_dns_tcp_and_forwarding(mesh, topology, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # an upstream resolver in node1's netns (the pod reaches it via its gateway)
    from meshkit.sockets import NetnsSocketFactory

    node_factory = NetnsSocketFactory(str(_node_path(topology)), mark=None)
    upstream = node_factory.bind_udp("10.77.1.1", 53)
    loop = asyncio.get_running_loop()

    async def resolver() -> None:
        while True:
            data, addr = await loop.sock_recvfrom(upstream, 4096)
            query = dnslib.DNSRecord.parse(data)
            reply = query.reply()
            reply.add_answer(dnslib.RR(query.q.qname, rdata=dnslib.A("10.77.250.250"), ttl=60))
            await loop.sock_sendto(upstream, reply.pack(), addr)

    task = asyncio.create_task(resolver())
    try:
        Path(mesh.resolv_conf).write_text("nameserver 10.77.1.1\n")  # noqa: ASYNC240
        client, _server, _echo, _ = await setup(mesh, topology)
        sock = mesh.factory(client).bind_udp("0.0.0.0", 0)
        try:  # through the pod's DNS capture, to a name the mesh does not know: forwarded upstream
            await loop.sock_connect(sock, ("10.77.1.1", 53))
            await loop.sock_sendall(sock, dnslib.DNSRecord.question("example.org", "A").pack())
            reply = dnslib.DNSRecord.parse(await asyncio.wait_for(loop.sock_recv(sock, 4096), 10))
        finally:
            sock.close()
        assert [str(rr.rdata) for rr in reply.rr] == ["10.77.250.250"]
        # DNS over TCP, answered locally
        from meshkit.sockets import open_tcp

        tcp = await open_tcp(mesh.factory(client), "127.0.0.1", 15053)
        reader, writer = await asyncio.open_connection(sock=tcp)
        query = dnslib.DNSRecord.question("echo", "A").pack()
        writer.write(len(query).to_bytes(2, "big") + query)
        size = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), 10), "big")
        answer = dnslib.DNSRecord.parse(await reader.readexactly(size))
        writer.close()
        assert [str(rr.rdata) for rr in answer.rr] == [VIP]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        upstream.close()
        node_factory.close()


def _node_path(topology) -> Path:  # type: ignore[no-untyped-def]
    if not topology.nodes:
        topology.add_node()
        topology.add_node()
        topology.link_nodes()
    return topology.nodes[0].ns.path


async def test_service_with_waypoint_goes_through_it(mesh, topology) -> None:  # type: ignore[no-untyped-def]
    """A waypoint terminates HBONE natively (not captured): the client's ztunnel tunnels to it with the VIP as
    authority and the waypoint's identity as the expected peer; the waypoint then reaches the backend."""
    from meshkit.hbone.server import Forward, HboneServer, Reject
    from meshkit.identity.spiffe import Identity
    from meshkit.sockets import open_tcp
    from ztunnel.state.records import GatewayAddress, NamespacedHostname

    client, server, echo, _ = await setup(mesh, topology)
    wp = topology.add_pod(topology.nodes[1], "waypoint", captured=False)
    wp_host = "waypoint.default.svc.cluster.local"
    wp_wl = mesh.workload(wp, (f"default/{wp_host}",))
    mesh.workloads.append(
        Workload(
            **{
                **{f: getattr(wp_wl, f) for f in wp_wl.__slots__},
                "tunnel_protocol": "HBONE",
                "native_tunnel": True,
            }
        )
    )  # type: ignore[arg-type]
    mesh.services = [
        Service("echo", "default", "echo.default.svc.cluster.local", vips=(("", VIP),), ports={80: 8080},
                waypoint=GatewayAddress(NamespacedHostname("default", wp_host), None, 15008)),
        Service("waypoint", "default", wp_host, vips=(("", "10.77.200.2"),), ports={15008: 15008}),
    ]  # fmt: skip
    mesh.publish()
    seen: list[tuple[str, str]] = []
    cert = mesh.fetcher.ca.issue(Identity("cluster.local", "default", "waypoint"))
    wp_factory = mesh.factory(wp)

    async def handler(peer, request):  # type: ignore[no-untyped-def]
        seen.append((str(request.authority), peer.identity.uri))
        if str(request.authority) != f"{VIP}:80":
            return Reject(400)
        return Forward(lambda: open_tcp(wp_factory, server.ip, 8080))  # L7 would happen here

    waypoint = HboneServer(wp_factory.listen_tcp("0.0.0.0", 15008), lambda: cert, handler)
    await waypoint.start()
    try:
        assert await mesh.request(client, VIP, 80, b"via the waypoint") == b"via the waypoint"
    finally:
        await waypoint.close()
    assert seen == [(f"{VIP}:80", "spiffe://cluster.local/ns/default/sa/client")]
    assert echo.peers[-1][0] == wp.ip  # the backend sees the waypoint (its plaintext, via 15006)


async def test_hostname_workload_resolved_on_demand(mesh, topology) -> None:  # type: ignore[no-untyped-def]
    client, _server, _echo, _ = await setup(mesh, topology)
    local = await mesh.echo(
        client, 9999
    )  # an "external" service reached by name: here, the pod's own loopback
    mesh.workloads.append(
        Workload(
            "ext", "ext", "default", hostname="localhost", services={"default/ext.example.com": {80: 9999}}
        )
    )
    mesh.services.append(
        Service("ext", "default", "ext.example.com", vips=(("", "10.77.200.9"),), ports={80: 0})
    )
    mesh.publish()
    assert await mesh.request(client, "10.77.200.9", 80, b"by name") == b"by name"
    assert local.peers


async def test_hbone_settings_from_the_environment_reach_every_pod(mesh, topology, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # HTTP2_*/POOL_*/HBONE_* used to be ignored: each pod built its pool and server with the defaults
    monkeypatch.setenv("POOL_MAX_STREAMS_PER_CONNECTION", "3")
    monkeypatch.setenv("HBONE_SERVER_MAX_CONCURRENT_STREAMS", "7")
    monkeypatch.setenv("HTTP2_STREAM_WINDOW_SIZE", "1048576")
    client, _server, _echo, _ = await setup(mesh, topology)
    assert await mesh.request(client, VIP, 80, b"tuned") == b"tuned"
    pods = [pod for app in mesh.apps.values() for pod in app.pods.values()]
    assert len(pods) == 2
    for pod in pods:
        assert pod.pool.settings.pool_max_streams_per_connection == 3
        assert pod.pool.settings.stream_window == 1048576
        assert pod.hbone is not None
        assert pod.hbone.settings.server_max_concurrent_streams == 7
