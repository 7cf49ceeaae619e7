"""L7 AuthorizationPolicy evaluation: CUSTOM → DENY → ALLOW, Istio's matching rules."""

from __future__ import annotations

from meshproto.ambient.waypoint.v1 import waypoint_pb2 as pb
from waypoint.authz import AuthzContext, compile_policy, evaluate


def ctx(  # noqa: PLR0917
    path: str = "/",
    method: str = "GET",
    principal: str | None = "cluster.local/ns/default/sa/sleep",
    headers: dict[str, str] | None = None,
    req_principal: str | None = None,
    claims: dict | None = None,
    source_ip: str = "10.0.0.5",
) -> AuthzContext:
    return AuthzContext(
        principal,
        source_ip,
        "10.96.0.10",
        80,
        "reviews",
        method,
        path,
        headers or {},
        req_principal,
        claims or {},
    )


def policy(action: int, *rules: pb.Rule, name: str = "p") -> pb.Policy:
    return pb.Policy(name=name, namespace="default", action=action, rules=list(rules))  # type: ignore[arg-type]


def test_no_policies_allows() -> None:
    assert evaluate([], ctx()).allowed


def test_deny_on_path_others_pass() -> None:
    p = compile_policy(policy(pb.DENY, pb.Rule(operations=[pb.Operation(paths=["/admin*"])])))
    assert not evaluate([p], ctx("/admin/users")).allowed
    assert evaluate([p], ctx("/productpage")).allowed


def test_allow_policies_require_a_match() -> None:
    p = compile_policy(
        policy(
            pb.ALLOW,
            pb.Rule(
                sources=[pb.Source(principals=["cluster.local/ns/default/sa/sleep"])],
                operations=[pb.Operation(methods=["GET"])],
            ),
        )
    )
    assert evaluate([p], ctx()).allowed
    d = evaluate([p], ctx(method="POST"))
    assert not d.allowed
    assert "none matched" in d.reason
    assert not evaluate([p], ctx(principal="cluster.local/ns/other/sa/x")).allowed
    assert not evaluate([p], ctx(principal=None)).allowed


def test_allow_with_no_rules_denies_everything_and_empty_rule_allows_everything() -> None:
    assert not evaluate([compile_policy(policy(pb.ALLOW))], ctx()).allowed
    assert evaluate([compile_policy(policy(pb.ALLOW, pb.Rule()))], ctx()).allowed
    assert evaluate([compile_policy(policy(pb.DENY))], ctx()).allowed


def test_deny_beats_allow() -> None:
    allow = compile_policy(policy(pb.ALLOW, pb.Rule(), name="a"))
    deny = compile_policy(policy(pb.DENY, pb.Rule(sources=[pb.Source(namespaces=["default"])]), name="d"))
    d = evaluate([allow, deny], ctx())
    assert not d.allowed
    assert d.policy == "default/d"


def test_negative_fields_and_headers_and_claims() -> None:
    p = compile_policy(
        policy(
            pb.ALLOW,
            pb.Rule(
                operations=[pb.Operation(not_paths=["/private"], hosts=["REVIEWS"])],
                conditions=[
                    pb.Condition(key="request.headers[x-token]", values=["abc*"]),
                    pb.Condition(key="request.auth.claims[groups]", values=["admin"]),
                ],
            ),
        )
    )
    good = ctx(headers={"x-token": "abcdef"}, claims={"groups": ["dev", "admin"]})
    assert evaluate([p], good).allowed
    assert not evaluate(
        [p], ctx("/private", headers={"x-token": "abcdef"}, claims={"groups": ["admin"]})
    ).allowed
    assert not evaluate([p], ctx(headers={"x-token": "zzz"}, claims={"groups": ["admin"]})).allowed
    assert not evaluate([p], ctx(headers={"x-token": "abc"}, claims={"groups": ["dev"]})).allowed


def test_request_principals_and_ip_blocks() -> None:
    p = compile_policy(
        policy(
            pb.DENY,
            pb.Rule(
                sources=[pb.Source(not_request_principals=["*"])], operations=[pb.Operation(paths=["/jwt*"])]
            ),
        )
    )
    assert not evaluate([p], ctx("/jwt")).allowed
    assert evaluate([p], ctx("/jwt", req_principal="issuer/sub-1")).allowed
    ip = compile_policy(policy(pb.ALLOW, pb.Rule(sources=[pb.Source(ip_blocks=["10.0.0.0/24", "bogus"])])))
    assert evaluate([ip], ctx(source_ip="10.0.0.7")).allowed
    assert not evaluate([ip], ctx(source_ip="10.1.0.7")).allowed


def test_custom_and_audit_are_reported_dry_run_ignored() -> None:
    custom = compile_policy(
        pb.Policy(
            name="c",
            namespace="default",
            action=pb.CUSTOM,
            rules=[pb.Rule(operations=[pb.Operation(paths=["/ext"])])],
            provider=pb.ExtAuthz(name="ext", service="authz.svc", port=8000),
        )
    )
    audit = compile_policy(policy(pb.AUDIT, pb.Rule(), name="au"))
    dry = compile_policy(
        pb.Policy(name="dry", namespace="default", action=pb.DENY, rules=[pb.Rule()], dry_run=True)
    )
    d = evaluate([custom, audit, dry], ctx("/ext"))
    assert d.allowed
    assert d.custom == (custom,)
    assert d.audited == ("default/au",)
    assert custom.provider is not None
    assert custom.provider.port == 8000
    assert evaluate([custom], ctx("/other")).custom == ()


def test_unknown_when_key_errs_towards_denying() -> None:
    unknown = pb.Condition(key="experimental.envoy.filters.whatever[x]", values=["y"])
    deny = compile_policy(
        policy(pb.DENY, pb.Rule(operations=[pb.Operation(paths=["/a*"])], conditions=[unknown]))
    )
    assert not evaluate([deny], ctx("/a/b")).allowed  # a DENY rule is not silently switched off
    assert evaluate([deny], ctx("/other")).allowed  # the known parts still narrow it
    allow = compile_policy(policy(pb.ALLOW, pb.Rule(conditions=[unknown])))
    assert not evaluate([allow], ctx("/a/b")).allowed  # an ALLOW rule cannot be widened by it either
