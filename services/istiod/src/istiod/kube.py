"""Informers for every kind the ambient index reads, feeding its input collections (behaviour.md §5.1).

Istio CRDs and the Gateway API are *optional* kinds: a cluster without them still syncs (empty), so
readiness does not hang on a missing CRD. ``managedFields`` are dropped on arrival (they are most of a
Pod's bytes and nothing reads them).
"""

from __future__ import annotations

from collections.abc import Callable

from meshkit.k8s import Event, EventType, Informer, KubeClient, Obj
from meshkit.k8s import resources as r

from istiod.index.ambient import AmbientIndex

KINDS: dict[str, tuple[r.Resource, bool]] = {
    "namespaces": (r.NAMESPACES, False),
    "nodes": (r.NODES, False),
    "pods": (r.PODS, False),
    "services": (r.SERVICES, False),
    "endpointslices": (r.ENDPOINTSLICES, False),
    "serviceentries": (r.SERVICEENTRIES, True),
    "workloadentries": (r.WORKLOADENTRIES, True),
    "authorizationpolicies": (r.AUTHORIZATIONPOLICIES, True),
    "peerauthentications": (r.PEERAUTHENTICATIONS, True),
    "gateways": (r.GATEWAYS, True),
    "gatewayclasses": (r.GATEWAYCLASSES, True),
}


def _slim(obj: Obj) -> Obj:
    metadata = obj.get("metadata")
    if isinstance(metadata, dict):  # anything else is left for the derivations to refuse, alone
        metadata.pop("managedFields", None)
    return obj


def feeder(index: AmbientIndex, kind: str) -> Callable[[list[Event]], None]:
    """A batch handler applying informer events to ``index.inputs[kind]`` in one step."""
    target = index.inputs[kind]

    def handle(batch: list[Event]) -> None:
        target.apply({e.key: None if e.type is EventType.DELETED else _slim(e.obj) for e in batch})

    return handle


def informers(client: KubeClient, index: AmbientIndex) -> dict[str, Informer]:
    out = {}
    for kind, (resource, optional) in KINDS.items():
        informer = Informer(client, resource, optional=optional)
        informer.subscribe(feeder(index, kind))
        out[kind] = informer
    return out
