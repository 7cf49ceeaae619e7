"""Sans-IO DNS answering for one client pod (behaviour.md §8). No sockets: bytes in, bytes (or "forward") out.

For a query from a pod in namespace N (cluster domain D) the candidates are the name itself, its Kubernetes
expansions, the same after stripping each search domain (``N.svc.D``, ``svc.D``, ``D``; a stripped match is
answered with a CNAME to the stripped name), and wildcards (``*.example.com``, ``*.com``). A candidate
matches a Service with that hostname that has VIPs, or is headless under ``.svc.D``; services not visible
to N are ignored. Only A and AAAA are answered (authoritative, TTL 30 s, addresses shuffled); a known name
without an address of the asked family gets NOERROR with no answer; anything else is forwarded.

dnslib is used for the wire format: it is small (the RSS budget is 64 MB) and we never need a resolver,
because forwarded queries are relayed as raw bytes.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterator
from dataclasses import dataclass

import dnslib

from ztunnel.state.records import Service
from ztunnel.state.state import State

__all__ = ["TTL", "Answer", "DnsResolver", "candidates"]

TTL = 30


@dataclass(frozen=True, slots=True)
class Answer:
    """A local answer: ``cname`` set when the match came from stripping a search domain."""

    service: Service
    name: str
    cname: str | None


def _expansions(name: str, ns: str, domain: str) -> list[str]:
    labels = name.split(".")
    n = len(labels)
    if name.endswith("." + domain) or name == domain:
        return [name]
    if n == 1:
        return [name, f"{name}.{ns}.svc.{domain}"]
    if n == 2:
        return [name, f"{name}.svc.{domain}", f"{name}.{ns}.svc.{domain}"]
    if labels[-1] == "svc":
        return [name, f"{name}.{domain}"]
    if n == 3:
        return [name, f"{name}.svc.{domain}"]
    return [name]


def candidates(name: str, ns: str, domain: str) -> Iterator[tuple[str, str | None]]:
    """(candidate hostname, CNAME target or None) in lookup order."""
    bases: list[tuple[str, str | None]] = [(name, None)]
    for search in (f"{ns}.svc.{domain}", f"svc.{domain}", domain):
        if name.endswith("." + search):
            stripped = name[: -len(search) - 1]
            bases.append((stripped, stripped))
    for base, cname in bases:
        yield from ((c, cname) for c in _expansions(base, ns, domain))
    for base, cname in bases:
        labels = base.split(".")
        for i in range(1, len(labels)):
            yield "*." + ".".join(labels[i:]), cname


class DnsResolver:
    """Answers one pod's queries from the mesh state."""

    def __init__(
        self, state: State, namespace: str, domain: str = "cluster.local", rng: random.Random | None = None
    ):
        self.state = state
        self.namespace = namespace
        self.domain = domain
        self._rng = rng or random.Random()

    def lookup(self, qname: str) -> Answer | None:
        name = qname.rstrip(".").lower()
        for cand, cname in candidates(name, self.namespace, self.domain):
            svc = self.state.find_services_by_hostname(cand, self.namespace)
            if svc is not None and (svc.vips or svc.hostname.endswith(f".svc.{self.domain}")):
                return Answer(svc, cand, cname)
        return None

    def addresses(self, svc: Service, qtype: str) -> list[str]:
        version = 4 if qtype == "A" else 6
        if svc.vips:
            ips = [ip for net, ip in svc.vips if net == self.state.network]
        else:  # headless: one address per endpoint workload
            ips = [ip for wl, _ in self.state.endpoints(svc) for ip in wl.addresses[:1]]
        ips = [ip for ip in ips if ipaddress.ip_address(ip).version == version]
        self._rng.shuffle(ips)
        return ips

    def answer(self, query: bytes) -> bytes | None:
        """The reply to ``query``, or None when it must be forwarded upstream."""
        try:
            request = dnslib.DNSRecord.parse(query)
        except (dnslib.DNSError, Exception):
            return None
        if len(request.questions) != 1:
            return None
        q = request.q
        qtype = dnslib.QTYPE.get(q.qtype)
        if qtype not in ("A", "AAAA") or q.qclass != 1:
            return None
        found = self.lookup(str(q.qname))
        if found is None:
            return None
        reply = request.reply(ra=1, aa=1)
        owner = str(q.qname)
        if found.cname is not None:
            target = found.cname + "."
            reply.add_answer(dnslib.RR(owner, dnslib.QTYPE.CNAME, rdata=dnslib.CNAME(target), ttl=TTL))
            owner = target
        rdata = dnslib.A if qtype == "A" else dnslib.AAAA
        for ip in self.addresses(found.service, qtype):
            reply.add_answer(dnslib.RR(owner, getattr(dnslib.QTYPE, qtype), rdata=rdata(ip), ttl=TTL))
        return bytes(reply.pack())
