"""Hypothesis: the incrementally maintained index always equals one built from scratch from the same inputs,
whatever order objects arrive, change and go. This is what the dependency tracking must guarantee."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from istiod.index.ambient import AmbientIndex
from istiod.index.services import MeshContext

NAMESPACES = ["a", "b", "istio-system"]
APPS = ["web", "db"]
READY = [{"type": "Ready", "status": "True"}]


def _pod(ns: str, name: str, app: str, ip: int) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
            "spec": {"nodeName": "n1", "containers": [{"ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": f"10.0.0.{ip}", "conditions": READY}}  # fmt: skip


def _service(ns: str, name: str, app: str, waypoint: bool) -> dict[str, Any]:
    labels = {"istio.io/use-waypoint": "wp"} if waypoint else {}
    return {"metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"selector": {"app": app}, "clusterIP": "10.96.0.1",
                     "ports": [{"port": 80, "targetPort": "http"}]}}  # fmt: skip


def _namespace(ns: str, waypoint: bool) -> dict[str, Any]:
    return {"metadata": {"name": ns, "labels": {"istio.io/use-waypoint": "wp"} if waypoint else {}}}


def _gateway(ns: str, ready: bool, kind: str) -> dict[str, Any]:
    status = {"addresses": [{"type": "Hostname", "value": f"wp.{ns}.svc.cluster.local"}]} if ready else {}
    return {"metadata": {"name": "wp", "namespace": ns, "labels": {"istio.io/waypoint-for": kind}},
            "spec": {"gatewayClassName": "istio-waypoint", "listeners": []}, "status": status}  # fmt: skip


def _policy(ns: str, name: str, app: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"rules": [{"from": [{"source": {"namespaces": ["x"]}}]}]}
    if app is not None:
        spec["selector"] = {"matchLabels": {"app": app}}
    return {"metadata": {"name": name, "namespace": ns}, "spec": spec}


def _peer_auth(ns: str, name: str, mode: str, app: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"mtls": {"mode": mode}}
    if app is not None:
        spec["selector"] = {"matchLabels": {"app": app}}
        spec["portLevelMtls"] = {"8080": {"mode": "PERMISSIVE"}}
    created = f"2026-01-0{len(name) % 9 + 1}T00:00:00Z"
    return {"metadata": {"name": name, "namespace": ns, "creationTimestamp": created}, "spec": spec}


ns_st = st.sampled_from(NAMESPACES)
app_st = st.sampled_from(APPS)
MODES = st.sampled_from(["STRICT", "PERMISSIVE", "UNSET"])
change = st.one_of(
    st.builds(lambda ns, i, app, ip: ("pods", f"{ns}/p{i}", _pod(ns, f"p{i}", app, ip)),
              ns_st, st.integers(0, 3), app_st, st.integers(1, 5)),
    st.builds(lambda ns, i, app, w: ("services", f"{ns}/s{i}", _service(ns, f"s{i}", app, w)),
              ns_st, st.integers(0, 2), app_st, st.booleans()),
    st.builds(lambda ns, w: ("namespaces", ns, _namespace(ns, w)), ns_st, st.booleans()),
    st.builds(lambda ns, r, k: ("gateways", f"{ns}/wp", _gateway(ns, r, k)), ns_st, st.booleans(),
              st.sampled_from(["service", "workload", "all"])),
    st.builds(lambda ns, i, app: ("authorizationpolicies", f"{ns}/ap{i}", _policy(ns, f"ap{i}", app)),
              ns_st, st.integers(0, 2), st.one_of(st.none(), app_st)),
    st.builds(lambda ns, i, m, app: ("peerauthentications", f"{ns}/pa{i}", _peer_auth(ns, f"pa{i}", m, app)),
              ns_st, st.integers(0, 1), MODES, st.one_of(st.none(), app_st)),
)  # fmt: skip
op = st.tuples(change, st.booleans())  # (object, delete it instead)


def snapshot(index: AmbientIndex) -> tuple[dict[str, Any], dict[str, Any]]:
    return dict(index.addresses.items()), dict(index.authorizations.items())


@settings(max_examples=120, deadline=None)
@given(st.lists(st.lists(op, min_size=1, max_size=4), max_size=12))
def test_incremental_equals_from_scratch(
    batches: list[list[tuple[tuple[str, str, dict[str, Any]], bool]]],
) -> None:
    live = AmbientIndex(MeshContext())
    world: dict[str, dict[str, dict[str, Any]]] = {}
    for batch in batches:
        updates: dict[str, dict[str, Any]] = {}
        for (kind, key, obj), delete in batch:
            updates.setdefault(kind, {})[key] = None if delete else obj
        for kind, changes in updates.items():
            live.inputs[kind].apply(changes)
            table = world.setdefault(kind, {})
            for key, obj in changes.items():
                if obj is None:
                    table.pop(key, None)
                else:
                    table[key] = obj
    fresh = AmbientIndex(MeshContext())
    for kind in (
        "namespaces",
        "gateways",
        "services",
        "authorizationpolicies",
        "peerauthentications",
        "pods",
    ):
        fresh.inputs[kind].apply(world.get(kind, {}))
    assert snapshot(live) == snapshot(fresh)
