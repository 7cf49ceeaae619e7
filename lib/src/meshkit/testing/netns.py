"""Network-namespace fixtures for root tests: two netns joined by a veth pair.

Everything is created with the caller's name prefix and inside namespaces this helper owns, so parallel
test runs of different components never collide, and deleting the namespaces (always done on exit) removes
the veth pair, addresses, routes and iptables rules with them. Nothing is ever created in the host netns:
each veth end is born directly inside its namespace.

Example::

    with netns_pair("mk-", "10.75.1.0/24") as (server, client):
        server.exec("iptables", "-t", "nat", "-A", "PREROUTING", ...)
        ...  # server.addr is 10.75.1.1, client.addr 10.75.1.2
"""

from __future__ import annotations

import contextlib
import ipaddress
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

from meshkit.netns import TempNetns, temp_netns

__all__ = ["LinkedNetns", "netns_pair"]


@dataclass(frozen=True, slots=True)
class LinkedNetns:
    """One end of :func:`netns_pair`: the namespace, its veth name and its address."""

    ns: TempNetns
    ifname: str
    addr: str

    @property
    def name(self) -> str:
        return self.ns.name

    def exec(self, *argv: str) -> str:
        return self.ns.exec(*argv)

    def ip(self, *args: str) -> str:
        return self.ns.ip(*args)


@contextlib.contextmanager
def netns_pair(prefix: str, subnet: str) -> Iterator[tuple[LinkedNetns, LinkedNetns]]:
    """Two fresh netns ``<prefix>…`` joined by a veth; the first gets ``subnet``'s first host address."""
    net = ipaddress.ip_network(subnet)
    hosts = net.hosts()
    addr_a, addr_b = str(next(hosts)), str(next(hosts))
    tag = secrets.token_hex(3)
    if_a, if_b = f"{prefix}{tag}a", f"{prefix}{tag}b"
    if len(if_a) > 15:  # IFNAMSIZ - 1
        raise ValueError(f"prefix {prefix!r} too long for an interface name")
    with temp_netns(prefix) as ns_a, temp_netns(prefix) as ns_b:
        ns_a.ip("link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", ns_b.name)
        for ns, ifname, addr in ((ns_a, if_a, addr_a), (ns_b, if_b, addr_b)):
            ns.ip("addr", "add", f"{addr}/{net.prefixlen}", "dev", ifname)
            ns.ip("link", "set", ifname, "up")
        yield LinkedNetns(ns_a, if_a, addr_a), LinkedNetns(ns_b, if_b, addr_b)
