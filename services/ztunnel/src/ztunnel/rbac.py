"""L4 authorization at the destination ztunnel (behaviour.md §4.6, wire-contracts.md §2.3).

Decision: any matching (non-dry-run) DENY denies; otherwise no ALLOW policy allows; otherwise one matching
ALLOW allows, else deny. Matching: a policy with no rules never matches; a rule matches when all its clauses
match (no clauses: matches everything); a clause matches when any of its non-empty matches matches (no
matches: matches; all-empty matches are skipped); inside a match, field kinds are AND-ed, values OR-ed, and
``not_*`` lists must not match. Dry-run policies are evaluated and logged only.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from meshkit.identity.spiffe import Identity
from meshkit.logs import kv

from ztunnel.state.records import Authorization, IPNetwork, Match, StringMatch

__all__ = ["ConnInfo", "Decision", "evaluate", "policy_matches"]

log = logging.getLogger("rbac")


@dataclass(frozen=True, slots=True)
class ConnInfo:
    """What a policy sees of a connection: TCP peer, TLS peer identity (None for plaintext), local pod."""

    src_ip: str
    src_identity: Identity | None
    dst_ip: str
    dst_port: int


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str
    policy: str = ""


def _ip_in(ip: str, nets: tuple[IPNetwork, ...]) -> bool:
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr.version == n.version and addr in n for n in nets)


def _str_any(items: tuple[StringMatch, ...], text: str | None) -> bool:
    return text is not None and any(m.matches(text) for m in items)


def _sa_any(items: tuple[tuple[str, str], ...], ident: Identity | None) -> bool:
    return ident is not None and (ident.namespace, ident.service_account) in items


def _positive(m: Match, c: ConnInfo, principal: str | None, namespace: str | None) -> bool:
    if m.namespaces and not _str_any(m.namespaces, namespace):
        return False
    if m.principals and not _str_any(m.principals, principal):
        return False
    if m.source_ips and not _ip_in(c.src_ip, m.source_ips):
        return False
    if m.destination_ips and not _ip_in(c.dst_ip, m.destination_ips):
        return False
    if m.destination_ports and c.dst_port not in m.destination_ports:
        return False
    return not m.service_accounts or _sa_any(m.service_accounts, c.src_identity)


def _negative(m: Match, c: ConnInfo, principal: str | None, namespace: str | None) -> bool:
    """True when a ``not_*`` list matches, which makes the whole match fail."""
    return (
        _str_any(m.not_namespaces, namespace)
        or _str_any(m.not_principals, principal)
        or (bool(m.not_source_ips) and _ip_in(c.src_ip, m.not_source_ips))
        or (bool(m.not_destination_ips) and _ip_in(c.dst_ip, m.not_destination_ips))
        or c.dst_port in m.not_destination_ports
        or _sa_any(m.not_service_accounts, c.src_identity)
    )


def match_matches(m: Match, c: ConnInfo) -> bool:
    principal = c.src_identity.principal if c.src_identity is not None else None
    # Without an identity the namespace is "" (so only a Presence or exact "" could care), §4.6.
    namespace = c.src_identity.namespace if c.src_identity is not None else ""
    return _positive(m, c, principal, namespace) and not _negative(m, c, principal, namespace)


def _clause_matches(clause: tuple[Match, ...], c: ConnInfo) -> bool:
    if not clause:
        return True
    return any(match_matches(m, c) for m in clause if not m.empty)


def policy_matches(pol: Authorization, c: ConnInfo) -> bool:
    return any(all(_clause_matches(clause, c) for clause in rule) for rule in pol.rules)


def evaluate(policies: Iterable[Authorization], c: ConnInfo) -> Decision:
    allows: list[Authorization] = []
    for pol in policies:
        if pol.action == "DENY":
            if policy_matches(pol, c):
                if pol.dry_run:
                    log.info("dry-run deny policy matched", extra=kv(policy=pol.key))
                    continue
                return Decision(False, "explicitly denied by policy", pol.key)
        elif pol.dry_run:
            if policy_matches(pol, c):
                log.info("dry-run allow policy matched", extra=kv(policy=pol.key))
        else:
            allows.append(pol)
    if not allows:
        return Decision(True, "no allow policies")
    for pol in allows:
        if policy_matches(pol, c):
            return Decision(True, "allowed by policy", pol.key)
    return Decision(False, "allow policies exist, but none allowed")
