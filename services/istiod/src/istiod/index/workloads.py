"""Pods, WorkloadEntries and ServiceEntry inline endpoints → ``Workload`` records (behaviour.md §5.2).

Each function takes the object plus what it was resolved against (services that select it, its waypoint,
its policy keys, its node's locality) and returns a record; the index does the fetching. Nothing here reads
global state, so each rule is testable with plain dicts.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from istiod.index import meta
from istiod.index.records import (
    NETWORK_MODE_HOST,
    NETWORK_MODE_STANDARD,
    STATUS_HEALTHY,
    STATUS_UNHEALTHY,
    TUNNEL_HBONE,
    TUNNEL_NONE,
    WORKLOAD_TYPE_POD,
    ApplicationTunnel,
    GatewayAddress,
    Locality,
    Port,
    Workload,
)
from istiod.index.services import MeshContext, k8s_hostname, port_number

Obj = dict[str, Any]
REDIRECTION = "ambient.istio.io/redirection"
TUNNEL_LABEL = "networking.istio.io/tunnel"
CANONICAL_NAME_LABELS = ("service.istio.io/canonical-name", "app.kubernetes.io/name", "app")
CANONICAL_REVISION_LABELS = ("service.istio.io/canonical-revision", "app.kubernetes.io/version", "version")
ServicesMap = tuple[tuple[str, tuple[Port, ...]], ...]
# what a malformed sibling object (a Service or ServiceEntry with fields of the wrong shape) can raise
MALFORMED = (AttributeError, KeyError, TypeError, ValueError, OverflowError)
log = logging.getLogger("index")


def pod_uid(ctx: MeshContext, namespace: str, name: str) -> str:
    return f"{ctx.cluster_id}//Pod/{namespace}/{name}"  # empty API group ⇒ double slash (§5.2)


def pod_ips(pod: Obj) -> list[str]:
    status = pod.get("status") or {}
    ips = [str(p.get("ip")) for p in status.get("podIPs") or () if p.get("ip")]
    return ips or ([str(status["podIP"])] if status.get("podIP") else [])


def is_terminal(pod: Obj) -> bool:
    return (pod.get("status") or {}).get("phase") in {"Succeeded", "Failed"}


def is_ready(pod: Obj) -> bool:
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or ()
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _first_label(labels: Mapping[str, str], keys: Sequence[str], default: str) -> str:
    # the first label present wins, even with an empty value (upstream lookupLabelValue)
    return next((labels[k] for k in keys if k in labels), default)


def canonical(labels: Mapping[str, str], workload_name: str) -> tuple[str, str]:
    return (_first_label(labels, CANONICAL_NAME_LABELS, workload_name),
            _first_label(labels, CANONICAL_REVISION_LABELS, "latest"))  # fmt: skip


def workload_name(pod: Obj) -> str:
    """The owning workload's name, as upstream's GetDeployMetaFromPod: only for a pod with a generated name
    and a *controller* owner; Deployment for a ReplicaSet carrying the pod-template-hash, CronJob for a Job
    named ``<cronjob>-<8 to 10 digits>``, else the owner; otherwise the pod's own name."""
    metadata = meta.as_map(pod.get("metadata"))
    if not metadata.get("generateName"):
        return meta.name(pod)
    owners = [meta.as_map(o) for o in meta.as_list(metadata.get("ownerReferences"))]
    owner = next((o for o in owners if o.get("controller") is True), None)
    if owner is None:
        return meta.name(pod)
    name, kind = str(owner.get("name", "")), owner.get("kind")
    if kind == "ReplicaSet":
        template_hash = meta.labels(pod).get("pod-template-hash")
        if template_hash and name.endswith(f"-{template_hash}"):
            return name[: -len(template_hash) - 1]
    if kind == "Job":
        base, _, suffix = name.rpartition("-")
        if base and suffix.isascii() and suffix.isdigit() and 8 <= len(suffix) <= 10:
            return base  # a CronJob's Job is named <cronjob>-<scheduled time>
    return name


def tunnel(labels: Mapping[str, str], annotations: Mapping[str, str]) -> tuple[int, bool]:
    """(tunnel_protocol, native_tunnel): HBONE iff redirection is enabled, or native via the label."""
    if "http" in labels.get(TUNNEL_LABEL, "").split(","):  # a comma-separated list (model.SupportsTunnel)
        return TUNNEL_HBONE, True
    if annotations.get(REDIRECTION) == "enabled":
        return TUNNEL_HBONE, False
    return TUNNEL_NONE, False


def container_port(pod: Obj, port_name: str) -> int | None:
    """The TCP container port named ``port_name`` (upstream's FindPortName: TCP only, containers only)."""
    for container in meta.as_list(meta.spec(pod).get("containers")):
        for port in meta.as_list(meta.as_map(container).get("ports")):
            if port.get("name") == port_name and port.get("protocol", "TCP") == "TCP":
                return port_number(port.get("containerPort"))
    return None


def k8s_service_ports(svc: Obj, pod: Obj | None) -> tuple[Port, ...]:
    """Service ports with named targetPorts resolved against ``pod``; a name missing there is omitted."""
    out = []
    for port in meta.spec(svc).get("ports") or ():
        number = port_number(port.get("port"))
        if number is None:
            continue
        target = port.get("targetPort", number)
        if meta.number(target) is not None:
            out.append(Port(number, port_number(target) or 0))
            continue
        resolved = container_port(pod, str(target)) if pod is not None else None
        if resolved is not None:
            out.append(Port(number, resolved))
    return tuple(out)


def selects(svc: Obj, labels: Mapping[str, str]) -> bool:
    """A Service selects by a non-empty ``spec.selector`` (selector-less ones use EndpointSlices)."""
    selector = meta.spec(svc).get("selector")
    return (
        bool(selector)
        and meta.spec(svc).get("type") != "ExternalName"
        and meta.matches_labels(selector, labels)
    )


def se_selects(se: Obj, labels: Mapping[str, str]) -> bool:
    selector = meta.spec(se).get("workloadSelector")
    return selector is not None and meta.matches_labels(selector.get("labels") or {}, labels)


def se_ports_for(se: Obj, named_targets: Mapping[str, Any]) -> tuple[Port, ...]:
    """ServiceEntry ports for one endpoint: its ``ports[name]`` override, else targetPort, else the number."""
    out = []
    for port in meta.spec(se).get("ports") or ():
        number = port_number(port.get("number"))
        if number is None:
            continue
        target = named_targets.get(str(port.get("name", ""))) or port.get("targetPort")
        out.append(Port(number, port_number(target) or number))
    return tuple(out)


def services_map(
    ctx: MeshContext,
    pod: Obj | None,
    *,
    labels: Mapping[str, str],
    k8s_services: Iterable[Obj],
    service_entries: Iterable[Obj],
    named_targets: Mapping[str, Any] | None = None,
) -> ServicesMap:
    """``"<ns>/<hostname>" → ports`` for every selecting Service and ServiceEntry host (§5.2)."""
    out: dict[str, tuple[Port, ...]] = {}
    for svc in k8s_services:
        try:
            if selects(svc, labels):
                key = f"{meta.namespace(svc)}/{k8s_hostname(meta.name(svc), meta.namespace(svc), ctx)}"
                out[key] = k8s_service_ports(svc, pod)
        except MALFORMED as exc:  # one malformed Service must not take the workload down with it
            _skip("Service", svc, exc)
    for se in service_entries:
        try:
            if se_selects(se, labels):
                ports = se_ports_for(se, meta.as_map(named_targets))
                for host in meta.as_list(meta.spec(se).get("hosts")):
                    out[f"{meta.namespace(se)}/{host}"] = ports
        except MALFORMED as exc:
            _skip("ServiceEntry", se, exc)
    return tuple(sorted(out.items()))


def _skip(kind: str, obj: Obj, exc: Exception) -> None:
    key = f"{meta.namespace(obj)}/{meta.name(obj)}"
    log.debug(
        "malformed object ignored for a workload", extra={"kv": {"kind": kind, "key": key, "error": str(exc)}}
    )


def pod_workload(
    pod: Obj,
    ctx: MeshContext,
    *,
    services: ServicesMap = (),
    waypoint: GatewayAddress | None = None,
    application_tunnel: ApplicationTunnel | None = None,
    policies: tuple[str, ...] = (),
    locality: Locality | None = None,
) -> Workload | None:
    """The Workload of a pod, or None for terminal pods and pods without an IP (§5.2)."""
    ips = pod_ips(pod)
    if is_terminal(pod) or not ips:
        return None
    name, ns, labels, spec = meta.name(pod), meta.namespace(pod), meta.labels(pod), meta.spec(pod)
    protocol, native = tunnel(labels, meta.annos(pod))
    owner = workload_name(pod)
    canonical_name, canonical_revision = canonical(labels, owner)
    return Workload(
        uid=pod_uid(ctx, ns, name), name=name, namespace=ns, addresses=_packed(ips), network=ctx.network,
        tunnel_protocol=protocol, native_tunnel=native, trust_domain=ctx.wire_trust_domain,
        service_account=str(spec.get("serviceAccountName") or ""), waypoint=waypoint,
        node=str(spec.get("nodeName") or ""), canonical_name=canonical_name,
        canonical_revision=canonical_revision, workload_type=WORKLOAD_TYPE_POD, workload_name=owner,
        application_tunnel=application_tunnel, services=services, authorization_policies=policies,
        status=STATUS_HEALTHY if is_ready(pod) else STATUS_UNHEALTHY, cluster_id=ctx.cluster_id,
        locality=locality,
        network_mode=NETWORK_MODE_HOST if spec.get("hostNetwork") else NETWORK_MODE_STANDARD,
    )  # fmt: skip


def _packed(ips: Iterable[str]) -> tuple[bytes, ...]:
    out = []
    for ip in ips:
        try:
            out.append(ipaddress.ip_address(ip).packed)
        except ValueError:
            continue
    return tuple(out)


def node_locality(node: Obj | None) -> Locality | None:
    labels = meta.labels(node)
    region, zone = (
        labels.get("topology.kubernetes.io/region", ""),
        labels.get("topology.kubernetes.io/zone", ""),
    )
    subzone = labels.get("topology.istio.io/subzone", "")
    return Locality(region, zone, subzone) if (region or zone or subzone) else None


def _locality_string(text: str) -> Locality | None:
    parts = [*text.split("/"), "", "", ""][:3]
    return Locality(*parts) if text else None


def workload_entry_labels(we: Obj) -> dict[str, str]:
    return {**meta.labels(we), **(meta.spec(we).get("labels") or {})}


def workload_entry_workload(
    we: Obj,
    ctx: MeshContext,
    *,
    services: ServicesMap = (),
    waypoint: GatewayAddress | None = None,
    policies: tuple[str, ...] = (),
) -> Workload:
    """A WorkloadEntry: always HEALTHY; a non-IP address is sent as ``hostname`` (§5.2)."""
    name, ns, spec = meta.name(we), meta.namespace(we), meta.spec(we)
    labels = workload_entry_labels(we)
    address = str(spec.get("address") or "")
    packed = _packed([address]) if address else ()
    protocol, native = tunnel(labels, meta.annos(we))
    canonical_name, canonical_revision = canonical(labels, name)
    return Workload(
        uid=f"{ctx.cluster_id}/networking.istio.io/WorkloadEntry/{ns}/{name}", name=name, namespace=ns,
        addresses=packed, hostname="" if packed else address, network=str(spec.get("network") or ctx.network),
        tunnel_protocol=protocol, native_tunnel=native, trust_domain=ctx.wire_trust_domain,
        service_account=str(spec.get("serviceAccount") or ""), waypoint=waypoint,
        canonical_name=canonical_name, canonical_revision=canonical_revision, workload_type=WORKLOAD_TYPE_POD,
        workload_name=name, services=services, authorization_policies=policies, status=STATUS_HEALTHY,
        cluster_id=ctx.cluster_id, locality=_locality_string(str(spec.get("locality") or "")),
    )  # fmt: skip


def service_entry_workloads(
    se: Obj, ctx: MeshContext, waypoint: GatewayAddress | None = None
) -> list[Workload]:
    """One Workload per inline endpoint of a ServiceEntry without a workloadSelector (§5.2)."""
    spec = meta.spec(se)
    if spec.get("workloadSelector") is not None:
        return []
    name, ns = meta.name(se), meta.namespace(se)
    out = []
    for endpoint in spec.get("endpoints") or ():
        address = str(endpoint.get("address") or "")
        if not address:
            continue
        labels = dict(endpoint.get("labels") or {})
        ports = se_ports_for(se, endpoint.get("ports") or {})
        services = tuple(sorted((f"{ns}/{host}", ports) for host in spec.get("hosts") or ()))
        packed = _packed([address])
        protocol, native = tunnel(labels, {})
        canonical_name, canonical_revision = canonical(labels, name)
        out.append(Workload(
            uid=f"{ctx.cluster_id}/networking.istio.io/ServiceEntry/{ns}/{name}/{address}", name=name,
            namespace=ns, addresses=packed, hostname="" if packed else address,
            network=str(endpoint.get("network") or ctx.network), tunnel_protocol=protocol,
            native_tunnel=native,
            trust_domain=ctx.wire_trust_domain, service_account=str(endpoint.get("serviceAccount") or ""),
            waypoint=waypoint, canonical_name=canonical_name, canonical_revision=canonical_revision,
            workload_type=WORKLOAD_TYPE_POD, workload_name=name, services=services, status=STATUS_HEALTHY,
            cluster_id=ctx.cluster_id, locality=_locality_string(str(endpoint.get("locality") or "")),
        ))  # fmt: skip
    return out
