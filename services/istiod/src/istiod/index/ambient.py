"""The ambient index: Kubernetes inputs → Address and Authorization collections (behaviour.md §5).

Inputs are :class:`~istiod.index.krt.Input` collections of raw object dicts keyed ``ns/name`` (or ``name``
for cluster-scoped kinds), fed by informers. Outputs:

* :attr:`AmbientIndex.addresses` — Workload and Service records keyed by xDS resource name (uid /
  ``ns/hostname``), with an ``ip`` index of ``<network>/<ip>`` for on-demand lookups;
* :attr:`AmbientIndex.authorizations` — Authorization records keyed ``ns/name``;
* :attr:`AmbientIndex.policy_status` — status conditions per AuthorizationPolicy (for the status writer).

Every derivation reads other collections only through its ``ctx``, so the engine knows what to recompute.
The waypoint deployer (issue #9, ``istiod/waypoint/``) may add its own derivations over the same inputs.
"""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Any

from istiod.index import endpointslices, meta, peerauthn, policies, waypoints
from istiod.index.authz import ConvertedPolicy, convert_authorization_policy
from istiod.index.krt import Collection, Context, Derived, Input, Join, singleton_source
from istiod.index.records import AUTHZ_SCOPE_WORKLOAD_SELECTOR, Authorization, Service, Workload
from istiod.index.services import MeshContext, k8s_service, service_entry_services
from istiod.index.workloads import (
    node_locality,
    pod_workload,
    service_entry_workloads,
    services_map,
    workload_entry_labels,
    workload_entry_workload,
)

Obj = dict[str, Any]
Address = Workload | Service
NETWORK_LABEL = "topology.istio.io/network"
INPUT_KINDS = (
    "namespaces", "nodes", "pods", "services", "endpointslices", "serviceentries", "workloadentries",
    "authorizationpolicies", "peerauthentications", "gateways", "gatewayclasses",
)  # fmt: skip


def _by_namespace(obj: Obj) -> list[str]:
    return [meta.namespace(obj)]


def address_aliases(record: Address) -> list[str]:
    if isinstance(record, Workload):
        return [f"{record.network}/{ipaddress.ip_address(a)}" for a in record.addresses]
    out = []
    for vip in record.addresses:
        ip = ipaddress.ip_address(vip.address)
        out.append(f"{vip.network}/{ip}" if vip.length is None else f"{vip.network}/{ip}/{vip.length}")
    return out


class AmbientIndex:
    """Wires the pure transformations into derived collections."""

    def __init__(self, mesh: MeshContext, *, dry_run_policies: bool = False) -> None:
        self.mesh = mesh
        self.dry_run_policies = dry_run_policies
        self.inputs: dict[str, Input[Obj]] = {kind: Input(kind) for kind in INPUT_KINDS}
        for kind in ("services", "serviceentries", "peerauthentications", "workloadentries"):
            self.inputs[kind].add_index("namespace", _by_namespace)
        self.inputs["endpointslices"].add_index("pod", endpointslices.pod_refs)
        self.waypoints: Derived[Obj, waypoints.Waypoint] = Derived(
            "waypoints", self.inputs["gateways"], self._waypoint
        )
        self.converted_policies: Derived[Obj, ConvertedPolicy] = Derived(
            "converted-policies", self.inputs["authorizationpolicies"], self._convert_policy
        )
        self.converted_policies.add_index("selector-namespace", _selector_namespace)
        self._build_authorizations()
        self._build_addresses()

    # ---- authorization ----

    def _build_authorizations(self) -> None:
        from_aps: Derived[ConvertedPolicy, Authorization] = Derived(
            "ap-authorizations", self.converted_policies,
            lambda _ctx, c: {c.authorization.resource_name: c.authorization} if c.authorization else {},
        )  # fmt: skip
        from_pas: Derived[Obj, Authorization] = Derived(
            "pa-authorizations", self.inputs["peerauthentications"], self._convert_peer_authentication
        )
        static: Derived[bool, Authorization] = Derived(
            "static-strict", singleton_source(), self._static_strict
        )
        self.authorizations: Collection[Authorization] = Join("authorizations", [from_aps, from_pas, static])

    def _convert_policy(self, _ctx: Context, ap: Obj) -> dict[str, ConvertedPolicy]:
        converted = convert_authorization_policy(ap, self.mesh.root_namespace, self.dry_run_policies)
        return {f"{meta.namespace(ap)}/{meta.name(ap)}": converted}

    def _convert_peer_authentication(self, ctx: Context, pa: Obj) -> dict[str, Authorization]:
        root, ns = self.mesh.root_namespace, meta.namespace(pa)
        pas = self.inputs["peerauthentications"]
        parent = policies.namespace_level(ctx.by_index(pas, "namespace", ns), ns)
        mesh = policies.namespace_level(ctx.by_index(pas, "namespace", root), root)
        converted = peerauthn.convert_peer_authentication(pa, root, parent, mesh)
        return {converted.resource_name: converted} if converted else {}

    def _static_strict(self, ctx: Context, _item: bool) -> dict[str, Authorization]:
        if not any(peerauthn.well_formed(pa) for pa in ctx.all(self.inputs["peerauthentications"])):
            return {}  # §5.6: only while at least one PeerAuthentication exists
        policy = peerauthn.static_strict_policy(self.mesh.root_namespace)
        return {policy.resource_name: policy}

    def _policy_keys(self, ctx: Context, namespace: str, labels: dict[str, str]) -> tuple[str, ...]:
        root = self.mesh.root_namespace
        selector = ctx.by_index(self.converted_policies, "selector-namespace", namespace)
        if namespace != root:
            selector += ctx.by_index(self.converted_policies, "selector-namespace", root)
        pas = ctx.by_index(self.inputs["peerauthentications"], "namespace", namespace)
        if namespace != root:
            pas += ctx.by_index(self.inputs["peerauthentications"], "namespace", root)
        return policies.workload_policy_keys(namespace, labels, selector, pas, root)

    # ---- waypoints ----

    def _waypoint(self, ctx: Context, gateway: Obj) -> dict[str, waypoints.Waypoint]:
        gateway_class = ctx.get(
            self.inputs["gatewayclasses"], str(meta.spec(gateway).get("gatewayClassName", ""))
        )
        waypoint = waypoints.waypoint_from_gateway(gateway, gateway_class, self._mesh(ctx).network)
        return {waypoint.key: waypoint} if waypoint else {}

    def _resolve_waypoint(self, ctx: Context, obj: Obj, labels: dict[str, str], kind: str) -> Any:
        ns = meta.namespace(obj)
        namespace_labels = meta.labels(ctx.get(self.inputs["namespaces"], ns))
        ref = waypoints.requested(labels, ns, namespace_labels)
        return waypoints.resolve(ref, kind, ns, namespace_labels, lambda key: ctx.get(self.waypoints, key))

    # ---- addresses ----

    def _mesh(self, ctx: Context, labels: dict[str, str] | None = None, namespace: str = "") -> MeshContext:
        """The mesh context with the network resolved (§5.1): the object's ``topology.istio.io/network``
        label, else its namespace's, else the system namespace's, else the configured NETWORK."""
        network = (labels or {}).get(NETWORK_LABEL, "")
        if not network and namespace:
            network = meta.labels(ctx.get(self.inputs["namespaces"], namespace)).get(NETWORK_LABEL, "")
        if not network and not self.mesh.network:
            network = meta.labels(ctx.get(self.inputs["namespaces"], self.mesh.system_namespace)).get(
                NETWORK_LABEL, ""
            )
        return replace(self.mesh, network=network) if network else self.mesh

    def _build_addresses(self) -> None:
        parts: list[Collection[Address]] = [
            Derived("k8s-services", self.inputs["services"], self._k8s_service),
            Derived("se-services", self.inputs["serviceentries"], self._se_services),
            Derived("pod-workloads", self.inputs["pods"], self._pod_workload),
            Derived("we-workloads", self.inputs["workloadentries"], self._we_workload),
            Derived("se-workloads", self.inputs["serviceentries"], self._se_workloads),
            Derived("endpoint-workloads", self.inputs["endpointslices"], self._endpoint_workloads),
        ]
        self.address_parts = parts
        self.addresses: Collection[Address] = Join("addresses", parts)
        self.addresses.add_index("ip", address_aliases)

    def _k8s_service(self, ctx: Context, svc: Obj) -> dict[str, Service]:
        labels = meta.labels(svc)
        waypoint = None
        if not waypoints.is_waypoint_service(labels):
            waypoint = self._resolve_waypoint(ctx, svc, labels, "service")
        namespace = ctx.get(self.inputs["namespaces"], meta.namespace(svc))
        record = k8s_service(svc, self._mesh(ctx), namespace, waypoint)
        if record is None:
            return {}
        record = replace(record, weighted_waypoints=self._canary(ctx, svc, namespace, waypoint))
        return {record.resource_name: record}

    def _se_services(self, ctx: Context, se: Obj) -> dict[str, Service]:
        waypoint = self._resolve_waypoint(ctx, se, meta.labels(se), "service")
        canary = self._canary(ctx, se, ctx.get(self.inputs["namespaces"], meta.namespace(se)), waypoint)
        records = service_entry_services(se, self._mesh(ctx), waypoint)
        return {s.resource_name: replace(s, weighted_waypoints=canary) for s in records}

    def _canary(self, ctx: Context, obj: Obj, namespace: Obj | None, primary: Any) -> Any:
        """Weighted waypoints (primary + canary) for a Service or ServiceEntry (§5.3)."""
        ns, ns_labels = meta.namespace(obj), meta.labels(namespace)
        canary = waypoints.canary_requested(
            meta.labels(obj), meta.annos(obj), ns, ns_labels, meta.annos(namespace)
        )
        return waypoints.weighted(primary, canary, ns, ns_labels, lambda key: ctx.get(self.waypoints, key))

    def _pod_workload(self, ctx: Context, pod: Obj) -> dict[str, Workload]:
        ns, labels = meta.namespace(pod), meta.labels(pod)
        svcs = ctx.by_index(self.inputs["services"], "namespace", ns)
        ses = ctx.by_index(self.inputs["serviceentries"], "namespace", ns)
        gateway_name = labels.get(waypoints.GATEWAY_NAME_LABEL)
        waypoint, tunnel = None, None
        if gateway_name:  # a waypoint's own pod: never a waypoint, maybe an inbound binding (§5.4)
            gateway = ctx.get(self.inputs["gateways"], f"{ns}/{gateway_name}")
            cls = meta.spec(gateway).get("gatewayClassName", "") if gateway else ""
            tunnel = waypoints.inbound_binding(gateway, ctx.get(self.inputs["gatewayclasses"], str(cls)))
        else:
            waypoint = self._resolve_waypoint(ctx, pod, labels, "workload")
        node = ctx.get(self.inputs["nodes"], str(meta.spec(pod).get("nodeName") or ""))
        mesh = self._mesh(ctx, labels, ns)
        services = services_map(mesh, pod, labels=labels, k8s_services=svcs, service_entries=ses)
        slices = ctx.by_index(self.inputs["endpointslices"], "pod", f"{ns}/{meta.name(pod)}")
        if slices:  # selector-less Services list the pods their slices reference (§5.2)
            by_key = {f"{meta.namespace(s)}/{meta.name(s)}": s for s in svcs}
            extra = endpointslices.pod_service_entries(f"{ns}/{meta.name(pod)}", slices, by_key, mesh)
            services = tuple(sorted({**dict(services), **extra}.items()))
        record = pod_workload(
            pod, mesh, services=services,
            waypoint=waypoint, application_tunnel=tunnel, policies=self._policy_keys(ctx, ns, labels),
            locality=node_locality(node),
        )  # fmt: skip
        return {record.uid: record} if record else {}

    def _we_workload(self, ctx: Context, we: Obj) -> dict[str, Workload]:
        ns, labels = meta.namespace(we), workload_entry_labels(we)
        svcs = ctx.by_index(self.inputs["services"], "namespace", ns)
        ses = ctx.by_index(self.inputs["serviceentries"], "namespace", ns)
        mesh = self._mesh(ctx, labels, ns)
        services = services_map(mesh, None, labels=labels, k8s_services=svcs, service_entries=ses,
                                named_targets=meta.spec(we).get("ports") or {})  # fmt: skip
        record = workload_entry_workload(
            we, mesh, services=services, waypoint=self._resolve_waypoint(ctx, we, labels, "workload"),
            policies=self._policy_keys(ctx, ns, labels),
        )  # fmt: skip
        return {record.uid: record}

    def _se_workloads(self, ctx: Context, se: Obj) -> dict[str, Workload]:
        waypoint = self._resolve_waypoint(ctx, se, meta.labels(se), "workload")
        return {
            w.uid: w
            for w in service_entry_workloads(
                se, self._mesh(ctx, meta.labels(se), meta.namespace(se)), waypoint
            )
        }

    def _endpoint_workloads(self, ctx: Context, slice_: Obj) -> dict[str, Workload]:
        key = endpointslices.service_key(slice_)
        svc = ctx.get(self.inputs["services"], key) if key else None
        return {w.uid: w for w in endpointslices.endpoint_workloads(slice_, svc, self._mesh(ctx))}

    # ---- queries ----

    def lookup(self, key: str) -> list[Address]:
        """On-demand lookup: a resource name, or ``<network>/<ip>``."""
        record = self.addresses.get(key)
        if record is not None:
            return [record]
        return self.addresses.by_index("ip", key)

    def policy_statuses(self) -> dict[str, Any]:
        return {k: v.status for k, v in self.converted_policies.items() if v.status is not None}


def _selector_namespace(policy: ConvertedPolicy) -> list[str]:
    auth = policy.authorization
    return [auth.namespace] if auth is not None and auth.scope == AUTHZ_SCOPE_WORKLOAD_SELECTOR else []
