"""EndpointSlices for Services without a selector (behaviour.md §5.2), as pure functions.

Two uses: a pod referenced by a selector-less Service's slice (``targetRef`` kind Pod) lists that Service in
its ``services`` map; an endpoint with **no** Pod targetRef becomes its own Workload (uid
``<cluster>/discovery.k8s.io/EndpointSlice/<ns>/<slice>/<ip>``, NetworkMode HOST_NETWORK, TCP ports only, no
policies or waypoint).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from istiod.index import meta
from istiod.index.records import (
    NETWORK_MODE_HOST,
    STATUS_HEALTHY,
    STATUS_UNHEALTHY,
    WORKLOAD_TYPE_POD,
    Port,
    Workload,
)
from istiod.index.services import MeshContext, k8s_hostname

Obj = dict[str, Any]
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def service_key(slice_: Obj) -> str:
    name = meta.labels(slice_).get(SERVICE_NAME_LABEL, "")
    return f"{meta.namespace(slice_)}/{name}" if name else ""


def pod_refs(slice_: Obj) -> list[str]:
    """``ns/pod`` for every endpoint whose targetRef is a Pod."""
    out = []
    for endpoint in meta.as_list(slice_.get("endpoints")):
        ref = meta.as_map(meta.as_map(endpoint).get("targetRef"))
        if ref.get("kind") == "Pod" and ref.get("name"):
            out.append(f"{ref.get('namespace') or meta.namespace(slice_)}/{ref['name']}")
    return out


def selectorless(svc: Obj | None) -> bool:
    return (
        svc is not None
        and not meta.spec(svc).get("selector")
        and meta.spec(svc).get("type") != "ExternalName"
    )


def slice_ports(svc: Obj, slice_: Obj, tcp_only: bool = False) -> tuple[Port, ...]:
    """Service port → the slice's port of the same name (a single unnamed port matches by itself)."""
    by_name = {str(p.get("name") or ""): p for p in slice_.get("ports") or ()}
    out = []
    for port in meta.spec(svc).get("ports") or ():
        match = by_name.get(str(port.get("name") or ""))
        if match is None or match.get("port") is None:
            continue
        if tcp_only and (match.get("protocol") or "TCP") != "TCP":
            continue
        out.append(Port(int(port.get("port", 0)), int(match["port"])))
    return tuple(out)


def pod_service_entries(
    pod_key: str, slices: Iterable[Obj], services: dict[str, Obj], ctx: MeshContext
) -> dict[str, tuple[Port, ...]]:
    """``services`` map entries a pod gets from selector-less Services' slices that reference it."""
    out: dict[str, tuple[Port, ...]] = {}
    for slice_ in slices:
        svc = services.get(service_key(slice_))
        if not selectorless(svc) or pod_key not in pod_refs(slice_):
            continue
        assert svc is not None
        key = f"{meta.namespace(svc)}/{k8s_hostname(meta.name(svc), meta.namespace(svc), ctx)}"
        out[key] = out.get(key, ()) + slice_ports(svc, slice_)
    return out


def endpoint_workloads(slice_: Obj, svc: Obj | None, ctx: MeshContext) -> list[Workload]:
    """Workloads for the endpoints of ``slice_`` that are not Pods."""
    if svc is None or not selectorless(svc):
        return []
    ns = meta.namespace(slice_)
    key = f"{ns}/{k8s_hostname(meta.name(svc), ns, ctx)}"
    ports = slice_ports(svc, slice_, tcp_only=True)
    out = []
    for endpoint in slice_.get("endpoints") or ():
        if (endpoint.get("targetRef") or {}).get("kind") == "Pod":
            continue
        ready = (endpoint.get("conditions") or {}).get("ready")
        for address in endpoint.get("addresses") or ():
            try:
                packed = ipaddress.ip_address(str(address)).packed
            except ValueError:
                continue
            out.append(Workload(
                uid=f"{ctx.cluster_id}/discovery.k8s.io/EndpointSlice/{ns}/{meta.name(slice_)}/{address}",
                name=meta.name(slice_), namespace=ns, addresses=(packed,), network=ctx.network,
                trust_domain=ctx.wire_trust_domain, workload_type=WORKLOAD_TYPE_POD,
                node=str(endpoint.get("nodeName") or ""), services=((key, ports),),
                status=STATUS_UNHEALTHY if ready is False else STATUS_HEALTHY, cluster_id=ctx.cluster_id,
                network_mode=NETWORK_MODE_HOST,
            ))  # fmt: skip
    return out
