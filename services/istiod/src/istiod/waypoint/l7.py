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
from istiod.index.workloads import pod_ips
from istiod.waypoint.clusters import ClusterBuilder, Index, pod_endpoint
from istiod.waypoint.deployment import CLASS_NAME
from istiod.waypoint.policy import convert_authorization, convert_request_authn, targets
from istiod.waypoint.routes import Converted, convert_httproute, convert_tcproute
from istiod.waypoint.virtualservice import convert_virtualservice, vs_hosts

Obj = dict[str, Any]

__all__ = ["BuildResult", "L7Inputs", "StatusUpdate", "build_configs"]

BOUND_CONDITION = "istio.io/WaypointBound"
XFCC_ANNOTATION = "ambient.istio.io/xfcc-include-client-identity"
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
        self.index = Index(inputs)
        self.result = BuildResult()
        self.waypoints = {
            f"{meta.namespace(g)}/{meta.name(g)}": g
            for g in inputs.gateways
            if meta.spec(g).get("gatewayClassName") == CLASS_NAME
        }
        self.bound: dict[str, list[Obj]] = defaultdict(list)
        self.bound_pods: dict[str, list[Obj]] = defaultdict(list)
        self.cluster_sets: dict[str, ClusterBuilder] = {}

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
        ips = pod_ips(pod)  # bound pods all have a podIP (_bind_pods)
        ns = meta.namespace(pod)
        endpoint = pod_endpoint(pod, self.inputs, ips[0])
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

    def service_config(self, svc: Obj, clusters: ClusterBuilder) -> pb.Service:
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
            refs, foreign = targets(ap)
            if not refs and not foreign:
                continue  # selector / namespace policies are ztunnel's
            policy, problems = convert_authorization(ap, self.inputs.trust_domain, self.inputs.ext_authz)
            problems = foreign + problems
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
            refs, foreign = targets(ra)
            if not refs and not foreign:
                continue
            providers, problems = convert_request_authn(ra)
            problems = foreign + problems
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
            clusters = ClusterBuilder(self.index)
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
