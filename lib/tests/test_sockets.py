"""meshkit.sockets: host factory on loopback; as root, netns factory, SO_MARK, SO_REUSEPORT, original dst."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Iterator

import pytest
from meshkit.netns import run_in_netns, temp_netns
from meshkit.sockets import (
    INPOD_MARK,
    IP_TRANSPARENT,
    SO_MARK,
    HostSocketFactory,
    NetnsSocketFactory,
    SocketFactory,
    open_tcp,
    original_dst,
)
from meshkit.testing.netns import LinkedNetns, netns_pair

WAIT = 5.0
PREFIX = "mk-"


async def _echo_once(listener: socket.socket, factory: SocketFactory, host: str) -> socket.socket:
    """Connect through ``factory`` to ``listener`` (reachable at ``host``), echo a line; return the accepted
    server-side socket (caller closes it)."""
    loop = asyncio.get_running_loop()
    port = listener.getsockname()[1]
    accept = loop.create_task(loop.sock_accept(listener))
    try:
        client = await asyncio.wait_for(open_tcp(factory, host, port), WAIT)
    except BaseException:
        accept.cancel()
        raise
    with client:
        server, _peer = await asyncio.wait_for(accept, WAIT)
        await loop.sock_sendall(client, b"ping\n")
        assert await asyncio.wait_for(loop.sock_recv(server, 16), WAIT) == b"ping\n"
        return server


def _mark(sock: socket.socket) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, SO_MARK)


# ---------------------------------------------------------------------- host factory, no root needed


async def test_host_factory_tcp_roundtrip_on_loopback() -> None:
    factory = HostSocketFactory()
    with factory.listen_tcp("127.0.0.1", 0) as listener:
        assert not listener.getblocking()
        server = await _echo_once(listener, factory, "127.0.0.1")
        server.close()


async def test_dual_stack_wildcard_listener_accepts_ipv4() -> None:
    factory = HostSocketFactory()
    with factory.listen_tcp("::", 0) as listener:
        assert listener.family == socket.AF_INET6
        assert listener.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
        server = await _echo_once(listener, factory, "127.0.0.1")
        with server:
            assert server.getpeername()[0] == "::ffff:127.0.0.1"


def test_connect_tcp_socket_is_fresh_nonblocking_and_nodelay() -> None:
    with HostSocketFactory().connect_tcp("::1", 80) as sock:
        assert sock.family == socket.AF_INET6
        assert sock.type == socket.SOCK_STREAM
        assert not sock.getblocking()
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        with pytest.raises(OSError):
            sock.getpeername()  # not connected yet


async def test_bind_udp_roundtrip() -> None:
    factory = HostSocketFactory()
    loop = asyncio.get_running_loop()
    with factory.bind_udp("127.0.0.1", 0) as server, factory.bind_udp("127.0.0.1", 0) as client:
        assert server.type == socket.SOCK_DGRAM
        client.sendto(b"q", server.getsockname())
        data, addr = await asyncio.wait_for(loop.sock_recvfrom(server, 512), WAIT)
        assert (data, addr) == (b"q", client.getsockname())


def test_hostnames_are_refused() -> None:
    with pytest.raises(ValueError, match="not an IP address"):
        HostSocketFactory().listen_tcp("localhost", 0)


def test_reuseport_allows_two_listeners_and_is_needed() -> None:
    factory = HostSocketFactory()
    with factory.listen_tcp("127.0.0.1", 0, reuseport=True) as first:
        port = first.getsockname()[1]
        with factory.listen_tcp("127.0.0.1", port, reuseport=True) as second:
            assert second.getsockname()[1] == port
        with pytest.raises(OSError) as err:
            factory.listen_tcp("127.0.0.1", port)
        assert err.value.errno == errno.EADDRINUSE


async def test_open_tcp_closes_socket_on_refusal() -> None:
    factory = HostSocketFactory()
    with factory.listen_tcp("127.0.0.1", 0) as probe:
        port = probe.getsockname()[1]
    created: list[socket.socket] = []

    class Recording(HostSocketFactory):
        def connect_tcp(self, host: str, port: int) -> socket.socket:
            created.append(super().connect_tcp(host, port))
            return created[-1]

    with pytest.raises(ConnectionRefusedError):
        await open_tcp(Recording(), "127.0.0.1", port)
    assert created[0].fileno() == -1


def test_original_dst_without_redirect_is_an_error() -> None:
    factory = HostSocketFactory()
    listener = factory.listen_tcp("127.0.0.1", 0)
    with listener, socket.create_connection(listener.getsockname(), WAIT):
        listener.setblocking(True)
        server, _ = listener.accept()
        with server, pytest.raises(OSError):
            original_dst(server)  # ENOENT from conntrack, or ENOPROTOOPT without nf_conntrack


# ---------------------------------------------------------------------- root: marks, netns, iptables


@pytest.mark.root
async def test_host_factory_sets_mark_and_transparent() -> None:
    factory = HostSocketFactory(mark=INPOD_MARK)
    with factory.listen_tcp("127.0.0.1", 0, transparent=True) as listener:
        assert _mark(listener) == 1337
        assert listener.getsockopt(socket.SOL_IP, IP_TRANSPARENT) == 1
        server = await _echo_once(listener, factory, "127.0.0.1")
        server.close()
    with HostSocketFactory().listen_tcp("127.0.0.1", 0) as unmarked:
        assert _mark(unmarked) == 0
        assert unmarked.getsockopt(socket.SOL_IP, IP_TRANSPARENT) == 0


@pytest.fixture
def pair() -> Iterator[tuple[LinkedNetns, LinkedNetns]]:
    with netns_pair(PREFIX, "10.75.1.0/24") as linked:
        yield linked


@pytest.fixture
def pod(pair: tuple[LinkedNetns, LinkedNetns]) -> Iterator[NetnsSocketFactory]:
    with NetnsSocketFactory(pair[0].name, name="server") as factory:
        yield factory


@pytest.fixture
def peer(pair: tuple[LinkedNetns, LinkedNetns]) -> Iterator[NetnsSocketFactory]:
    with NetnsSocketFactory(pair[1].ns.path, name="client") as factory:
        yield factory


@pytest.mark.root
async def test_netns_factory_listens_inside_the_netns_with_mark(
    pair: tuple[LinkedNetns, LinkedNetns], pod: NetnsSocketFactory, peer: NetnsSocketFactory
) -> None:
    server_ns, _client_ns = pair
    with pod.listen_tcp("0.0.0.0", 0, reuseport=True, transparent=True) as listener:
        port = listener.getsockname()[1]
        assert _mark(listener) == INPOD_MARK
        assert listener.getsockopt(socket.SOL_IP, IP_TRANSPARENT) == 1
        assert f":{port}" in server_ns.exec("ss", "-Hltn")  # the socket lives in the pod's netns ...
        with socket.socket() as host_probe:  # ... not in ours
            assert host_probe.connect_ex(("127.0.0.1", port)) == errno.ECONNREFUSED
        accepted = await _echo_once(listener, peer, server_ns.addr)
        with accepted:
            assert accepted.getpeername()[0] == pair[1].addr
            assert _mark(accepted) == INPOD_MARK  # accepted sockets inherit the listener's mark


@pytest.mark.root
async def test_netns_factory_marks_outbound_sockets(peer: NetnsSocketFactory) -> None:
    with peer.connect_tcp("10.75.1.1", 80) as sock:
        assert _mark(sock) == INPOD_MARK
    with peer.bind_udp("127.0.0.1", 0) as udp:
        assert _mark(udp) == INPOD_MARK


@pytest.mark.root
def test_netns_factory_without_mark(pair: tuple[LinkedNetns, LinkedNetns]) -> None:
    with NetnsSocketFactory(pair[0].name, mark=None) as plain, plain.listen_tcp("0.0.0.0", 0) as listener:
        assert _mark(listener) == 0


@pytest.mark.root
def test_reuseport_inside_netns(pod: NetnsSocketFactory) -> None:
    with pod.listen_tcp("0.0.0.0", 0, reuseport=True) as old:
        port = old.getsockname()[1]
        with pod.listen_tcp("0.0.0.0", port, reuseport=True) as new:  # upgrade: old and new ztunnel
            assert new.getsockname()[1] == port
        with pytest.raises(OSError) as err:
            pod.listen_tcp("0.0.0.0", port)
        assert err.value.errno == errno.EADDRINUSE


@pytest.mark.root
async def test_original_dst_after_prerouting_redirect(
    pair: tuple[LinkedNetns, LinkedNetns], pod: NetnsSocketFactory, peer: NetnsSocketFactory
) -> None:
    """Inbound capture as in behaviour.md §3.3: traffic to any port is redirected to the 15006 listener."""
    server_ns, client_ns = pair
    with pod.listen_tcp("0.0.0.0", 15006, reuseport=True) as listener:
        server_ns.exec(
            "iptables", "-t", "nat", "-A", "PREROUTING", "-p", "tcp", "!", "-d", "127.0.0.1/32",
            "!", "--dport", "15008", "-j", "REDIRECT", "--to-ports", "15006",
        )  # fmt: skip
        loop = asyncio.get_running_loop()
        accept = loop.create_task(loop.sock_accept(listener))
        client = await asyncio.wait_for(open_tcp(peer, server_ns.addr, 8080), WAIT)
        accepted, peer_addr = await asyncio.wait_for(accept, WAIT)
        with client, accepted:
            assert peer_addr[0] == client_ns.addr
            assert accepted.getsockname() == (server_ns.addr, 15006)
            assert original_dst(accepted) == (server_ns.addr, 8080)


@pytest.mark.root
async def test_output_redirect_skips_marked_sockets(pair: tuple[LinkedNetns, LinkedNetns]) -> None:
    """Outbound capture (behaviour.md §3.3): the app's connection goes to 15001, ztunnel's marked one not."""
    server_ns, client_ns = pair
    client_ns.exec(
        "iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "!", "-d", "127.0.0.1/32",
        "-m", "mark", "!", "--mark", "0x539/0xfff", "-j", "REDIRECT", "--to-ports", "15001",
    )  # fmt: skip
    loop = asyncio.get_running_loop()
    with (
        NetnsSocketFactory(client_ns.name) as ztunnel,
        NetnsSocketFactory(client_ns.name, mark=None) as app,
        NetnsSocketFactory(server_ns.name) as remote,
        ztunnel.listen_tcp("0.0.0.0", 15001) as capture,
        remote.listen_tcp("0.0.0.0", 9000) as target,
    ):
        # The app's connection is captured, and ztunnel recovers where it was going.
        accept = loop.create_task(loop.sock_accept(capture))
        app_conn = await asyncio.wait_for(open_tcp(app, server_ns.addr, 9000), WAIT)
        captured, _ = await asyncio.wait_for(accept, WAIT)
        with app_conn, captured:
            assert original_dst(captured) == (server_ns.addr, 9000)
        # ztunnel's own marked connection to the same destination is not redirected back into itself.
        accept = loop.create_task(loop.sock_accept(target))
        upstream = await asyncio.wait_for(open_tcp(ztunnel, server_ns.addr, 9000), WAIT)
        delivered, addr = await asyncio.wait_for(accept, WAIT)
        with upstream, delivered:
            assert addr[0] == client_ns.addr


@pytest.mark.root
async def test_original_dst_ipv6_and_v4_mapped() -> None:
    """IP6T_SO_ORIGINAL_DST for IPv6, and the IPv4 option for v4-mapped peers on a dual-stack listener."""
    with temp_netns(PREFIX) as ns, NetnsSocketFactory(ns.name, mark=None) as factory:
        ns.exec("iptables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "7001",
                "-j", "REDIRECT", "--to-ports", "15001")  # fmt: skip
        ns.exec("ip6tables", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "--dport", "7002",
                "-j", "REDIRECT", "--to-ports", "15001")  # fmt: skip
        loop = asyncio.get_running_loop()
        with factory.listen_tcp("::", 15001) as listener:
            for host, port in (("::1", 7002), ("127.0.0.1", 7001)):
                accept = loop.create_task(loop.sock_accept(listener))
                client = await asyncio.wait_for(open_tcp(factory, host, port), WAIT)
                accepted, _ = await asyncio.wait_for(accept, WAIT)
                with client, accepted:
                    assert original_dst(accepted) == (host, port)


@pytest.mark.root
def test_sockets_keep_their_netns_after_the_factory_closes(pair: tuple[LinkedNetns, LinkedNetns]) -> None:
    server_ns, client_ns = pair
    with NetnsSocketFactory(server_ns.name) as factory:
        listener = factory.listen_tcp(server_ns.addr, 0)
    with listener:
        listener.setblocking(True)
        port = listener.getsockname()[1]
        conn = run_in_netns(client_ns.name, socket.create_connection, (server_ns.addr, port), WAIT)
        with conn:
            accepted, _ = listener.accept()
            accepted.close()
