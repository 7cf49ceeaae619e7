"""The per-waypoint L7 config builder: Kubernetes objects → one ``WaypointConfig`` per waypoint (pure).

Inputs are plain object dicts (what the informers hold). For every Gateway of class ``istio-waypoint``:

* **bound Services**: ``istio.io/use-waypoint`` on the Service, else its Namespace (``none`` opts out; the
  waypoint must admit the namespace on its HBONE listener and serve ``service`` traffic), with VIPs and ports;
* **routes**: HTTPRoutes whose ``parentRefs`` name the Service (GAMMA), then VirtualServices whose ``hosts``
  name it (:mod:`istiod.waypoint.routes`);
* **clusters**: every backend a route names, ``inbound-vip|<port>|<subset or http>|<host>``, with the ready
  endpoint pods (target port resolved per pod) and the DestinationRule LB policy (subset over top level);
* **policies / JWT**: AuthorizationPolicies and RequestAuthentications whose ``targetRef(s)`` name the
  Gateway, a bound Service, or the GatewayClass from the root namespace (:mod:`istiod.waypoint.policy`).

It also returns status updates: per HTTPRoute parent (Accepted / ResolvedRefs), per VirtualService and policy
(``Accepted`` with the problems found), and per Service with a waypoint label (``istio.io/WaypointBound``).
A bad object only affects its own status and its own routes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshproto.ambient.waypoint.v1 import waypoint_pb2 as pb

from istiod.index import meta
from istiod.index import waypoints as wp
from istiod.waypoint.deployment import CLASS_NAME
from istiod.waypoint.policy import convert_authorization, convert_request_authn, targets
from istiod.waypoint.routes import (
    INVALID,
    Converted,
    convert_httproute,
    convert_tcproute,
    convert_virtualservice,
    parse_duration_ms,
    vs_hosts,
)

Obj = dict[str, Any]

__all__ = ["BuildResult", "L7Inputs", "StatusUpdate", "build_configs"]

BOUND_CONDITION = "istio.io/WaypointBound"
XFCC_ANNOTATION = "ambient.istio.io/xfcc-include-client-identity"
LB = {
    "ROUND_ROBIN": pb.ROUND_ROBIN,
    "LEAST_REQUEST": pb.LEAST_REQUEST,
    "LEAST_CONN": pb.LEAST_REQUEST,
    "RANDOM": pb.RANDOM,
    "PASSTHROUGH": pb.PASSTHROUGH,
    "UNSPECIFIED": pb.LB_DEFAULT,
}
PROTOCOLS = {
    "http": pb.HTTP,
    "http2": pb.HTTP2,
    "grpc": pb.GRPC,
    "grpc-web": pb.HTTP,
    "tcp": pb.TCP,
    "h2c": pb.HTTP2,
    "kubernetes.io/h2c": pb.HTTP2,
    "https": pb.TCP,
    "tls": pb.TCP,
    "mongo": pb.TCP,
    "mysql": pb.TCP,
    "redis": pb.TCP,
}


@dataclass
class L7Inputs:
    gateways: list[Obj] = field(default_factory=list)
    namespaces: list[Obj] = field(default_factory=list)
    services: list[Obj] = field(default_factory=list)
    pods: list[Obj] = field(default_factory=list)
    httproutes: list[Obj] = field(default_factory=list)
    grpcroutes: list[Obj] = field(default_factory=list)
    tcproutes: list[Obj] = field(default_factory=list)
    virtualservices: list[Obj] = field(default_factory=list)
    destinationrules: list[Obj] = field(default_factory=list)
    authorizationpolicies: list[Obj] = field(default_factory=list)
    requestauthentications: list[Obj] = field(default_factory=list)
    trust_domain: str = "cluster.local"
    domain_suffix: str = "cluster.local"
    root_namespace: str = "istio-system"
    cluster_id: str = "Kubernetes"
    ext_authz: Mapping[str, pb.ExtAuthz] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """A status to write: ``status`` is the object's whole new ``status`` (or the part we own)."""

    kind: str
    namespace: str
    name: str
    status: Obj


@dataclass
class BuildResult:
    configs: dict[str, pb.WaypointConfig] = field(default_factory=dict)
    statuses: list[StatusUpdate] = field(default_factory=list)


def _protocol(port: Obj) -> int:
    app = str(port.get("appProtocol") or "").lower()
    if app in PROTOCOLS:
        return PROTOCOLS[app]
    prefix = str(port.get("name") or "").lower().split("-")[0]
    return PROTOCOLS.get(prefix, pb.PROTOCOL_UNSPECIFIED)


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


class _Index:
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


class _Clusters:
    """Creates clusters on demand while routes are converted."""

    def __init__(self, index: _Index) -> None:
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
            labels = meta.labels(pod)
            sa = (pod.get("spec") or {}).get("serviceAccountName") or "default"
            cluster.endpoints.append(
                pb.Endpoint(
                    address=str(pod["status"]["podIP"]),
                    port=target,
                    weight=1,
                    healthy=True,
                    workload=_workload_name(pod),
                    namespace=meta.namespace(pod),
                    identity=f"spiffe://{self.index.inputs.trust_domain}/ns/{meta.namespace(pod)}/sa/{sa}",
                    canonical_name=labels.get("service.istio.io/canonical-name")
                    or labels.get("app")
                    or _workload_name(pod),
                    canonical_revision=labels.get("service.istio.io/canonical-revision")
                    or labels.get("version")
                    or "latest",
                    cluster_id=self.index.inputs.cluster_id,
                )
            )
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


def _workload_name(pod: Obj) -> str:
    owners = (pod.get("metadata") or {}).get("ownerReferences") or []
    name = meta.name(pod)
    if owners and owners[0].get("kind") == "ReplicaSet":
        return str(owners[0]["name"]).rsplit("-", 1)[0]
    if owners:
        return str(owners[0]["name"])
    return name


def _admits(gw: Obj, namespace: str, ns_labels: Mapping[str, str]) -> bool:
    listener = wp._hbone_listener(gw)  # the index's reading of the HBONE listener (same rules, §5.4)
    routes = (listener.get("allowedRoutes") or {}).get("namespaces") or {}
    source = str(routes.get("from") or "Same")
    if source == "All":
        return True
    if source == "Selector":
        return meta.matches_label_selector(routes.get("selector") or {}, ns_labels)
    return namespace == meta.namespace(gw)


def _parent_is(parent: Obj, route: Obj, svc: Obj) -> bool:
    """A GAMMA parentRef naming ``svc`` (kind Service, core group, namespace defaulting to the route's)."""
    return (
        parent.get("kind") == "Service"
        and parent.get("group", "") in {"", "core"}
        and parent.get("name") == meta.name(svc)
        and (parent.get("namespace") or meta.namespace(route)) == meta.namespace(svc)
    )


def _condition(kind: str, ok: bool, reason: str, message: str, generation: int) -> Obj:
    return {
        "type": kind,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    }


def _gen(obj: Obj) -> int:
    return int((obj.get("metadata") or {}).get("generation") or 1)


class _Builder:
    def __init__(self, inputs: L7Inputs) -> None:
        self.inputs = inputs
        self.index = _Index(inputs)
        self.result = BuildResult()
        self.waypoints = {
            f"{meta.namespace(g)}/{meta.name(g)}": g
            for g in inputs.gateways
            if meta.spec(g).get("gatewayClassName") == CLASS_NAME
        }
        self.bound: dict[str, list[Obj]] = defaultdict(list)
        self.bound_pods: dict[str, list[Obj]] = defaultdict(list)
        self.cluster_sets: dict[str, _Clusters] = {}

    def bind(self) -> None:
        for svc in self.inputs.services:
            labels, ns = meta.labels(svc), meta.namespace(svc)
            if wp.is_waypoint_service(labels):
                continue
            ns_labels = self.index.ns_labels.get(ns, {})
            ref = wp.requested(labels, ns, ns_labels)
            if ref is None:
                continue
            gw = self.waypoints.get(ref.key)
            if gw is None:
                self._bound_status(svc, False, "WaypointNotFound", f"waypoint {ref.key} not found")
            elif not _admits(gw, ns, ns_labels):
                self._bound_status(
                    svc,
                    False,
                    "NamespaceNotAccepted",
                    f"waypoint {ref.key} does not allow routes from namespace {ns}",
                )
            elif wp.traffic_type(gw, None) not in {wp.FOR_SERVICE, wp.FOR_ALL}:
                self._bound_status(
                    svc,
                    False,
                    "UnsupportedTrafficType",
                    f"waypoint {ref.key} is for {wp.traffic_type(gw, None)} traffic",
                )
            else:
                self.bound[ref.key].append(svc)
                self._bound_status(svc, True, "Bound", f"bound to {ref.key}")
        self._bind_pods()

    def _bind_pods(self) -> None:
        """Pods bound to a waypoint that serves ``workload`` traffic (§5.4; no status on pods)."""
        for pod in self.inputs.pods:
            labels, ns = meta.labels(pod), meta.namespace(pod)
            if wp.GATEWAY_NAME_LABEL in labels or not (pod.get("status") or {}).get("podIP"):
                continue  # waypoint pods never get a waypoint
            ns_labels = self.index.ns_labels.get(ns, {})
            ref = wp.requested(labels, ns, ns_labels)
            gw = self.waypoints.get(ref.key) if ref is not None else None
            if ref is None or gw is None or not _admits(gw, ns, ns_labels):
                continue
            if wp.traffic_type(gw, None) in {wp.FOR_WORKLOAD, wp.FOR_ALL}:
                self.bound_pods[ref.key].append(pod)

    def workload_config(self, pod: Obj) -> pb.Service:
        status = pod.get("status") or {}
        ips = [str(p.get("ip")) for p in status.get("podIPs") or [] if p.get("ip")] or [str(status["podIP"])]
        sa = (pod.get("spec") or {}).get("serviceAccountName") or "default"
        labels, ns = meta.labels(pod), meta.namespace(pod)
        endpoint = pb.Endpoint(
            address=ips[0],
            weight=1,
            healthy=True,
            workload=_workload_name(pod),
            namespace=ns,
            identity=f"spiffe://{self.inputs.trust_domain}/ns/{ns}/sa/{sa}",
            canonical_name=labels.get("service.istio.io/canonical-name")
            or labels.get("app")
            or _workload_name(pod),
            canonical_revision=labels.get("service.istio.io/canonical-revision")
            or labels.get("version")
            or "latest",
            cluster_id=self.inputs.cluster_id,
        )
        return pb.Service(
            hostname=f"{meta.name(pod)}.{ns}.pod",
            name=meta.name(pod),
            namespace=ns,
            vips=ips,
            workload=endpoint,
        )

    def _bound_status(self, svc: Obj, ok: bool, reason: str, message: str) -> None:
        cond = _condition(BOUND_CONDITION, ok, reason, message, _gen(svc))
        self.result.statuses.append(
            StatusUpdate("Service", meta.namespace(svc), meta.name(svc), {"conditions": [cond]})
        )

    def service_config(self, svc: Obj, clusters: _Clusters) -> pb.Service:
        host = f"{meta.name(svc)}.{meta.namespace(svc)}.svc.{self.inputs.domain_suffix}"
        spec = meta.spec(svc)
        out = pb.Service(
            hostname=host,
            name=meta.name(svc),
            namespace=meta.namespace(svc),
            vips=[ip for ip in spec.get("clusterIPs") or [spec.get("clusterIP")] if ip and ip != "None"],
        )
        for port in spec.get("ports") or []:
            if str(port.get("protocol", "TCP")) != "TCP":
                continue
            target = port.get("targetPort", port.get("port"))
            out.ports.append(
                pb.ServicePort(
                    port=int(port["port"]),
                    target_port=int(target) if str(target).isdigit() else 0,
                    protocol=_protocol(port),  # type: ignore[arg-type]
                    name=str(port.get("name") or ""),
                )
            )
            clusters(host, int(port["port"]), "")  # the default route's cluster
        routes: list[tuple[tuple[Any, ...], pb.Route]] = []
        gamma = [(r, "HTTPRoute") for r in self.inputs.httproutes] + [
            (r, "GRPCRoute") for r in self.inputs.grpcroutes
        ]
        for route, kind in gamma:
            for parent in meta.spec(route).get("parentRefs") or []:
                if _parent_is(parent, route, svc):
                    conv = convert_httproute(
                        route, int(parent.get("port") or 0), clusters, self.inputs.domain_suffix, kind
                    )
                    consumer = meta.namespace(route) != meta.namespace(svc)
                    for key, converted in conv.routes:
                        if consumer:  # GAMMA: only for clients in the route's namespace, and first
                            converted.source_namespace = meta.namespace(route)
                        routes.append(((0 if consumer else 1, *key), converted))
                    self._route_status(route, parent, conv, kind)
        routes.sort(key=lambda kr: kr[0])
        out.routes.extend(r for _, r in routes)
        for route in self.inputs.tcproutes:
            for parent in meta.spec(route).get("parentRefs") or []:
                if _parent_is(parent, route, svc):
                    port = int(parent.get("port") or 0)
                    tcp, conv = convert_tcproute(route, port, clusters, self.inputs.domain_suffix)
                    out.tcp_routes.extend(tcp)
                    self._route_status(route, parent, conv, "TCPRoute")
        for vs in self.inputs.virtualservices:
            if host in vs_hosts(vs, self.inputs.domain_suffix):
                conv = convert_virtualservice(vs, clusters, self.inputs.domain_suffix)
                out.routes.extend(r for _, r in conv.routes)
                self._problems_status("VirtualService", vs, conv.problems + conv.unresolved)
        return out

    def _route_status(self, route: Obj, parent: Obj, conv: Converted, kind: str = "HTTPRoute") -> None:
        accepted = not conv.problems
        resolved = not conv.unresolved
        entry = {
            "parentRef": {
                k: parent[k] for k in ("group", "kind", "name", "namespace", "port") if k in parent
            },
            "controllerName": "istio.io/gateway-controller",
            "conditions": [
                _condition(
                    "Accepted",
                    accepted,
                    "Accepted" if accepted else "UnsupportedValue",
                    "Route was valid" if accepted else "; ".join(conv.problems),
                    _gen(route),
                ),
                _condition(
                    "ResolvedRefs",
                    resolved,
                    "ResolvedRefs" if resolved else "BackendNotFound",
                    "All references resolved" if resolved else "; ".join(conv.unresolved),
                    _gen(route),
                ),
            ],
        }
        self.result.statuses.append(
            StatusUpdate(kind, meta.namespace(route), meta.name(route), {"parents": [entry]})
        )

    def _problems_status(self, kind: str, obj: Obj, problems: list[str]) -> None:
        ok = not problems
        cond = _condition(
            "Accepted",
            ok,
            "Accepted" if ok else "UnsupportedValue",
            "ok" if ok else "; ".join(problems),
            _gen(obj),
        )
        self.result.statuses.append(
            StatusUpdate(kind, meta.namespace(obj), meta.name(obj), {"conditions": [cond]})
        )

    def policies(self) -> None:
        for ap in self.inputs.authorizationpolicies:
            refs = targets(ap)
            if not refs:
                continue  # selector / namespace policies are ztunnel's
            policy, problems = convert_authorization(ap, self.inputs.trust_domain, self.inputs.ext_authz)
            attached = self._attach(
                refs,
                lambda cfg, svc, p=policy: (
                    (svc.policies if svc else cfg.policies).append(p) if p is not None else None
                ),
            )
            if not attached:
                problems.append(
                    "no targetRef names a waypoint Gateway, a Service bound to one, or the GatewayClass"
                )
            self._problems_status("AuthorizationPolicy", ap, problems)
        for ra in self.inputs.requestauthentications:
            refs = targets(ra)
            if not refs:
                continue
            providers, problems = convert_request_authn(ra)
            attached = self._attach(
                refs, lambda cfg, svc, ps=providers: (svc.jwt if svc else cfg.jwt).providers.extend(ps)
            )
            if not attached:
                problems.append("no targetRef names a waypoint Gateway or a Service bound to one")
            self._problems_status("RequestAuthentication", ra, problems)

    def _attach(self, refs: Iterable[Any], add: Any) -> bool:
        attached = False
        for ref in refs:
            for key, cfg in self.result.configs.items():
                ns, name = key.split("/", 1)
                if (ref.kind == "Gateway" and ref.namespace == ns and ref.name == name) or (
                    ref.kind == "GatewayClass"
                    and ref.name == CLASS_NAME
                    and ref.namespace == self.inputs.root_namespace
                ):
                    add(cfg, None)
                    attached = True
                elif ref.kind == "Service":
                    for svc in cfg.services:
                        if svc.namespace == ref.namespace and svc.name == ref.name:
                            add(cfg, svc)
                            attached = True
        return attached

    def build(self) -> BuildResult:
        self.bind()
        for key, gw in sorted(self.waypoints.items()):
            clusters = _Clusters(self.index)
            cfg = pb.WaypointConfig(
                name=meta.name(gw),
                namespace=meta.namespace(gw),
                trust_domain=self.inputs.trust_domain,
                xfcc_client_identity=meta.annos(gw).get(XFCC_ANNOTATION, "").lower() == "true",
            )
            for svc in sorted(self.bound.get(key, []), key=lambda s: (meta.namespace(s), meta.name(s))):
                cfg.services.append(self.service_config(svc, clusters))
            for pod in sorted(self.bound_pods.get(key, []), key=lambda p: (meta.namespace(p), meta.name(p))):
                cfg.services.append(self.workload_config(pod))
            self.cluster_sets[key] = clusters
            self.result.configs[key] = cfg
        self.policies()
        for key, cfg in self.result.configs.items():
            clusters = self.cluster_sets[key]
            for policy in [*cfg.policies, *(p for svc in cfg.services for p in svc.policies)]:
                if policy.HasField("provider"):  # CUSTOM: the waypoint calls the provider's Service
                    clusters(policy.provider.service, policy.provider.port, "")
            cfg.clusters.extend(clusters.clusters[n] for n in sorted(clusters.clusters))
        return self.result


def build_configs(inputs: L7Inputs) -> BuildResult:
    """Every waypoint's config plus the status updates for the objects read (see module docstring)."""
    return _Builder(inputs).build()
