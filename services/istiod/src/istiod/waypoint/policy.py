"""AuthorizationPolicy and RequestAuthentication with ``targetRef(s)`` → our WaypointConfig pieces (pure).

Attachment (behaviour.md §6.2): ``targetRefs`` naming the waypoint ``Gateway`` (whole waypoint), a
``Service`` bound to it, or the ``GatewayClass`` ``istio-waypoint`` (policy in the root namespace: every
waypoint). Selector policies are not applied at the waypoint. The policy body is copied field for field;
the waypoint compiles Istio's wildcard strings itself.

Problems are returned as messages for a status condition; a bad policy never breaks the others. CUSTOM needs
a provider from MeshConfig ``extensionProviders``; without one the policy is kept (the waypoint then fails
closed on the requests it matches) and flagged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshproto.ambient.waypoint.v1 import waypoint_pb2 as pb

Obj = dict[str, Any]

__all__ = ["Target", "convert_authorization", "convert_request_authn", "targets"]

ACTIONS = {"ALLOW": pb.ALLOW, "DENY": pb.DENY, "AUDIT": pb.AUDIT, "CUSTOM": pb.CUSTOM}
GATEWAY_GROUP = "gateway.networking.k8s.io"


@dataclass(frozen=True, slots=True)
class Target:
    kind: str  # Gateway | Service | GatewayClass | ServiceEntry
    namespace: str
    name: str


def targets(obj: Obj) -> tuple[list[Target], list[str]]:
    """The policy's targetRefs (and the legacy singular targetRef) in the policy's own namespace, and a
    problem for each ref naming another namespace, which is dropped.

    Istio refuses cross-namespace targetRefs: honouring one would let any namespace attach policy (or a JWT
    issuer of its own) to other teams' Services, or, naming the root namespace, to every waypoint through
    the GatewayClass.
    """
    spec = obj.get("spec") or {}
    ns = str((obj.get("metadata") or {}).get("namespace", ""))
    refs = list(spec.get("targetRefs") or [])
    if spec.get("targetRef"):
        refs.append(spec["targetRef"])
    own: list[Target] = []
    foreign: list[str] = []
    for r in refs:
        kind, name = str(r.get("kind", "")), str(r.get("name", ""))
        if str(r.get("namespace") or ns) == ns:
            own.append(Target(kind, ns, name))
        else:
            where = f"{r.get('namespace')}/{name}"
            foreign.append(f"targetRef {kind} {where}: cross-namespace references are not allowed, ignored")
    return own, foreign


def _strs(value: Any) -> list[str]:
    return [str(v) for v in value or []]


def _source(src: Obj) -> pb.Source:
    return pb.Source(
        principals=_strs(src.get("principals")),
        not_principals=_strs(src.get("notPrincipals")),
        request_principals=_strs(src.get("requestPrincipals")),
        not_request_principals=_strs(src.get("notRequestPrincipals")),
        namespaces=_strs(src.get("namespaces")),
        not_namespaces=_strs(src.get("notNamespaces")),
        ip_blocks=_strs(src.get("ipBlocks")),
        not_ip_blocks=_strs(src.get("notIpBlocks")),
        remote_ip_blocks=_strs(src.get("remoteIpBlocks")),
        not_remote_ip_blocks=_strs(src.get("notRemoteIpBlocks")),
    )


def _service_account_principals(src: Obj, ns: str, trust_domain: str, field: str) -> list[str]:
    out = []
    for sa in _strs(src.get(field)):
        sa_ns, _, name = sa.rpartition("/")
        out.append(f"{trust_domain}/ns/{sa_ns or ns}/sa/{name}")
    return out


_KEYS = frozenset(
    {
        "source.ip",
        "remote.ip",
        "source.namespace",
        "source.principal",
        "request.auth.principal",
        "request.auth.audiences",
        "request.auth.presenter",
        "destination.ip",
        "destination.port",
        "connection.sni",
    }
)


def _known_key(key: str) -> bool:
    """The ``when`` keys the waypoint evaluates (waypoint.authz); others get a status problem."""
    if key in _KEYS:
        return True
    return any(key.startswith(p) and key.endswith("]") for p in ("request.headers[", "request.auth.claims["))


def _operation(op: Obj) -> pb.Operation:
    return pb.Operation(
        hosts=_strs(op.get("hosts")),
        not_hosts=_strs(op.get("notHosts")),
        ports=_strs(op.get("ports")),
        not_ports=_strs(op.get("notPorts")),
        methods=_strs(op.get("methods")),
        not_methods=_strs(op.get("notMethods")),
        paths=_strs(op.get("paths")),
        not_paths=_strs(op.get("notPaths")),
    )


def convert_authorization(
    obj: Obj, trust_domain: str, providers: Mapping[str, pb.ExtAuthz]
) -> tuple[pb.Policy | None, list[str]]:
    """(policy, problems). ``None`` when the policy cannot be used at all."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    ns = str(meta.get("namespace", ""))
    action_name = str(spec.get("action") or "ALLOW")
    problems: list[str] = []
    if action_name not in ACTIONS:
        return None, [f"unknown action {action_name!r}"]
    policy = pb.Policy(name=str(meta.get("name", "")), namespace=ns, action=ACTIONS[action_name])
    policy.dry_run = str((meta.get("annotations") or {}).get("istio.io/dry-run", "")).lower() == "true"
    for rule in spec.get("rules") or []:
        out = policy.rules.add()
        for entry in rule.get("from") or []:
            src = entry.get("source") or {}
            converted = _source(src)
            converted.principals.extend(_service_account_principals(src, ns, trust_domain, "serviceAccounts"))
            # dropping notServiceAccounts would widen the source to everyone (an ALLOW letting them in)
            converted.not_principals.extend(
                _service_account_principals(src, ns, trust_domain, "notServiceAccounts")
            )
            out.sources.append(converted)
        for entry in rule.get("to") or []:
            out.operations.append(_operation(entry.get("operation") or {}))
        for cond in rule.get("when") or []:
            if not _known_key(str(cond.get("key", ""))):
                problems.append(
                    f"unknown condition key {cond.get('key')!r}: the rule "
                    + ("matches regardless of it" if action_name in {"DENY", "CUSTOM"} else "never matches")
                )
            out.conditions.append(
                pb.Condition(
                    key=str(cond.get("key", "")),
                    values=_strs(cond.get("values")),
                    not_values=_strs(cond.get("notValues")),
                )
            )
    if action_name == "CUSTOM":
        name = str((spec.get("provider") or {}).get("name", ""))
        if name in providers:
            policy.provider.CopyFrom(providers[name])
        else:
            problems.append(
                f"CUSTOM provider {name!r} is not in meshConfig.extensionProviders: matching "
                "requests are denied"
            )
    return policy, problems


def convert_request_authn(obj: Obj) -> tuple[list[pb.JwtProvider], list[str]]:
    meta = obj.get("metadata") or {}
    origin = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
    providers, problems = [], []
    for rule in (obj.get("spec") or {}).get("jwtRules") or []:
        issuer = str(rule.get("issuer", ""))
        if not issuer:
            problems.append("a jwtRule without issuer is ignored")
            continue
        if not rule.get("jwks") and not rule.get("jwksUri"):
            problems.append(f"issuer {issuer}: neither jwks nor jwksUri; tokens from it are rejected")
        providers.append(
            pb.JwtProvider(
                issuer=issuer,
                audiences=_strs(rule.get("audiences")),
                jwks=str(rule.get("jwks") or ""),
                jwks_uri=str(rule.get("jwksUri") or ""),
                from_headers=[str(h.get("name", "")) for h in rule.get("fromHeaders") or [] if h.get("name")],
                from_params=_strs(rule.get("fromParams")),
                forward_original_token=bool(rule.get("forwardOriginalToken", False)),
                output_payload_to_header=str(rule.get("outputPayloadToHeader") or ""),
                origin=origin,
            )
        )
    return providers, problems
