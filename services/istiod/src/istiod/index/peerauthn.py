"""PeerAuthentication → ztunnel ``Authorization`` and the policy keys a workload carries (behaviour.md §5.6).

Two pure functions, both mirroring upstream's three levels (mesh = root namespace without selector,
namespace = no selector, workload = matching selector outside the root namespace; the oldest wins at each
level; UNSET inherits; DISABLE behaves like PERMISSIVE):

* :func:`convert_peer_authentication` turns a workload-selector PA with ``portLevelMtls`` into a DENY policy
  named ``converted_peer_authentication_<name>`` (merged with the parent STRICT when needed);
* :func:`effective_keys` names the converted policies one workload must list: the static strict policy
  ``<root>/istio_converted_static_strict`` and/or the workload's converted port-level policy.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from istiod.index import meta
from istiod.index.records import (
    ACTION_DENY,
    AUTHZ_SCOPE_WORKLOAD_SELECTOR,
    PRESENCE,
    Authorization,
    Clause,
    Match,
    Rule,
)

Obj = dict[str, Any]
STATIC_STRICT_NAME = "istio_converted_static_strict"
CONVERTED_PREFIX = "converted_peer_authentication_"
STRICT, PERMISSIVE, DISABLE, UNSET = "STRICT", "PERMISSIVE", "DISABLE", "UNSET"


def static_strict_policy(root_namespace: str) -> Authorization:
    """DENY anything without a peer identity; pushed only while some PeerAuthentication exists (§5.6)."""
    deny_plaintext = Rule((Clause((Match(not_principals=(PRESENCE,)),)),))
    return Authorization(STATIC_STRICT_NAME, root_namespace, AUTHZ_SCOPE_WORKLOAD_SELECTOR, ACTION_DENY,
                         (deny_plaintext,))  # fmt: skip


def converted_name(pa_name: str) -> str:
    return f"{CONVERTED_PREFIX}{pa_name}"


def well_formed(pa: Obj) -> bool:
    """Whether the PA has the shape upstream's typed client would decode; a malformed one is ignored
    everywhere (it neither selects, nor counts as a parent, nor converts)."""
    spec = (pa.get("spec") if isinstance(pa, dict) else None) or {}
    if not isinstance(spec, dict):
        return False
    selector, mtls, ports = spec.get("selector"), spec.get("mtls"), spec.get("portLevelMtls")
    return (
        (selector is None or (isinstance(selector, dict)
                              and isinstance(selector.get("matchLabels") or {}, dict)))
        and (mtls is None or isinstance(mtls, dict))
        and (ports is None or (isinstance(ports, dict)
                               and all(v is None or isinstance(v, dict) for v in ports.values())))
    )  # fmt: skip


def mode(mtls: Obj | None) -> str:
    value = str(meta.as_map(mtls).get("mode") or UNSET)
    return value if value in {STRICT, PERMISSIVE, DISABLE} else UNSET


def _lax(value: str) -> bool:
    return value in {PERMISSIVE, DISABLE}


def _created(pa: Obj) -> str:
    # RFC 3339 timestamps in UTC sort lexically; the name breaks ties deterministically.
    created = meta.as_map(pa.get("metadata")).get("creationTimestamp", "")
    return f"{created}\x00{meta.namespace(pa)}/{meta.name(pa)}"


def oldest(pas: Iterable[Obj]) -> Obj | None:
    return min(pas, key=_created, default=None)


def has_selector(pa: Obj) -> bool:
    selector = meta.as_map(meta.spec(pa).get("selector"))
    return bool(selector.get("matchLabels"))


def _port_modes(spec: Obj) -> list[tuple[int, str]]:
    out = []
    for port, mtls in meta.as_map(spec.get("portLevelMtls")).items():
        number = meta.number(str(port))
        if number is not None:
            out.append((number, mode(mtls)))
    return sorted(out)


def _mode_of(pa: Obj | None) -> str:
    return mode(meta.spec(pa).get("mtls")) if pa is not None else UNSET


def convert_peer_authentication(
    pa: Obj, root_namespace: str, namespace_pa: Obj | None, root_pa: Obj | None
) -> Authorization | None:
    """The converted DENY policy of a workload-selector PA with port-level mTLS, or None (§5.6)."""
    spec, namespace = meta.spec(pa), meta.namespace(pa)
    if (
        not well_formed(pa)
        or namespace == root_namespace
        or spec.get("selector") is None
        or not spec.get("portLevelMtls")
    ):
        return None
    top = mode(spec.get("mtls"))
    ns_mode, root_mode = _mode_of(namespace_pa), _mode_of(root_pa)
    # A STRICT port needs no group of its own when a parent already enforces STRICT. Upstream's Go condition
    # (authorization.go) reads `A || (B && C || D && E && F)`, which by && / || precedence also skips the
    # port for a PERMISSIVE/DISABLE workload under a STRICT mesh, leaving that port unenforced. We apply the
    # evident intent (UNSET guards both inherited cases), as §5.6 states it: PERMISSIVE + port STRICT ⇒ one
    # group per strict port.
    parent_strict = top == STRICT or (
        top == UNSET
        and (
            (namespace_pa is not None and ns_mode == STRICT)
            or ((namespace_pa is None or ns_mode == UNSET) and root_pa is not None and root_mode == STRICT)
        )
    )
    # the mode an UNSET workload inherits: the namespace's unless it is UNSET too, then the mesh's. Upstream
    # tests `nsCfg != nil && !strict(ns)` here, so a UNSET namespace PA under a STRICT mesh drops the
    # PERMISSIVE port *and* (effective_keys) the static strict key: the whole workload fails open. §5.6
    # states the rule by the effective ns/mesh mode, which we follow.
    inherited_strict = (ns_mode == STRICT) if ns_mode != UNSET else (root_mode == STRICT)
    clauses: list[Clause] = []
    if top == STRICT:
        clauses.append(Clause((Match(not_principals=(PRESENCE,)),)))
    groups: list[Rule] = []
    found_lax = False
    for port, port_mode in _port_modes(spec):
        if port_mode == STRICT:
            if parent_strict:
                continue  # the parent policy already enforces it
            # groups are OR-ed: one per strict port
            groups.append(Rule((Clause((Match(not_principals=(PRESENCE,), destination_ports=(port,)),)),)))
        elif _lax(port_mode):
            if _lax(top):
                continue
            if top == UNSET and not inherited_strict:
                continue  # nothing STRICT to make an exception from
            found_lax = True
            # deny when the port is NOT this one (the exemption); one group AND-s these clauses (§5.6)
            clauses.append(Clause((Match(not_destination_ports=(port,)),)))
    if top == STRICT and not found_lax:
        return None  # all ports strict: the static strict policy covers it
    if not clauses and not groups:
        return None
    merge_strict = (
        root_pa is not None and root_mode == STRICT and (namespace_pa is None or ns_mode in {UNSET, STRICT})
    ) or (namespace_pa is not None and ns_mode == STRICT)
    if merge_strict and found_lax:
        clauses.append(Clause((Match(not_principals=(PRESENCE,)),)))
    if clauses:
        groups.append(Rule(tuple(clauses)))
    name = converted_name(meta.name(pa))
    return Authorization(name, namespace, AUTHZ_SCOPE_WORKLOAD_SELECTOR, ACTION_DENY, tuple(groups))


def select_levels(
    root_namespace: str, applicable: Sequence[Obj]
) -> tuple[Obj | None, Obj | None, Obj | None]:
    """(mesh, namespace, workload) PAs from the PAs that apply to one workload (already selector-matched)."""
    mesh = oldest(p for p in applicable if not has_selector(p) and _ns(p) == root_namespace)
    namespace = oldest(p for p in applicable if not has_selector(p) and _ns(p) != root_namespace)
    workload = oldest(p for p in applicable if has_selector(p) and _ns(p) != root_namespace)
    return mesh, namespace, workload


def _ns(pa: Obj) -> str:
    return meta.namespace(pa)


def effective_keys(root_namespace: str, applicable: Sequence[Obj]) -> tuple[str, ...]:
    """Sorted converted-policy keys for one workload, from the PAs in its namespace and the root namespace
    that apply to it (no selector, or a selector matching its labels)."""
    mesh, namespace, workload = select_levels(root_namespace, applicable)
    strict = _mode_of(mesh) == STRICT if mesh is not None else False
    if namespace is not None and _mode_of(namespace) != UNSET:
        strict = _mode_of(namespace) == STRICT
    port_key = ""
    if workload is not None:
        spec = workload.get("spec") or {}
        top = mode(spec.get("mtls"))
        if top == STRICT:
            strict = True
        if _lax(top):
            strict = False
        modes = [m for _, m in _port_modes(spec)] if spec.get("portLevelMtls") else None
        if modes is not None:
            key = f"{_ns(workload)}/{converted_name(meta.name(workload))}"
            if top == STRICT:
                if any(_lax(m) for m in modes):
                    port_key, strict = key, False  # the converted policy carries STRICT plus the exception
            elif _lax(top):
                if STRICT in modes:
                    port_key = key
            elif strict:
                # upstream checks PERMISSIVE only here, not DISABLE (authorization.go, UNSET branch)
                if PERMISSIVE in modes:
                    port_key, strict = key, False
            elif STRICT in modes:
                port_key = key
    keys = set()
    if strict:
        keys.add(f"{root_namespace}/{STATIC_STRICT_NAME}")
    if port_key:
        keys.add(port_key)
    return tuple(sorted(keys))
