"""L4 authorization semantics (§4.6, wire-contracts §2.3)."""

from __future__ import annotations

import ipaddress

import pytest
from meshkit.identity.spiffe import Identity
from ztunnel.rbac import ConnInfo, evaluate, policy_matches
from ztunnel.state.records import Authorization, Match, StringMatch

SLEEP = Identity("cluster.local", "default", "sleep")
CONN = ConnInfo("10.77.0.5", SLEEP, "10.77.0.9", 8080)
PLAIN = ConnInfo("10.77.0.5", None, "10.77.0.9", 8080)


def pol(action: str, *matches: Match, dry_run: bool = False, name: str = "p") -> Authorization:
    return Authorization(name, "default", "NAMESPACE", action, ((tuple(matches),),), dry_run)  # type: ignore[arg-type]


def test_no_policies_allows() -> None:
    assert evaluate([], CONN).allowed


def test_zero_rules_never_matches_zero_clauses_match_all() -> None:
    assert not policy_matches(Authorization("p", "ns", "NAMESPACE", "DENY", ()), CONN)
    assert policy_matches(Authorization("p", "ns", "NAMESPACE", "DENY", ((),)), CONN)
    assert policy_matches(Authorization("p", "ns", "NAMESPACE", "DENY", (((),),)), CONN)


def test_all_empty_match_is_skipped() -> None:
    assert not policy_matches(pol("DENY", Match()), CONN)


def test_deny_wins_over_allow() -> None:
    allow = pol("ALLOW", Match(principals=(StringMatch("exact", SLEEP.principal),)), name="a")
    deny = pol("DENY", Match(destination_ports=frozenset({8080})), name="d")
    decision = evaluate([allow, deny], CONN)
    assert not decision.allowed
    assert decision.policy == "default/d"


def test_allow_by_principal_admits_only_that_identity() -> None:
    allow = pol(
        "ALLOW",
        Match(principals=(StringMatch("exact", "cluster.local/ns/default/sleep"[:0] + SLEEP.principal),)),
    )
    assert evaluate([allow], CONN).allowed
    other = ConnInfo("10.77.0.5", Identity("cluster.local", "default", "other"), "10.77.0.9", 8080)
    decision = evaluate([allow], other)
    assert not decision.allowed
    assert decision.reason == "allow policies exist, but none allowed"
    assert not evaluate([allow], PLAIN).allowed


def test_strict_denies_plaintext_only() -> None:
    strict = Authorization(
        "istio_converted_static_strict",
        "istio-system",
        "WORKLOAD_SELECTOR",
        "DENY",
        (((Match(not_principals=(StringMatch("presence"),)),),),),
    )
    assert not evaluate([strict], PLAIN).allowed
    assert evaluate([strict], CONN).allowed


def test_dry_run_not_enforced() -> None:
    assert evaluate([pol("DENY", Match(destination_ports=frozenset({8080})), dry_run=True)], CONN).allowed


@pytest.mark.parametrize(
    ("match", "expected"),
    [
        (Match(namespaces=(StringMatch("exact", "default"),)), True),
        (Match(namespaces=(StringMatch("prefix", "def"),)), True),
        (Match(not_namespaces=(StringMatch("suffix", "ault"),)), False),
        (Match(source_ips=(ipaddress.ip_network("10.77.0.0/24"),)), True),
        (Match(not_source_ips=(ipaddress.ip_network("10.77.0.5/32"),)), False),
        (Match(destination_ips=(ipaddress.ip_network("10.77.0.9/32"),)), True),
        (Match(destination_ports=frozenset({80})), False),
        (Match(not_destination_ports=frozenset({80})), True),
        (Match(service_accounts=(("default", "sleep"),)), True),
        (Match(not_service_accounts=(("default", "sleep"),)), False),
        (Match(principals=(StringMatch("exact", SLEEP.uri),)), False),  # compared without spiffe://
        (Match(namespaces=(StringMatch("exact", "default"),), destination_ports=frozenset({80})), False),
    ],
)
def test_match_fields(match: Match, expected: bool) -> None:
    assert policy_matches(pol("DENY", match), CONN) is expected


def test_clause_any_rule_all() -> None:
    hit, miss = Match(destination_ports=frozenset({8080})), Match(destination_ports=frozenset({1}))
    any_of = Authorization("p", "d", "NAMESPACE", "DENY", (((miss, hit),),))
    all_of = Authorization("p", "d", "NAMESPACE", "DENY", (((hit,), (miss,)),))
    assert policy_matches(any_of, CONN)
    assert not policy_matches(all_of, CONN)
