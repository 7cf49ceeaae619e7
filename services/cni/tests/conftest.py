"""Shared fixtures for the istio-cni tests: throw-away network namespaces (prefix ``cni-``, 10.78.0.0/16)."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest


def sh(*argv: str, check: bool = True, netns: str | None = None, stdin: str | None = None) -> str:
    if netns is not None:
        argv = ("ip", "netns", "exec", netns, *argv)
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed: {done.stderr}")
    return done.stdout


@dataclass
class NamedNetns:
    name: str

    @property
    def path(self) -> str:
        return f"/var/run/netns/{self.name}"

    def sh(self, *argv: str, check: bool = True, stdin: str | None = None) -> str:
        return sh(*argv, check=check, netns=self.name, stdin=stdin)


@pytest.fixture
def make_netns() -> Iterator[Callable[[], NamedNetns]]:
    """Factory for fresh netns named ``cni-<hex>`` with ``lo`` up; all are deleted at teardown."""
    made: list[NamedNetns] = []

    def make() -> NamedNetns:
        ns = NamedNetns(f"cni-{secrets.token_hex(4)}")
        sh("ip", "netns", "add", ns.name)
        made.append(ns)
        ns.sh("ip", "link", "set", "lo", "up")
        return ns

    yield make
    for ns in made:
        sh("ip", "netns", "del", ns.name, check=False)


@pytest.fixture
def subnet() -> str:
    """A random /24 inside 10.78.0.0/16, e.g. ``10.78.37``; lowers collision odds between parallel runs."""
    return f"10.78.{secrets.randbelow(250) + 2}"


@pytest.fixture
def pod_and_peer(
    make_netns: Callable[[], NamedNetns], subnet: str
) -> tuple[NamedNetns, NamedNetns, str, str]:
    """A "pod" netns and a "peer" netns joined by a veth pair; returns (pod, peer, pod_ip, peer_ip)."""
    pod, peer = make_netns(), make_netns()
    tag = secrets.token_hex(3)
    sh("ip", "link", "add", f"cni-a{tag}", "type", "veth", "peer", "name", f"cni-b{tag}")
    sh("ip", "link", "set", f"cni-a{tag}", "netns", pod.name)
    sh("ip", "link", "set", f"cni-b{tag}", "netns", peer.name)
    pod_ip, peer_ip = f"{subnet}.2", f"{subnet}.1"
    pod.sh("ip", "addr", "add", f"{pod_ip}/24", "dev", f"cni-a{tag}")
    peer.sh("ip", "addr", "add", f"{peer_ip}/24", "dev", f"cni-b{tag}")
    pod.sh("ip", "link", "set", f"cni-a{tag}", "up")
    peer.sh("ip", "link", "set", f"cni-b{tag}", "up")
    return pod, peer, pod_ip, peer_ip


@pytest.fixture
def is_root() -> bool:
    return os.geteuid() == 0
