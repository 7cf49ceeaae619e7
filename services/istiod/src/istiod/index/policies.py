"""Which Authorization resources exist, and which keys a workload lists (behaviour.md §5.5 to §5.7).

Pure glue over :mod:`.authz` and :mod:`.peerauthn`, shared by the index and the golden-file tests so both
exercise exactly one code path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from istiod.index import meta, peerauthn
from istiod.index.authz import ConvertedPolicy, convert_authorization_policy
from istiod.index.records import AUTHZ_SCOPE_WORKLOAD_SELECTOR, Authorization

Obj = dict[str, Any]


def namespace_level(pas: Iterable[Obj], namespace: str) -> Obj | None:
    """The oldest selector-less PA of ``namespace`` (the parent used when converting a workload PA)."""
    return peerauthn.oldest(
        p
        for p in pas
        if meta.namespace(p) == namespace
        and meta.spec(p).get("selector") is None
        and peerauthn.well_formed(p)
    )


def converted_peer_authentications(pas: Sequence[Obj], root_namespace: str) -> list[Authorization]:
    """Every PA-derived resource: the converted port-level policies, plus the static strict policy while at
    least one PeerAuthentication exists (§5.6)."""
    pas = [pa for pa in pas if peerauthn.well_formed(pa)]
    out = []
    for pa in pas:
        ns = meta.namespace(pa)
        converted = peerauthn.convert_peer_authentication(
            pa, root_namespace, namespace_level(pas, ns), namespace_level(pas, root_namespace)
        )
        if converted is not None:
            out.append(converted)
    if pas:
        out.append(peerauthn.static_strict_policy(root_namespace))
    return out


def selector_policy_applies(
    policy: ConvertedPolicy, namespace: str, labels: Mapping[str, str], root: str
) -> bool:
    auth = policy.authorization
    if auth is None or auth.scope != AUTHZ_SCOPE_WORKLOAD_SELECTOR or policy.selector is None:
        return False
    return auth.namespace in {namespace, root} and meta.matches_labels(dict(policy.selector), labels)


def applicable_peer_authentications(
    pas: Iterable[Obj], namespace: str, labels: Mapping[str, str], root: str
) -> list[Obj]:
    """The PAs upstream fetches for a workload: the root namespace's selector-less ones, and those of the
    workload's namespace with no selector or a matching one (a root-namespace PA with a selector, even an
    empty one, applies only to workloads in the root namespace)."""
    out = []
    for pa in pas:
        if not peerauthn.well_formed(pa):
            continue
        ns, selector = meta.namespace(pa), meta.spec(pa).get("selector")
        mesh_wide = ns == root and selector is None
        if mesh_wide or (
            ns == namespace and (selector is None or meta.matches_labels(selector.get("matchLabels"), labels))
        ):
            out.append(pa)
    return out


def workload_policy_keys(
    namespace: str,
    labels: Mapping[str, str],
    converted_aps: Iterable[ConvertedPolicy],
    pas: Iterable[Obj],
    root: str,
) -> tuple[str, ...]:
    """§5.7: sorted selector-AP keys, then the converted PA keys (each part sorted on its own)."""
    selector_keys = sorted(
        p.authorization.resource_name
        for p in converted_aps
        if p.authorization is not None and selector_policy_applies(p, namespace, labels, root)
    )
    pa_keys = peerauthn.effective_keys(root, applicable_peer_authentications(pas, namespace, labels, root))
    return (*selector_keys, *pa_keys)


def convert_all(aps: Iterable[Obj], root: str, dry_run_enabled: bool = False) -> list[ConvertedPolicy]:
    return [convert_authorization_policy(ap, root, dry_run_enabled) for ap in aps]
