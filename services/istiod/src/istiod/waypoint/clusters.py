"""Backend clusters for the waypoint config: a Service port (and subset) → endpoints + DestinationRule policy.

A cluster is named as upstream names them, ``inbound-vip|<port>|<subset or http>|<hostname>``. Endpoints are
the Service's ready pods (not terminating, with an IP) whose labels match the selector and the subset's
labels; the target port is resolved per pod (named ports through the containers). The DestinationRule
(oldest per host wins) contributes LB, outlier detection, TLS origination and connection-pool limits, each
taken with Istio's precedence: subset over top level, a matching ``portLevelSettings`` entry over its policy.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

from meshproto.ambient.waypoint.v1 import waypoint_pb2 as pb

from istiod.index import meta
from istiod.waypoint.routes import INVALID, parse_duration_ms

if TYPE_CHECKING:
    from istiod.waypoint.l7 import L7Inputs

Obj = dict[str, Any]

__all__ = ["ClusterBuilder", "Index", "pod_endpoint", "workload_name"]

LB = {
    "ROUND_ROBIN": pb.ROUND_ROBIN,
    "LEAST_REQUEST": pb.LEAST_REQUEST,
    "LEAST_CONN": pb.LEAST_REQUEST,
    "RANDOM": pb.RANDOM,
    "PASSTHROUGH": pb.PASSTHROUGH,
    "UNSPECIFIED": pb.LB_DEFAULT,
}


def _pod_ready(pod: Obj) -> bool:
    status = pod.get("status") or {}
    if (pod.get("metadata") or {}).get("deletionTimestamp") or not status.get("podIP"):
        return False
    if status.get("phase") in {"Succeeded", "Failed"}:
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def _target_port(svc_port: Obj, pod: Obj) -> int | None:
    target = svc_port.get("targetPort", svc_port.get("port"))
    if isinstance(target, int) or str(target).isdigit():
        return int(str(target))
    for c in (pod.get("spec") or {}).get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("name") == target:
                return int(p["containerPort"])
    return None


class Index:
    """Lookups over the inputs, built once per build."""

    def __init__(self, inputs: L7Inputs) -> None:
        self.inputs = inputs
        self.ns_labels = {meta.name(n): meta.labels(n) for n in inputs.namespaces}
        self.services = {
            f"{meta.name(s)}.{meta.namespace(s)}.svc.{inputs.domain_suffix}": s for s in inputs.services
        }
        self.pods_by_ns: dict[str, list[Obj]] = defaultdict(list)
        for pod in inputs.pods:
            self.pods_by_ns[meta.namespace(pod)].append(pod)
        self.drs: dict[str, Obj] = {}
        for dr in sorted(
            inputs.destinationrules, key=lambda d: str((d.get("metadata") or {}).get("creationTimestamp", ""))
        ):
            host = str(meta.spec(dr).get("host", ""))
            fq = f"{host}.{meta.namespace(dr)}.svc.{inputs.domain_suffix}" if "." not in host else host
            self.drs.setdefault(fq, dr)  # oldest wins, as upstream merges conflicting rules


class ClusterBuilder:
    """Creates clusters on demand while routes are converted."""

    def __init__(self, index: Index) -> None:
        self.index = index
        self.clusters: dict[str, pb.Cluster] = {}

    def __call__(self, host: str, port: int, subset: str) -> str | None:
        if host.startswith(INVALID):
            self.clusters.setdefault(host, pb.Cluster(name=host, hostname=host))
            return host
        svc = self.index.services.get(host)
        if svc is None:
            return None
        ports = meta.spec(svc).get("ports") or []
        svc_port = (
            next((p for p in ports if int(p.get("port", 0)) == port), None)
            if port
            else (ports[0] if ports else None)
        )
        if svc_port is None:
            return None
        port = int(svc_port["port"])
        name = f"inbound-vip|{port}|{subset or 'http'}|{host}"
        if name not in self.clusters:
            cluster = self._build(name, host, svc, svc_port, subset)
            if cluster is None:
                return None
            self.clusters[name] = cluster
        return name

    def _lb(self, cluster: pb.Cluster, dr: Obj | None, subset: Obj | None) -> None:
        policy = _setting(dr, subset, cluster.port, "loadBalancer") or {}
        if policy.get("simple"):
            cluster.lb = LB.get(str(policy["simple"]), pb.LB_DEFAULT)
        ch = policy.get("consistentHash") or {}
        if ch:
            cluster.lb = pb.CONSISTENT_HASH
            if ch.get("httpHeaderName"):
                cluster.hash.header = str(ch["httpHeaderName"])
            elif ch.get("httpCookie"):
                cluster.hash.cookie = str(ch["httpCookie"].get("name", ""))
            elif ch.get("useSourceIp"):
                cluster.hash.source_ip = True
            elif ch.get("httpQueryParameterName"):
                cluster.hash.query_param = str(ch["httpQueryParameterName"])

    def _build(self, name: str, host: str, svc: Obj, svc_port: Obj, subset: str) -> pb.Cluster | None:
        dr = self.index.drs.get(host)
        subset_obj = None
        if subset:
            subset_obj = next(
                (s for s in meta.spec(dr).get("subsets") or [] if s.get("name") == subset), None
            )
            if subset_obj is None:
                return None
        cluster = pb.Cluster(name=name, hostname=host, port=int(svc_port["port"]), subset=subset)
        self._lb(cluster, dr, subset_obj)
        _outlier(cluster, dr, subset_obj)
        _client_tls(cluster, dr, subset_obj)
        _connection_pool(cluster, dr, subset_obj)
        selector = meta.spec(svc).get("selector") or {}
        wanted = {**selector, **((subset_obj or {}).get("labels") or {})}
        for pod in self.index.pods_by_ns.get(meta.namespace(svc), []):
            if not selector or not meta.matches_labels(wanted, meta.labels(pod)) or not _pod_ready(pod):
                continue
            target = _target_port(svc_port, pod)
            if target is None:
                continue
            address = str(pod["status"]["podIP"])
            cluster.endpoints.append(pod_endpoint(pod, self.index.inputs, address, target))
        return cluster


def _setting(dr: Obj | None, subset: Obj | None, port: int, key: str) -> Any:
    """One DestinationRule traffic-policy field: subset over top level, and inside each a matching
    ``portLevelSettings`` entry over the policy itself (Istio's precedence)."""
    for policy in ((subset or {}).get("trafficPolicy") or {}, meta.spec(dr).get("trafficPolicy") or {}):
        for level in policy.get("portLevelSettings") or []:
            if int((level.get("port") or {}).get("number") or 0) == port and level.get(key):
                return level[key]
        if policy.get(key):
            return policy[key]
    return None


def _outlier(cluster: pb.Cluster, dr: Obj | None, subset: Obj | None) -> None:
    """DestinationRule ``outlierDetection`` (subset over top level); Istio's defaults for unset fields."""
    od = _setting(dr, subset, cluster.port, "outlierDetection")
    if not od:
        return
    five = od.get("consecutive5xxErrors", od.get("consecutiveErrors", 5))
    cluster.outlier.CopyFrom(
        pb.OutlierDetection(
            consecutive_5xx=int(five or 0),
            consecutive_gateway_errors=int(od.get("consecutiveGatewayErrors") or 0),
            base_ejection_ms=parse_duration_ms(od.get("baseEjectionTime")) or 30_000,
            max_ejection_percent=int(od.get("maxEjectionPercent") or 10),
        )
    )


def _connection_pool(cluster: pb.Cluster, dr: Obj | None, subset: Obj | None) -> None:
    """DestinationRule ``connectionPool``: tcp.maxConnections, http.http1MaxPendingRequests,
    http.maxRequestsPerConnection (the HTTP/1.1 pool the waypoint keeps per cluster)."""
    pool = _setting(dr, subset, cluster.port, "connectionPool") or {}
    tcp, http = pool.get("tcp") or {}, pool.get("http") or {}
    cluster.max_connections = int(tcp.get("maxConnections") or 0)
    cluster.max_pending_requests = int(http.get("http1MaxPendingRequests") or 0)
    cluster.max_requests_per_connection = int(http.get("maxRequestsPerConnection") or 0)


def _client_tls(cluster: pb.Cluster, dr: Obj | None, subset: Obj | None) -> None:
    """DestinationRule ``tls``: SIMPLE originates TLS to the app (MUTUAL is not supported; ISTIO_MUTUAL and
    DISABLE are no-ops in ambient, where HBONE already is mTLS)."""
    tls = _setting(dr, subset, cluster.port, "tls")
    if not tls or tls.get("mode") != "SIMPLE":
        return
    ca = str(tls.get("caCertificates") or "")
    cluster.tls.CopyFrom(
        pb.ClientTls(
            sni=str(tls.get("sni") or ""),
            ca_certificates=ca if ca.startswith("-----BEGIN") else "",  # a file path means nothing to us
            insecure_skip_verify=bool(tls.get("insecureSkipVerify", False)),
        )
    )


def pod_endpoint(pod: Obj, inputs: L7Inputs, address: str, port: int = 0) -> pb.Endpoint:
    """A pod as an endpoint: its workload, SPIFFE identity and canonical name/revision labels."""
    labels, ns = meta.labels(pod), meta.namespace(pod)
    sa = (pod.get("spec") or {}).get("serviceAccountName") or "default"
    return pb.Endpoint(
        address=address,
        port=port,
        weight=1,
        healthy=True,
        workload=workload_name(pod),
        namespace=ns,
        identity=f"spiffe://{inputs.trust_domain}/ns/{ns}/sa/{sa}",
        canonical_name=labels.get("service.istio.io/canonical-name")
        or labels.get("app")
        or workload_name(pod),
        canonical_revision=labels.get("service.istio.io/canonical-revision")
        or labels.get("version")
        or "latest",
        cluster_id=inputs.cluster_id,
    )


def workload_name(pod: Obj) -> str:
    owners = (pod.get("metadata") or {}).get("ownerReferences") or []
    name = meta.name(pod)
    if owners and owners[0].get("kind") == "ReplicaSet":
        return str(owners[0]["name"]).rsplit("-", 1)[0]
    if owners:
        return str(owners[0]["name"])
    return name
