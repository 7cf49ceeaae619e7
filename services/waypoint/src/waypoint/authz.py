"""L7 authorization at the waypoint: AuthorizationPolicy semantics, compiled once, evaluated per request.

Order (as upstream's waypoint): CUSTOM policies first (a matching CUSTOM rule asks the external authorizer),
then DENY (any match denies), then ALLOW (if any ALLOW policy applies, one must match), AUDIT only logs.
A denial is ``403`` with body ``RBAC: access denied`` (the caller writes it).

Matching, as Istio's AuthorizationPolicy: a policy with no rules never matches (so ALLOW-with-no-rules denies
everything and DENY-with-no-rules does nothing); a rule matches when *any* ``from`` source, *any* ``to``
operation and *all* ``when`` conditions match (an empty list matches); inside a source or operation each
field is a positive list (any value matches; empty ignores the field) AND a negative list (none may match).
Values use Istio's wildcard syntax (``*``, ``x*``, ``*x``), see :func:`waypoint.matching.istio_value`.
``dry_run`` policies are evaluated and logged, never enforced.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from meshproto.ambient.waypoint.v1 import waypoint_pb2 as pb

from waypoint.matching import istio_value

__all__ = [
    "AuthzContext",
    "Decision",
    "ExtAuthzSpec",
    "Policy",
    "compile_policy",
    "evaluate",
]

Pred = Callable[["AuthzContext"], bool]
ACTIONS = {pb.ALLOW: "ALLOW", pb.DENY: "DENY", pb.AUDIT: "AUDIT", pb.CUSTOM: "CUSTOM"}


@dataclass(slots=True)
class AuthzContext:
    """What a policy can look at for one request."""

    principal: str | None  # peer identity without spiffe://
    source_ip: str
    destination_ip: str
    destination_port: int
    host: str
    method: str
    path: str  # without query
    headers: Mapping[str, str]
    request_principal: str | None = None  # "<iss>/<sub>" of a validated JWT
    claims: Mapping[str, Any] = field(default_factory=dict)
    remote_ip: str | None = None

    @property
    def source_namespace(self) -> str | None:
        if not self.principal:
            return None
        parts = self.principal.split("/")
        return parts[2] if len(parts) >= 5 and parts[1] == "ns" else None


@dataclass(frozen=True, slots=True)
class ExtAuthzSpec:
    """A CUSTOM policy's provider (envoyExtAuthzHttp-like)."""

    name: str
    service: str
    port: int
    path_prefix: str
    include_request_headers: tuple[str, ...]
    timeout_s: float
    fail_open: bool


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    namespace: str
    action: str
    rules: tuple[Pred, ...]
    provider: ExtAuthzSpec | None = None
    dry_run: bool = False
    tcp_rules: tuple[Pred, ...] = ()  # the same rules for L4 (TCP passthrough) traffic, see _tcp_rule

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def matches(self, ctx: AuthzContext, *, tcp: bool = False) -> bool:
        return any(rule(ctx) for rule in (self.tcp_rules if tcp else self.rules))


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    policy: str = ""  # the key of the deciding policy ("" when no policy decided)
    reason: str = ""
    custom: tuple[Policy, ...] = ()  # CUSTOM policies whose rules matched: the caller asks their provider
    audited: tuple[str, ...] = ()


def _values(
    patterns: Sequence[str], getter: Callable[[AuthzContext], str | None], *, ignore_case: bool = False
) -> Pred | None:
    if not patterns:
        return None
    tests = [istio_value(p, ignore_case=ignore_case) for p in patterns]

    def pred(ctx: AuthzContext) -> bool:
        value = getter(ctx)
        return any(t(value) for t in tests)

    return pred


def _cidrs(blocks: Sequence[str], getter: Callable[[AuthzContext], str | None]) -> Pred | None:
    if not blocks:
        return None
    nets = []
    for block in blocks:
        try:
            nets.append(ipaddress.ip_network(block, strict=False))
        except ValueError:
            continue  # upstream silently drops bad IPs (behaviour.md §5.5)

    def pred(ctx: AuthzContext) -> bool:
        value = getter(ctx)
        if not value:
            return False
        try:
            ip = ipaddress.ip_address(value)
        except ValueError:
            return False
        return any(ip in net for net in nets)

    return pred


def _both(pos: Pred | None, neg: Pred | None) -> list[Pred]:
    out: list[Pred] = []
    if pos is not None:
        out.append(pos)
    if neg is not None:
        negated: Pred = neg
        out.append(lambda ctx: not negated(ctx))
    return out


def _all(preds: list[Pred]) -> Pred:
    if not preds:
        return lambda _ctx: True
    if len(preds) == 1:
        return preds[0]
    return lambda ctx: all(p(ctx) for p in preds)


def _source(src: pb.Source) -> Pred:
    preds: list[Pred] = []
    preds += _both(_values(src.principals, _principal), _values(src.not_principals, _principal))
    preds += _both(
        _values(src.request_principals, _req_principal), _values(src.not_request_principals, _req_principal)
    )
    preds += _both(_values(src.namespaces, _namespace), _values(src.not_namespaces, _namespace))
    preds += _both(_cidrs(src.ip_blocks, _source_ip), _cidrs(src.not_ip_blocks, _source_ip))
    preds += _both(_cidrs(src.remote_ip_blocks, _remote_ip), _cidrs(src.not_remote_ip_blocks, _remote_ip))
    return _all(preds)


def _operation(op: pb.Operation) -> Pred:
    preds: list[Pred] = []
    preds += _both(_values(op.hosts, _host, ignore_case=True), _values(op.not_hosts, _host, ignore_case=True))
    preds += _both(_values(op.ports, _port), _values(op.not_ports, _port))
    preds += _both(_values(op.methods, _method), _values(op.not_methods, _method))
    preds += _both(_values(op.paths, _path), _values(op.not_paths, _path))
    return _all(preds)


def _principal(c: AuthzContext) -> str | None:
    return c.principal


def _req_principal(c: AuthzContext) -> str | None:
    return c.request_principal


def _namespace(c: AuthzContext) -> str | None:
    return c.source_namespace


def _source_ip(c: AuthzContext) -> str | None:
    return c.source_ip


def _remote_ip(c: AuthzContext) -> str | None:
    return c.remote_ip or c.source_ip


def _host(c: AuthzContext) -> str | None:
    return c.host


def _port(c: AuthzContext) -> str | None:
    return str(c.destination_port)


def _method(c: AuthzContext) -> str | None:
    return c.method


def _path(c: AuthzContext) -> str | None:
    return c.path


def _claim(c: AuthzContext, path: list[str]) -> list[str]:
    value: Any = c.claims
    for part in path:
        if not isinstance(value, Mapping) or part not in value:
            return []
        value = value[part]
    if isinstance(value, list):
        return [str(v) for v in value]
    if isinstance(value, str):
        # A space-separated string claim (e.g. "scope") matches per element, as upstream.
        return [value, *value.split(" ")] if " " in value else [value]
    return [str(value).lower() if isinstance(value, bool) else str(value)]


def _condition_getter(key: str) -> Callable[[AuthzContext], list[str]] | None:
    """Values of a ``when`` key; ``None`` for a key we do not know (see :func:`_condition`)."""
    if key.startswith("request.headers[") and key.endswith("]"):
        name = key[len("request.headers[") : -1].lower()
        return lambda c: [c.headers[name]] if name in c.headers else []
    if key.startswith("request.auth.claims[") and key.endswith("]"):
        path = key[len("request.auth.claims[") : -1].split("][")
        return lambda c: _claim(c, path)
    simple: dict[str, Callable[[AuthzContext], str | None]] = {
        "source.ip": _source_ip,
        "remote.ip": _remote_ip,
        "source.namespace": _namespace,
        "source.principal": _principal,
        "request.auth.principal": _req_principal,
        "destination.ip": lambda c: c.destination_ip,
        "destination.port": _port,
        "connection.sni": lambda _c: None,
    }
    if key in simple:
        get = simple[key]
        return lambda c: [v] if (v := get(c)) else []
    if key == "request.auth.audiences":
        return lambda c: _claim(c, ["aud"])
    if key == "request.auth.presenter":
        return lambda c: _claim(c, ["azp"])
    return None


def _condition(cond: pb.Condition, fail_closed: bool) -> Pred:
    """One ``when`` condition. An unknown key (Istio's validation would have refused the policy) can never
    match in ALLOW/AUDIT policies and always matches in DENY/CUSTOM ones: either way the policy errs on the
    side of denying rather than silently turning a DENY rule off."""
    found = _condition_getter(cond.key)
    if found is None:
        return (lambda _c: True) if fail_closed else (lambda _c: False)
    get = found
    if cond.key in {"source.ip", "remote.ip", "destination.ip"}:
        first: Callable[[AuthzContext], str | None] = lambda c: next(iter(get(c)), None)  # noqa: E731
        pos = _cidrs(cond.values, first)
        neg = _cidrs(cond.not_values, first)
        return _all(_both(pos, neg))
    pos_tests = [istio_value(v) for v in cond.values]
    neg_tests = [istio_value(v) for v in cond.not_values]

    def pred(ctx: AuthzContext) -> bool:
        values = get(ctx)
        if pos_tests and not any(t(v) for t in pos_tests for v in values):
            return False
        return not any(t(v) for t in neg_tests for v in values)

    return pred


def _rule(rule: pb.Rule, fail_closed: bool) -> Pred:
    sources = [_source(s) for s in rule.sources]
    operations = [_operation(o) for o in rule.operations]
    conditions = [_condition(c, fail_closed) for c in rule.conditions]

    def pred(ctx: AuthzContext) -> bool:
        if sources and not any(s(ctx) for s in sources):
            return False
        if operations and not any(o(ctx) for o in operations):
            return False
        return all(c(ctx) for c in conditions)

    return pred


_L4_KEYS = frozenset(
    {"source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port"}
)


def _tcp_rule(rule: pb.Rule, action: int) -> Pred | None:
    """A rule for TCP traffic, which has no HTTP attributes (Istio's TCP filter chain semantics).

    ALLOW: a rule naming any HTTP-only field is dropped (``None``: never matches), so TCP is allowed less
    rather than more. DENY and AUDIT: the HTTP-only fields are left out and the rule matches on its L4
    fields alone (wider). HTTP-only: request principals, remote IPs, hosts, methods, paths and
    every ``when`` key but the L4 ones.
    """
    l7 = any(
        s.request_principals or s.not_request_principals or s.remote_ip_blocks or s.not_remote_ip_blocks
        for s in rule.sources
    ) or any(
        o.hosts or o.not_hosts or o.methods or o.not_methods or o.paths or o.not_paths
        for o in rule.operations
    )
    l7 = l7 or any(c.key not in _L4_KEYS for c in rule.conditions)
    if l7 and action not in (pb.DENY, pb.AUDIT):
        return None
    l4 = pb.Rule()
    for src in rule.sources:
        kept = l4.sources.add()
        kept.CopyFrom(src)
        for name in (
            "request_principals",
            "not_request_principals",
            "remote_ip_blocks",
            "not_remote_ip_blocks",
        ):
            kept.ClearField(name)
    for op in rule.operations:
        l4.operations.add(ports=op.ports, not_ports=op.not_ports)
    l4.conditions.extend(c for c in rule.conditions if c.key in _L4_KEYS)
    return _rule(l4, fail_closed=True)


def compile_policy(msg: pb.Policy) -> Policy:
    provider = None
    if msg.action == pb.CUSTOM and msg.HasField("provider"):
        p = msg.provider
        provider = ExtAuthzSpec(
            p.name,
            p.service,
            p.port,
            p.path_prefix,
            tuple(h.lower() for h in p.include_request_headers),
            (p.timeout_ms or 600) / 1000.0,
            p.fail_open,
        )
    return Policy(
        name=msg.name,
        namespace=msg.namespace,
        action=ACTIONS.get(msg.action, "ALLOW"),
        rules=tuple(_rule(r, msg.action in (pb.DENY, pb.CUSTOM)) for r in msg.rules),
        provider=provider,
        dry_run=msg.dry_run,
        tcp_rules=tuple(t for r in msg.rules if (t := _tcp_rule(r, msg.action)) is not None),
    )


def evaluate(policies: Sequence[Policy], ctx: AuthzContext, *, tcp: bool = False) -> Decision:
    """CUSTOM (collected for the caller) → DENY → ALLOW; AUDIT matches are reported only.

    ``tcp``: a TCP passthrough connection, judged by each policy's ``tcp_rules``; CUSTOM (an HTTP check) is
    not asked for TCP.
    """
    custom = (
        () if tcp else tuple(p for p in policies if p.action == "CUSTOM" and not p.dry_run and p.matches(ctx))
    )
    audited = tuple(p.key for p in policies if p.action == "AUDIT" and p.matches(ctx, tcp=tcp))
    for policy in policies:
        if policy.action == "DENY" and not policy.dry_run and policy.matches(ctx, tcp=tcp):
            return Decision(False, policy.key, "denied by policy", custom, audited)
    allows = [p for p in policies if p.action == "ALLOW" and not p.dry_run]
    if not allows:
        return Decision(True, "", "no ALLOW policy", custom, audited)
    for policy in allows:
        if policy.matches(ctx, tcp=tcp):
            return Decision(True, policy.key, "allowed by policy", custom, audited)
    return Decision(False, "", "ALLOW policies exist but none matched", custom, audited)
