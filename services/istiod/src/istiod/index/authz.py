"""AuthorizationPolicy → ztunnel ``Authorization`` (behaviour.md §5.5), as pure functions over plain dicts.

The rules, in upstream's order: a dry-run policy is dropped unless dry-run support is on; any
``targetRef``/``targetRefs`` means a waypoint policy, never sent; only ALLOW and DENY are sent; scope is
WORKLOAD_SELECTOR with a selector, else NAMESPACE, or GLOBAL in the root namespace. Each AP rule becomes one
:class:`Rule` with a ``to`` clause, a ``from`` clause and one clause per ``when`` condition. HTTP-only fields
drop the whole rule in ALLOW and are omitted (leaving possibly empty matches) in DENY.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from istiod.index import meta
from istiod.index.records import (
    ACTION_ALLOW,
    ACTION_DENY,
    AUTHZ_SCOPE_GLOBAL,
    AUTHZ_SCOPE_NAMESPACE,
    AUTHZ_SCOPE_WORKLOAD_SELECTOR,
    Authorization,
    Clause,
    IpMatch,
    Match,
    PolicyStatus,
    Rule,
    ServiceAccountMatch,
    StringMatch,
)

T = TypeVar("T")
Obj = dict[str, Any]

_HTTP_OPERATION_FIELDS = ("hosts", "notHosts", "methods", "notMethods", "paths", "notPaths")
# trustDomains/notTrustDomains: a Match cannot express them without widening the source, so upstream reports
# them like the HTTP fields (istio authorization.go, after the behaviour.md snapshot; conservative).
_HTTP_SOURCE_FIELDS = (
    "remoteIpBlocks", "notRemoteIpBlocks", "requestPrincipals", "notRequestPrincipals",
    "trustDomains", "notTrustDomains",
)  # fmt: skip
L4_WHEN_KEYS = frozenset(
    {"source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port"}
)
DRY_RUN_ANNOTATION = "istio.io/dry-run"

_HTTP_RULE = (
    "ztunnel does not support HTTP attributes (found: {}). In ambient mode you must use a waypoint proxy "
)
_HTTP_RULE += "to enforce HTTP rules. {}"
_DENY_NO_EFFECT = (
    "After omitting unsupported HTTP attributes, this DENY policy has no enforceable rules at ztunnel "
    "and will have no effect. Deploy a waypoint proxy and use a targetRef to enforce this policy."
)
_DENY_MIXED = (
    "DENY policy with HTTP attributes is enforced without the HTTP rules. This will be more restrictive than "
    "requested."
)
_ALLOW_DROPPED = (
    "Within an ALLOW policy, rules matching HTTP attributes are omitted. This will be more restrictive than "
    "requested."
)


@dataclass(frozen=True, slots=True)
class ConvertedPolicy:
    """What one AuthorizationPolicy yields: the resource (None = not sent) and a status condition, if any."""

    authorization: Authorization | None
    status: PolicyStatus | None = None
    selector: tuple[tuple[str, str], ...] | None = None  # matchLabels (None: attached to no workload)


def string_match(value: str) -> StringMatch:
    """``*`` → presence, ``*x`` → suffix x, ``x*`` → prefix x, else exact (behaviour.md §5.5)."""
    if value == "*":
        return StringMatch("presence")
    if value.startswith("*"):
        return StringMatch("suffix", value[1:])
    if value.endswith("*"):
        return StringMatch("prefix", value[:-1])
    return StringMatch("exact", value)


def _list(values: Any) -> list[Any]:
    if values is not None and not isinstance(values, list):
        raise TypeError(f"expected a list, got {values!r}")
    return values or []


def string_matches(values: Sequence[str] | None) -> tuple[StringMatch, ...]:
    return tuple(string_match(str(v)) for v in _list(values))


def ports(values: Sequence[Any] | None) -> tuple[int, ...]:
    """Decimal ports 0..65535; anything else is silently dropped (§5.5)."""
    out = []
    for value in _list(values):
        number = meta.number(
            str(value)
        )  # ParseUint on the string form: "080" is 80, "+80" and "²" are dropped
        if number is not None and number <= 65535:
            out.append(number)
    return tuple(out)


def ip_matches(values: Sequence[str] | None) -> tuple[IpMatch, ...]:
    """IPs and CIDRs; a bare IP becomes /32 or /128; unparsable entries are silently dropped (§5.5)."""
    out = []
    for value in _list(values):
        text = str(value)
        try:
            if "/" in text:
                addr_text, _, bits = text.partition("/")
                if "%" in addr_text or meta.number(bits) is None:
                    continue  # netip.ParsePrefix: no zone, decimal bits only (no "/255.0.0.0" netmask form)
                net = ipaddress.ip_network(text, strict=False)
                # the prefix's own address is kept as written, like netip.ParsePrefix(...).Addr()
                addr = ipaddress.ip_address(addr_text)
                out.append(IpMatch(addr.packed, net.prefixlen))
            else:
                addr = ipaddress.ip_address(text)
                out.append(IpMatch(addr.packed, addr.max_prefixlen))
        except ValueError:
            continue
    return tuple(out)


def service_account_matches(values: Sequence[str] | None, namespace: str) -> tuple[ServiceAccountMatch, ...]:
    """``sa`` means a service account in the policy's namespace; ``ns/sa`` names both."""
    out = []
    for value in _list(values):
        ns, sep, sa = str(value).partition("/")
        out.append(ServiceAccountMatch(ns, sa) if sep else ServiceAccountMatch(namespace, ns))
    return tuple(out)


def _present(spec: Obj, names: Sequence[str]) -> list[str]:
    return [name for name in names if spec.get(name)]


def _to_match(operation: Obj) -> Match:
    return Match(
        destination_ports=ports(operation.get("ports")),
        not_destination_ports=ports(operation.get("notPorts")),
    )


def _from_match(source: Obj, namespace: str) -> Match:
    return Match(
        source_ips=ip_matches(source.get("ipBlocks")),
        not_source_ips=ip_matches(source.get("notIpBlocks")),
        namespaces=string_matches(source.get("namespaces")),
        not_namespaces=string_matches(source.get("notNamespaces")),
        service_accounts=service_account_matches(source.get("serviceAccounts"), namespace),
        not_service_accounts=service_account_matches(source.get("notServiceAccounts"), namespace),
        principals=string_matches(source.get("principals")),
        not_principals=string_matches(source.get("notPrincipals")),
    )


def _when(
    key: str, condition: Obj, want: str, invert: bool, convert: Callable[[Any], tuple[T, ...]]
) -> tuple[T, ...]:
    if key != want:
        return ()
    return convert(condition.get("notValues" if invert else "values"))


def _when_match(condition: Obj) -> Match:
    key = str(condition.get("key", ""))
    return Match(
        namespaces=_when(key, condition, "source.namespace", False, string_matches),
        principals=_when(key, condition, "source.principal", False, string_matches),
        source_ips=_when(key, condition, "source.ip", False, ip_matches),
        destination_ports=_when(key, condition, "destination.port", False, ports),
        destination_ips=_when(key, condition, "destination.ip", False, ip_matches),
        not_namespaces=_when(key, condition, "source.namespace", True, string_matches),
        not_principals=_when(key, condition, "source.principal", True, string_matches),
        not_source_ips=_when(key, condition, "source.ip", True, ip_matches),
        not_destination_ports=_when(key, condition, "destination.port", True, ports),
        not_destination_ips=_when(key, condition, "destination.ip", True, ip_matches),
    )


def convert_rule(rule: Obj, action: int, namespace: str) -> tuple[Rule | None, set[str]]:
    """One AP rule → one :class:`Rule` (None when dropped) and the HTTP-only attributes it used."""
    http: set[str] = set()
    to_matches, from_matches = [], []
    for to in _list(rule.get("to")):
        operation = to.get("operation") or {}
        http.update(_present(operation, _HTTP_OPERATION_FIELDS))
        to_matches.append(_to_match(operation))
    for frm in _list(rule.get("from")):
        source = frm.get("source") or {}
        http.update(_present(source, _HTTP_SOURCE_FIELDS))
        from_matches.append(_from_match(source, namespace))
    clauses = [Clause(tuple(m)) for m in (to_matches, from_matches) if m]
    for condition in _list(rule.get("when")):
        if condition.get("key") not in L4_WHEN_KEYS:
            http.add(str(condition.get("key", "")))
        clauses.append(Clause((_when_match(condition),)))
    if http and action == ACTION_ALLOW:
        return None, http  # §5.5: an HTTP rule in ALLOW never matches, so the whole rule is dropped
    return Rule(tuple(clauses)), http


def _effective(rules: Sequence[Rule]) -> bool:
    """Whether some rule can fire at ztunnel (it skips all-empty matches; §5.5 DENY "has no effect")."""
    return any(all(any(not m.empty for m in c.matches) for c in r.clauses) for r in rules)


def _parse_bool(text: str) -> bool:
    # Go's strconv.ParseBool; anything unparsable means false (upstream logs and proceeds)
    return text in {"1", "t", "T", "TRUE", "true", "True"}


# what a policy with fields of the wrong shape raises while being converted
_MALFORMED = (AttributeError, KeyError, TypeError, ValueError)


def convert_authorization_policy(
    obj: Obj, root_namespace: str, dry_run_enabled: bool = False
) -> ConvertedPolicy:
    """The policy's Authorization (or None) and status. A malformed policy is not sent and gets a status
    saying why, instead of failing the derivation (upstream's typed client would not decode it at all)."""
    try:
        return _convert(obj, root_namespace, dry_run_enabled)
    except _MALFORMED as exc:
        message = f"invalid AuthorizationPolicy, not sent to ztunnel: {type(exc).__name__}: {exc}"
        return ConvertedPolicy(None, PolicyStatus("InvalidSpec", message))


def _convert(obj: Obj, root_namespace: str, dry_run_enabled: bool) -> ConvertedPolicy:
    spec = meta.spec(obj)
    name, namespace = meta.name(obj), meta.namespace(obj)
    dry_run = _parse_bool(meta.annos(obj).get(DRY_RUN_ANNOTATION, ""))
    if dry_run and not dry_run_enabled:
        message = (
            f'found policy "{namespace}/{name}" using dry-run annotation, but support for ambient dry-run '
            "authorizationPolicies isn't enabled"
        )
        return ConvertedPolicy(None, PolicyStatus("UnsupportedValue", message))
    if spec.get("targetRef") or spec.get("targetRefs"):
        return ConvertedPolicy(None)  # §5.5: a waypoint policy; ztunnel never sees it
    selector = spec.get("selector")
    if selector is not None:
        scope = AUTHZ_SCOPE_WORKLOAD_SELECTOR
    else:
        scope = AUTHZ_SCOPE_GLOBAL if namespace == root_namespace else AUTHZ_SCOPE_NAMESPACE
    action_name = str(spec.get("action") or "ALLOW")
    if action_name not in {"ALLOW", "DENY"}:
        return ConvertedPolicy(
            None, PolicyStatus("UnsupportedValue", f"ztunnel does not support the {action_name} action")
        )
    action = ACTION_ALLOW if action_name == "ALLOW" else ACTION_DENY
    if selector is not None and not isinstance(selector, dict):
        raise TypeError(f"selector must be a map, got {selector!r}")
    rules, http = [], set()
    for rule in _list(spec.get("rules")):
        converted, found = convert_rule(rule or {}, action, namespace)
        http |= found
        if converted is not None:
            rules.append(converted)
    auth = Authorization(name, namespace, scope, action, tuple(rules), dry_run)
    match_labels = (selector or {}).get("matchLabels")
    if match_labels is not None and not isinstance(match_labels, dict):
        raise TypeError(f"selector.matchLabels must be a map, got {match_labels!r}")
    # upstream attaches by NewSelector(GetMatchLabels()) and skips a nil map: `selector: {}` is a
    # WORKLOAD_SELECTOR policy that no workload lists, while `matchLabels: {}` selects them all (§5.7)
    labels = tuple(sorted(match_labels.items())) if match_labels is not None else None
    return ConvertedPolicy(auth, _http_status(action, rules, http), labels)


def _http_status(action: int, rules: Sequence[Rule], http: set[str]) -> PolicyStatus | None:
    if not http:
        return None
    if action == ACTION_DENY:
        boilerplate = _DENY_MIXED if _effective(rules) else _DENY_NO_EFFECT
    else:
        boilerplate = _ALLOW_DROPPED
    return PolicyStatus("UnsupportedValue", _HTTP_RULE.format(", ".join(sorted(http)), boilerplate))
