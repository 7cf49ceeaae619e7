"""Node networking: the root-namespace bridge and one network namespace per node.

Each node namespace has ``eth0`` (one end of a veth whose other end, ``<node>-v``, is on ``amb-br0``; the
instance's own bridge for instances other than 0) with the
node IP, a default route via the bridge, and a route to every other node's pod /24 through that node's IP; the
root namespace gets the same pod routes so the test runner can reach pods directly. Nothing here adds iptables
rules: CNI and kube-proxy rules live inside the node namespaces and vanish with them.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Sequence

from meshtest.cluster.config import ClusterLayout, NodeSpec, owned_by

log = logging.getLogger("meshtest.cluster.network")


def run(argv: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def ns(node: NodeSpec, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", node.netns, *argv]


def set_sysctl(path: str, value: str, netns: str | None = None) -> None:
    argv = ["sysctl", "-qw", f"{path}={value}"]
    run(["ip", "netns", "exec", netns, *argv] if netns else argv)


def netns_names() -> list[str]:
    out = run(["ip", "-o", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def ours(names: Sequence[str], instance: int = 0) -> list[str]:
    return [name for name in names if owned_by(name, instance)]


def links() -> list[str]:
    out = run(["ip", "-o", "link", "show"], check=False).stdout
    names = []
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) > 1:
            names.append(parts[1].strip().split("@")[0])
    return names


def up(layout: ClusterLayout) -> None:
    """Create the bridge and the node namespaces (callers tear down any previous instance first)."""
    bridge = layout.bridge
    run(["ip", "link", "add", bridge, "type", "bridge"])
    run(["ip", "addr", "add", f"{layout.bridge_gateway}/{layout.bridge_prefixlen}", "dev", bridge])
    run(["ip", "link", "set", bridge, "up"])
    for node in layout.nodes:
        _node_up(layout, node)
    for node in layout.nodes:  # the runner reaches pods directly (debugging, `meshtest.cluster` helpers)
        run(["ip", "route", "replace", node.pod_cidr, "via", node.ip, "dev", bridge])


def _node_up(layout: ClusterLayout, node: NodeSpec) -> None:
    run(["ip", "netns", "add", node.netns])
    run(["ip", "link", "add", node.host_veth, "type", "veth", "peer", "name", "eth0", "netns", node.netns])
    run(["ip", "link", "set", node.host_veth, "master", layout.bridge, "up"])
    run(ns(node, "ip", "addr", "add", f"{node.ip}/{layout.bridge_prefixlen}", "dev", "eth0"))
    run(ns(node, "ip", "link", "set", "eth0", "up"))
    run(ns(node, "ip", "link", "set", "lo", "up"))
    run(ns(node, "ip", "route", "add", "default", "via", layout.bridge_gateway))
    for other in layout.nodes:
        if other.name != node.name:
            run(ns(node, "ip", "route", "add", other.pod_cidr, "via", other.ip))
    # Routed pod traffic and kube-proxy's DNAT need forwarding; bridged pod-to-pod traffic must traverse
    # iptables so ClusterIP replies on the same node are un-NATed (kube-proxy's br_netfilter requirement).
    set_sysctl("net.ipv4.ip_forward", "1", node.netns)
    if os.path.exists("/proc/sys/net/bridge/bridge-nf-call-iptables"):
        set_sysctl("net.bridge.bridge-nf-call-iptables", "1", node.netns)
    set_sysctl("net.ipv4.conf.all.rp_filter", "0", node.netns)


def down(instance: int = 0) -> list[str]:
    """Delete every network namespace and link of this instance (pods' too, whichever run made them);
    returns what was removed."""
    removed = []
    for name in ours(netns_names(), instance):
        run(["ip", "netns", "del", name], check=False)
        removed.append(f"netns/{name}")
    for name in ours(links(), instance):
        run(["ip", "link", "del", name], check=False)
        removed.append(f"link/{name}")
    return removed
