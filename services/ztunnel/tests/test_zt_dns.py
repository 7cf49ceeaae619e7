"""DNS answering (§8) against a small state."""

from __future__ import annotations

import dnslib
from ztunnel.dns.resolver import DnsResolver, candidates
from ztunnel.state.records import Endpoint, Service, Workload
from ztunnel.state.state import State


def make_state() -> State:
    state = State()
    state.insert_service(
        Service(
            "reviews",
            "default",
            "reviews.default.svc.cluster.local",
            vips=(("", "10.96.0.10"), ("", "fd00::10")),
            ports={80: 80},
        )
    )
    state.insert_service(
        Service("ext", "default", "*.example.com", vips=(("", "240.240.0.1"),), ports={80: 80})
    )
    state.insert_service(
        Service(
            "private",
            "team",
            "private.team.svc.cluster.local",
            vips=(("", "10.96.0.20"),),
            visibility="NAMESPACE",
        )
    )
    state.insert_service(Service("db", "default", "db.default.svc.cluster.local"))  # headless
    state.insert_workload(
        Workload(
            "db-0",
            "db-0",
            "default",
            addresses=("10.77.0.30",),
            services={"default/db.default.svc.cluster.local": {}},
        )
    )
    return state


def ask(resolver: DnsResolver, name: str, qtype: str = "A") -> dnslib.DNSRecord | None:
    raw = resolver.answer(dnslib.DNSRecord.question(name, qtype).pack())
    return None if raw is None else dnslib.DNSRecord.parse(raw)


def rdatas(reply: dnslib.DNSRecord) -> list[str]:
    return sorted(str(rr.rdata) for rr in reply.rr)


def test_short_name_in_own_namespace() -> None:
    reply = ask(DnsResolver(make_state(), "default"), "reviews")
    assert reply is not None
    assert reply.header.aa == 1
    assert rdatas(reply) == ["10.96.0.10"]
    assert all(rr.ttl == 30 for rr in reply.rr)


def test_fqdn_and_namespace_forms_and_aaaa() -> None:
    resolver = DnsResolver(make_state(), "other")
    assert rdatas(ask(resolver, "reviews.default.svc.cluster.local")) == ["10.96.0.10"]  # type: ignore[arg-type]
    assert rdatas(ask(resolver, "reviews.default")) == ["10.96.0.10"]  # type: ignore[arg-type]
    assert rdatas(ask(resolver, "reviews.default.svc", "AAAA")) == ["fd00::10"]  # type: ignore[arg-type]
    assert ask(resolver, "reviews") is None  # short name of another namespace: forward


def test_search_domain_stripped_gives_cname() -> None:
    reply = ask(DnsResolver(make_state(), "default"), "www.example.com.default.svc.cluster.local")
    assert reply is not None
    assert reply.rr[0].rtype == dnslib.QTYPE.CNAME
    assert str(reply.rr[0].rdata) == "www.example.com."
    assert str(reply.rr[1].rdata) == "240.240.0.1"


def test_wildcard() -> None:
    assert rdatas(ask(DnsResolver(make_state(), "default"), "api.example.com")) == ["240.240.0.1"]  # type: ignore[arg-type]


def test_visibility_and_unknown_forwarded() -> None:
    state = make_state()
    assert ask(DnsResolver(state, "default"), "private.team.svc.cluster.local") is None
    assert ask(DnsResolver(state, "team"), "private") is not None
    assert ask(DnsResolver(state, "default"), "google.com") is None
    assert ask(DnsResolver(state, "default"), "reviews", "MX") is None


def test_no_address_of_family_is_empty_noerror() -> None:
    reply = ask(DnsResolver(make_state(), "default"), "api.example.com", "AAAA")
    assert reply is not None
    assert reply.header.rcode == 0
    assert reply.rr == []


def test_headless_answers_endpoint_ips() -> None:
    assert rdatas(ask(DnsResolver(make_state(), "default"), "db")) == ["10.77.0.30"]  # type: ignore[arg-type]


def test_candidates_order() -> None:
    names = [c for c, _ in candidates("a.b", "ns", "cluster.local")]
    assert names[:3] == ["a.b", "a.b.svc.cluster.local", "a.b.ns.svc.cluster.local"]
    assert "*.b" in names
    _ = Endpoint


async def test_server_answers_udp_and_tcp_on_loopback() -> None:
    import asyncio
    import socket
    import struct

    from meshkit.sockets import HostSocketFactory
    from prometheus_client import CollectorRegistry
    from ztunnel.dns.server import DnsServer
    from ztunnel.metrics import DnsMetrics

    port = _port_free_for_udp_and_tcp()
    server = DnsServer(
        HostSocketFactory(), resolver=DnsResolver(make_state(), "default"), upstreams=[],
        metrics=DnsMetrics(CollectorRegistry()), port=port,
    )  # fmt: skip
    await server.start()
    loop = asyncio.get_running_loop()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.setblocking(False)
            await loop.sock_connect(udp, ("127.0.0.1", port))
            await loop.sock_sendall(udp, dnslib.DNSRecord.question("reviews", "A").pack())
            reply = dnslib.DNSRecord.parse(await asyncio.wait_for(loop.sock_recv(udp, 4096), 5))
        assert rdatas(reply) == ["10.96.0.10"]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        query = dnslib.DNSRecord.question("reviews", "AAAA").pack()
        writer.write(struct.pack("!H", len(query)) + query)
        size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 5))[0]
        assert rdatas(dnslib.DNSRecord.parse(await reader.readexactly(size))) == ["fd00::10"]
        writer.close()
        await writer.wait_closed()
    finally:
        await server.close()


async def test_unforwardable_query_gets_servfail() -> None:
    from meshkit.sockets import HostSocketFactory
    from prometheus_client import CollectorRegistry
    from ztunnel.dns.server import DnsServer
    from ztunnel.metrics import DnsMetrics

    server = DnsServer(
        HostSocketFactory(), resolver=DnsResolver(make_state(), "default"), upstreams=[],
        metrics=DnsMetrics(CollectorRegistry()),
    )  # fmt: skip
    raw = await server.answer(dnslib.DNSRecord.question("unknown.example.org", "A").pack(), "udp")
    assert raw is not None
    assert dnslib.DNSRecord.parse(raw).header.rcode == dnslib.RCODE.SERVFAIL


def _port_free_for_udp_and_tcp() -> int:
    """A loopback port free for UDP and TCP (a free UDP port may be a busy TCP one on a loaded machine)."""
    import socket

    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, socket.socket() as tcp:
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            try:
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no loopback port free for both UDP and TCP")
