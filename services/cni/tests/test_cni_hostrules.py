"""Node-level probe rules (§3.4) in a real kernel: idempotent install, complete removal, and a "kubelet"
connection from the node reaching the app inside an enrolled pod with the probe source address.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest
from istio_cni.hostrules import HostRules
from istio_cni.iptables import apply_pod_rules
from istio_cni.netns import Netns
from istio_cni.rules import DEFAULT_PROBE_SNAT_V4, DEFAULT_PROBE_SNAT_V6, PodRuleConfig
from meshkit.netns import run_in_netns

pytestmark = pytest.mark.root


def node_state(ns: Any) -> str:
    lines = [ln for ln in ns.sh("iptables-save", "-t", "nat").splitlines() if ln.startswith(("-A", ":ISTIO"))]
    lines += [
        ln for ln in ns.sh("ip6tables-save", "-t", "nat").splitlines() if ln.startswith(("-A", ":ISTIO"))
    ]
    return "\n".join(lines) + "\n" + ns.sh("ipset", "list", "-n")


async def test_host_rules_idempotent_and_removable(make_netns: Callable[[], Any]) -> None:
    node = make_netns()
    before = node_state(node)
    handle = Netns.open(node.path)
    try:
        rules = HostRules(handle, DEFAULT_PROBE_SNAT_V4, DEFAULT_PROBE_SNAT_V6)
        await rules.install()
        once = node_state(node)
        await rules.install()
        assert node_state(node) == once
        assert "-A POSTROUTING -j ISTIO_POSTRT" in once
        assert "--match-set istio-inpod-probes-v6 dst -j SNAT --to-source fd16:9254:7127:1337" in once
        await rules.add_ips(("10.78.9.9", "fd00:78::9"))
        await rules.add_ips(("10.78.9.9",))
        assert "10.78.9.9" in node.sh("ipset", "list", "istio-inpod-probes-v4")
        await rules.remove_ips(("10.78.9.9", "fd00:78::9"))
        assert "10.78.9.9" not in node.sh("ipset", "list", "istio-inpod-probes-v4")
        await rules.add_ips(("10.78.9.1", "10.78.9.2", "fd00:78::2"))
        assert await rules.sync_ips({"10.78.9.2"}) == 2  # left behind by pods gone while no agent ran
        members = node.sh("ipset", "list", "istio-inpod-probes-v4")
        assert "10.78.9.2" in members
        assert "10.78.9.1" not in members
        await rules.uninstall()
        assert node_state(node) == before
    finally:
        handle.close()


def _in(path: str, fn: Callable[[], socket.socket]) -> socket.socket:
    """Run ``fn`` in a fresh thread inside the netns (sockets created there stay there)."""
    return run_in_netns(path, fn)


def _listen(port: int) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(4)
    s.settimeout(5)
    return s


async def test_probe_from_node_bypasses_capture(pod_and_peer: Any) -> None:
    """The "peer" plays the node: its local sockets to the pod are SNATed and reach the app directly."""
    pod, node, pod_ip, node_ip = pod_and_peer
    node_handle, pod_handle = Netns.open(node.path), Netns.open(pod.path)
    socks: list[socket.socket] = []
    try:
        rules = HostRules(node_handle, DEFAULT_PROBE_SNAT_V4, DEFAULT_PROBE_SNAT_V6, ipv6=False)
        await rules.install()
        await rules.add_ips((pod_ip,))
        await apply_pod_rules(pod_handle, PodRuleConfig())
        # replies to the probe address go to the node, as with a pod's default route via its gateway
        pod.sh("ip", "route", "add", f"{DEFAULT_PROBE_SNAT_V4}/32", "via", node_ip)
        app = _in(pod.path, lambda: _listen(8080))
        socks.append(app)
        socks.append(_in(node.path, lambda: socket.create_connection((pod_ip, 8080), timeout=5)))
        conn, (src, _) = app.accept()
        socks.append(conn)
        assert src == DEFAULT_PROBE_SNAT_V4
    finally:
        for s in socks:
            s.close()
        node_handle.close()
        pod_handle.close()
