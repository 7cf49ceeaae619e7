"""The in-pod rules in a real kernel: run-twice idempotency, complete removal, and where traffic lands.

ztunnel is modelled by listeners carrying SO_MARK 1337 on 15001/15006/15008 inside the pod netns.
"""

from __future__ import annotations

import re
import socket
import struct
from collections.abc import Callable, Iterator

import pytest
from istio_cni.iptables import apply_pod_rules, remove_pod_rules
from istio_cni.netns import Netns
from istio_cni.rules import PodRuleConfig
from meshkit.netns import run_in_netns

pytestmark = pytest.mark.root

SO_ORIGINAL_DST = 80
IP_TRANSPARENT = 19
MARK = 1337
COUNTERS = re.compile(r"\[\d+:\d+\]")


def saved(ns: object) -> str:
    """iptables-save + ip6tables-save of a netns without comments and counters, plus the policy routing."""
    text = ns.sh("iptables-save") + ns.sh("ip6tables-save")  # type: ignore[attr-defined]
    # Tables that iptables-restore created stay behind empty; only rules and user chains matter, by table.
    lines, table = [], ""
    for ln in text.splitlines():
        if ln.startswith("*"):
            table = ln
        elif ln.startswith(("-A", ":ISTIO")):
            lines.append(table + " " + COUNTERS.sub("", ln))
    routing = ns.sh("ip", "-4", "rule") + ns.sh("ip", "-6", "rule")  # type: ignore[attr-defined]
    routing += ns.sh("ip", "-4", "route", "show", "table", "all")  # type: ignore[attr-defined]
    return "\n".join(lines) + "\n" + routing


@pytest.fixture
def opened() -> Iterator[Callable[[str], Netns]]:
    handles: list[Netns] = []

    def open_(path: str) -> Netns:
        handles.append(Netns.open(path))
        return handles[-1]

    yield open_
    for h in handles:
        h.close()


async def test_apply_twice_is_idempotent_and_remove_is_complete(make_netns, opened) -> None:  # type: ignore[no-untyped-def]
    ns = make_netns()
    before = saved(ns)
    netns = opened(ns.path)
    await apply_pod_rules(netns, PodRuleConfig())
    once = saved(ns)
    await apply_pod_rules(netns, PodRuleConfig())
    assert saved(ns) == once
    assert "-A ISTIO_OUTPUT ! -d ::1/128 -o lo -j ACCEPT" in once  # IPv6 mirror installed (lo has ::1)
    assert "fwmark 0x111/0xfff lookup 100" in once
    assert once.count("-A PREROUTING -j ISTIO_PRERT") == 6  # mangle, nat, raw x 2 families
    await remove_pod_rules(netns)
    assert saved(ns) == before
    await remove_pod_rules(netns)  # removing again is harmless
    assert saved(ns) == before


async def test_reapply_with_other_config_converges(make_netns, opened) -> None:  # type: ignore[no-untyped-def]
    ns = make_netns()
    netns = opened(ns.path)
    await apply_pod_rules(netns, PodRuleConfig())
    await apply_pod_rules(netns, PodRuleConfig(dns_capture=False))
    direct = make_netns()
    await apply_pod_rules(opened(direct.path), PodRuleConfig(dns_capture=False))
    assert saved(ns) == saved(direct)


def _listener(port: int, marked: bool = True) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if marked:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, MARK)
    s.bind(("0.0.0.0", port))
    s.listen(8)
    s.settimeout(5)
    return s


def _original_dst(conn: socket.socket) -> tuple[str, int]:
    raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, addr = struct.unpack("!2xH4s8x", raw)
    return socket.inet_ntoa(addr), port


def _in(ns_path: str, fn: Callable[[], socket.socket]) -> socket.socket:
    """Run ``fn`` in a fresh thread inside the netns (sockets created there stay there)."""
    return run_in_netns(ns_path, fn)


def _client(dst: tuple[str, int], marked: bool = False) -> Callable[[], socket.socket]:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if marked:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, MARK)
        s.settimeout(5)
        s.connect(dst)
        return s

    return make


async def test_traffic_lands_on_ztunnel_ports(pod_and_peer, opened) -> None:  # type: ignore[no-untyped-def]
    pod, peer, pod_ip, peer_ip = pod_and_peer
    await apply_pod_rules(opened(pod.path), PodRuleConfig())
    socks: list[socket.socket] = []
    try:
        outbound, inbound, hbone = (_in(pod.path, lambda p=p: _listener(p)) for p in (15001, 15006, 15008))  # type: ignore[misc]
        peer_app = _in(peer.path, lambda: _listener(9090, marked=False))
        socks += [outbound, inbound, hbone, peer_app]

        # app -> peer:9090 is captured on 15001 with the original destination intact
        socks.append(_in(pod.path, _client((peer_ip, 9090))))
        conn, _ = outbound.accept()
        socks.append(conn)
        assert _original_dst(conn) == (peer_ip, 9090)

        # peer -> pod:8080 lands on 15006 with the original destination intact
        socks.append(_in(peer.path, _client((pod_ip, 8080))))
        conn, (src, _) = inbound.accept()
        socks.append(conn)
        assert src == peer_ip
        assert _original_dst(conn) == (pod_ip, 8080)

        # peer -> pod:15008 is not redirected: the 15008 listener takes it, 15006 sees nothing
        socks.append(_in(peer.path, _client((pod_ip, 15008))))
        conn, _ = hbone.accept()
        socks.append(conn)
        assert conn.getsockname() == (pod_ip, 15008)
        inbound.settimeout(0.2)
        with pytest.raises(TimeoutError):
            inbound.accept()

        # ztunnel's own (marked) sockets leave the pod untouched
        socks.append(_in(pod.path, _client((peer_ip, 9090), marked=True)))
        conn, (src, _) = peer_app.accept()
        socks.append(conn)
        assert src == pod_ip
        outbound.settimeout(0.2)
        with pytest.raises(TimeoutError):
            outbound.accept()
    finally:
        for s in socks:
            s.close()


def _spoofed_client(src: tuple[str, int], dst: tuple[str, int]) -> Callable[[], socket.socket]:
    """What ztunnel's inbound does: connect to the app from the original client's address (IP_TRANSPARENT)."""

    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, MARK)
        s.settimeout(5)
        s.bind(src)
        s.connect(dst)
        return s

    return make


async def test_spoofed_source_replies_return_to_ztunnel(pod_and_peer, opened) -> None:  # type: ignore[no-untyped-def]
    """§3.3: ztunnel → app with the client's source address; the app's reply carries connmark 0x111, is
    routed by table 100 back into the pod (to ztunnel's socket) instead of out towards the real client."""
    pod, _peer, pod_ip, peer_ip = pod_and_peer
    pod.sh("ip", "route", "add", "default", "via", peer_ip)  # a real pod's default route points out
    await apply_pod_rules(opened(pod.path), PodRuleConfig())
    socks: list[socket.socket] = []
    try:
        app = _in(pod.path, lambda: _listener(8080, marked=False))
        socks.append(app)
        client = _in(pod.path, _spoofed_client((peer_ip, 40000), (pod_ip, 8080)))
        socks.append(client)
        conn, (src, _) = app.accept()
        socks.append(conn)
        assert src == peer_ip  # the app sees the original client
        conn.sendall(b"reply")
        assert client.recv(5) == b"reply"  # and its reply came back to the spoofing socket
    finally:
        for s in socks:
            s.close()
