"""Shared fixtures for ztunnel tests: a two-node network of namespaces with captured pods, a test CA,
and a ZDS server playing the CNI agent.

Topology (all namespaces ``zt-…``, addresses in 10.77.0.0/16, nothing in the host netns)::

    pod netns (eth0 10.77.<n>.<k>/24, gw .1) ──veth── node<n> netns (br0 10.77.<n>.1/24)
    node1 (link 10.77.254.1/24) ──veth "the node link"── node2 (10.77.254.2/24)

A *captured* pod gets the in-pod redirection rules of behaviour.md §3.3 (our own test copy, kept as test
data: services and their tests do not import each other). ztunnel itself runs in the test process and
reaches each pod only through the netns fd handed over ZDS, exactly as in a cluster.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from meshkit.netns import TempNetns, temp_netns

PREFIX = "zt-"

# behaviour.md §3.3 (IPv4, iptables backend, with DNS capture), applied with iptables-restore --noflush.
INPOD_RULES = (Path(__file__).parent / "testdata" / "inpod-rules.txt").read_text()


def _run(argv: list[str], stdin: str | None = None) -> str:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return proc.stdout


def capture(ns: TempNetns) -> None:
    """Install the in-pod redirection (iptables + fwmark policy route) into a pod netns."""
    _run(["ip", "netns", "exec", ns.name, "iptables-restore", "--noflush"], INPOD_RULES)
    ns.ip("rule", "add", "fwmark", "0x111/0xfff", "pref", "32764", "lookup", "100")
    ns.ip("route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100")


@dataclass
class Pod:
    name: str
    namespace: str
    service_account: str
    ip: str
    node: Node
    ns: TempNetns
    uid: str = field(default_factory=lambda: secrets.token_hex(8))
    captured: bool = True

    @property
    def netns_path(self) -> str:
        return str(self.ns.path)


@dataclass
class Node:
    name: str
    index: int
    ns: TempNetns
    pods: list[Pod] = field(default_factory=list)

    @property
    def link_ip(self) -> str:
        return f"10.77.254.{self.index}"


class Topology:
    """Nodes and pods; everything is removed when the fixture ends."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self._stack = stack
        self.nodes: list[Node] = []
        self.link_if = ""

    def add_node(self) -> Node:
        index = len(self.nodes) + 1
        ns = self._stack.enter_context(temp_netns(PREFIX))
        ns.exec("sysctl", "-qw", "net.ipv4.ip_forward=1")
        ns.ip("link", "add", "br0", "type", "bridge")
        ns.ip("addr", "add", f"10.77.{index}.1/24", "dev", "br0")
        ns.ip("link", "set", "br0", "up")
        node = Node(f"node{index}", index, ns)
        self.nodes.append(node)
        return node

    def link_nodes(self) -> None:
        """Join every node to one link ("the node link") with routes to each other's pod subnets."""
        a, b = self.nodes[0], self.nodes[1]
        a.ns.ip("link", "add", "link0", "type", "veth", "peer", "name", "link0", "netns", b.ns.name)
        for node in (a, b):
            node.ns.ip("addr", "add", f"{node.link_ip}/24", "dev", "link0")
            node.ns.ip("link", "set", "link0", "up")
        a.ns.ip("route", "add", "10.77.2.0/24", "via", b.link_ip)
        b.ns.ip("route", "add", "10.77.1.0/24", "via", a.link_ip)
        self.link_if = "link0"

    def add_pod(
        self, node: Node, name: str, namespace: str = "default", sa: str = "", captured: bool = True
    ) -> Pod:
        k = len(node.pods) + 10
        ns = self._stack.enter_context(temp_netns(PREFIX))
        ip = f"10.77.{node.index}.{k}"
        host_if = f"v{k}"
        ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", host_if, "netns", node.ns.name)
        ns.ip("addr", "add", f"{ip}/24", "dev", "eth0")
        ns.ip("link", "set", "eth0", "up")
        ns.ip("route", "add", "default", "via", f"10.77.{node.index}.1")
        node.ns.ip("link", "set", host_if, "master", "br0")
        node.ns.ip("link", "set", host_if, "up")
        if captured:
            capture(ns)
        pod = Pod(name, namespace, sa or name, ip, node, ns, captured=captured)
        node.pods.append(pod)
        return pod


@pytest.fixture
def topology() -> Iterator[Topology]:
    with contextlib.ExitStack() as stack:
        yield Topology(stack)
