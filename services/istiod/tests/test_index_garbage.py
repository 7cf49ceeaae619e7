"""A malformed object never breaks the index for the others (STYLE.md practice 7).

Each garbage object is fed next to good ones of every kind; the good outputs must be exactly what they are
without the garbage, and the encoded xDS resources must still build. Objects are shaped as the API server
could deliver them for CRDs with loose schemas (or as a fuzzing client might), not as valid specs.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from istiod.index.ambient import AmbientIndex
from istiod.index.records import Workload
from istiod.index.services import MeshContext
from istiod.status import ztunnel_condition
from istiod.xds.cache import ResourceCache
from meshkit.xds.types import ADDRESS_TYPE, AUTHORIZATION_TYPE

Obj = dict[str, Any]


def _meta(name: str, ns: str | None, labels: Any = None, **extra: Any) -> Obj:
    out: Obj = {"name": name, "labels": labels if labels is not None else {}}
    if ns:
        out["namespace"] = ns
    out.update(extra)
    return out


def _good() -> dict[str, list[Obj]]:
    ready = {"phase": "Running", "podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}
    return {
        "namespaces": [{"metadata": _meta("app", None)}, {"metadata": _meta("istio-system", None)}],
        "pods": [{"metadata": _meta("web", "app", {"app": "web"}),
                  "spec": {"nodeName": "n1",
                           "containers": [{"ports": [{"name": "http", "containerPort": 8080}]}]},
                  "status": ready}],
        "services": [{"metadata": _meta("web", "app"),
                      "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.1",
                               "ports": [{"port": 80, "targetPort": "http"}]}}],
        "authorizationpolicies": [{"metadata": _meta("allow", "app"),
                                   "spec": {"selector": {"matchLabels": {"app": "web"}}, "rules": [{}]}}],
        "peerauthentications": [{"metadata": _meta("strict", "istio-system",
                                                   creationTimestamp="2024-01-01T00:00:00Z"),
                                 "spec": {"mtls": {"mode": "STRICT"}}}],
    }  # fmt: skip


# (kind, garbage object); every one is in namespace "app" or cluster-scoped, next to the good objects
GARBAGE: list[tuple[str, Obj]] = [
    (
        "pods",
        {"metadata": _meta("g1", "app", {"app": "web"}), "spec": "nope", "status": {"podIP": "10.0.0.9"}},
    ),
    ("pods", {"metadata": _meta("g2", "app", ["not", "a", "map"]), "status": {"podIPs": "10.0.0.8"}}),
    (
        "pods",
        {
            "metadata": _meta("g3", "app", {"app": "x"}),
            "spec": {"containers": [{"ports": [{"name": "http", "containerPort": "eighty"}]}]},
            "status": {"podIP": "not-an-ip", "conditions": ["Ready"]},
        },
    ),
    ("services", {"metadata": _meta("g1", "app"), "spec": {"selector": ["app", "web"], "ports": "80"}}),
    (
        "services",
        {
            "metadata": _meta("g2", "app"),
            "spec": {"selector": {"app": "web"}, "ports": [{"port": "http", "targetPort": "²"}]},
        },
    ),
    (
        "services",
        {
            "metadata": _meta("g3", "app"),
            "spec": {"selector": {"app": "web"}, "ports": [{"port": -5, "targetPort": 70000}]},
        },
    ),
    ("authorizationpolicies", {"metadata": _meta("g1", "app"), "spec": {"rules": "all"}}),
    (
        "authorizationpolicies",
        {
            "metadata": _meta("g2", "app"),
            "spec": {
                "selector": {"matchLabels": ["app"]},
                "rules": [
                    {"to": [{"operation": {"ports": ["²", 7, None]}}], "from": ["x"], "when": [{"key": 3}]}
                ],
            },
        },
    ),
    ("authorizationpolicies", {"metadata": _meta("g3", "app"), "spec": {"selector": "web", "action": 7}}),
    ("peerauthentications", {"metadata": _meta("g1", "app"), "spec": {"mtls": "STRICT"}}),
    (
        "peerauthentications",
        {
            "metadata": _meta("g2", "app"),
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "portLevelMtls": {"²": {"mode": "STRICT"}, "80": "PERMISSIVE"},
            },
        },
    ),
    (
        "peerauthentications",
        {"metadata": _meta("g3", "app"), "spec": {"selector": ["app"], "portLevelMtls": []}},
    ),
    (
        "serviceentries",
        {
            "metadata": _meta("g1", "app"),
            "spec": {
                "hosts": "a.com",
                "ports": [{"number": "x"}],
                "endpoints": "1.2.3.4",
                "workloadSelector": {"labels": ["app"]},
            },
        },
    ),
    (
        "serviceentries",
        {
            "metadata": _meta("g2", "app"),
            "spec": {
                "hosts": ["b.com"],
                "ports": [{"number": 99999999999}],
                "endpoints": [{"address": "1.2.3.4", "ports": ["x"]}],
            },
        },
    ),
    (
        "workloadentries",
        {"metadata": _meta("g1", "app"), "spec": {"address": 5, "labels": "app=web", "ports": 1}},
    ),
    (
        "endpointslices",
        {
            "metadata": _meta("g1", "app", {"kubernetes.io/service-name": "web"}),
            "endpoints": [{"addresses": "10.0.0.7", "targetRef": "pod"}],
            "ports": 3,
        },
    ),
    (
        "gateways",
        {
            "metadata": _meta("g1", "app"),
            "spec": {"listeners": [{"port": "x"}]},
            "status": {"addresses": [{"value": "10.1.1.1"}]},
        },
    ),
    ("namespaces", {"metadata": _meta("app", None, "garbage")}),
    ("nodes", {"metadata": _meta("n1", None, {"topology.kubernetes.io/region": ["r"]})}),
]


def _key(obj: Obj) -> str:
    meta = obj["metadata"]
    return f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else str(meta["name"])


def _build(extra: tuple[str, Obj] | None) -> tuple[AmbientIndex, ResourceCache]:
    index = AmbientIndex(MeshContext())
    cache = ResourceCache()
    cache.watch(
        index.addresses, index.authorizations, lambda key: [r.resource_name for r in index.lookup(key)]
    )
    good = _good()
    if extra is not None and extra[0] == "namespaces":
        good["namespaces"] = [o for o in good["namespaces"] if _key(o) != _key(extra[1])]
    for kind, objs in good.items():
        index.inputs[kind].apply({_key(o): o for o in objs})
    if extra is not None:
        index.inputs[extra[0]].apply({_key(extra[1]): extra[1]})
    return index, cache


def _good_outputs(index: AmbientIndex, cache: ResourceCache) -> dict[str, Any]:
    pod_uid, svc = "Kubernetes//Pod/app/web", "app/web.app.svc.cluster.local"
    pod = index.addresses.get(pod_uid)
    if isinstance(pod, Workload):
        # a garbage Service that still selects the pod may add its own (empty) entry; the good one must stay
        pod = replace(pod, services=tuple((k, v) for k, v in pod.services if k == svc))
    return {
        "pod": pod,
        "service": index.addresses.get(svc),
        "authz": {k: index.authorizations.get(k)
                  for k in ("app/allow", "istio-system/istio_converted_static_strict")},
        "encoded": (cache.get(ADDRESS_TYPE, pod_uid) is not None, cache.get(ADDRESS_TYPE, svc) is not None,
                    cache.get(AUTHORIZATION_TYPE, "app/allow") is not None),
    }  # fmt: skip


@pytest.mark.parametrize("garbage", GARBAGE, ids=[f"{k}-{_key(o)}" for k, o in GARBAGE])
def test_garbage_object_leaves_the_others_intact(garbage: tuple[str, Obj]) -> None:
    baseline = _good_outputs(*_build(None))
    assert baseline["pod"] is not None
    assert baseline["encoded"] == (True, True, True)
    index, cache = _build(garbage)
    got = _good_outputs(index, cache)
    if garbage[0] in {"namespaces", "nodes"}:
        # a garbage namespace/node may only lose what it carries (labels, locality); the records still exist
        assert got["encoded"] == baseline["encoded"]
        assert got["authz"] == baseline["authz"]
        return
    if garbage[0] == "peerauthentications":
        # a garbage PA is still "a PeerAuthentication exists" (§5.6); the good workload keeps its keys
        assert got["authz"] == baseline["authz"]
        assert got["encoded"] == baseline["encoded"]
        return
    assert got == baseline
    # and removing the garbage again leaves the index as if it had never been there
    index.inputs[garbage[0]].apply({_key(garbage[1]): None})
    assert _good_outputs(index, cache) == baseline


def test_malformed_policy_gets_a_status_condition_not_a_crash() -> None:
    index, cache = _build(("authorizationpolicies", GARBAGE[6][1]))
    status = index.policy_statuses()["app/g1"]
    assert status.reason == "InvalidSpec"
    assert "expected a list" in status.message
    assert index.authorizations.get("app/g1") is None
    assert cache.get(AUTHORIZATION_TYPE, "app/g1") is None
    condition = ztunnel_condition(GARBAGE[6][1], index.converted_policies.get("app/g1"))
    assert condition is not None
    assert (condition.status, condition.reason) == (False, "InvalidSpec")
