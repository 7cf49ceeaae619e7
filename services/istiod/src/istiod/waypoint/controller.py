"""The waypoint controller: informer events in; GatewayClass, waypoint objects, statuses and pushes out.

Wiring (what ``istiod.app`` does)::

    publisher = register_waypoint_type(server.cache)
    ctl = WaypointController(kube_client, publisher, settings=..., mesh=...)
    for kind, informer in ctl.informers(kube_client, existing=app.informers).items(): informer.start() ...
    owner.spawn(ctl.run(), name="waypoints")

Every event marks the controller dirty; :meth:`run` reconciles at most every ``debounce_s``, reading only the
informer caches, and runs the (blocking) Kubernetes writes in a thread. A reconcile:

1. creates the GatewayClass ``istio-waypoint`` if it is missing (never updates it) and sets it Accepted;
2. for each Gateway of that class, creates or replaces its ServiceAccount, Deployment and Service when their
   rendered form changed (hash annotation), and deletes the objects of Gateways that are gone (owner
   references let the cluster's garbage collector do it too; this covers clusters without one);
3. writes Gateway status (Accepted, Programmed, addresses);
4. builds every waypoint's L7 config, publishes it over xDS, and writes the status conditions of the routes,
   policies and Services it read (only when they changed).

A failed write is logged and retried on the next reconcile; it never stops the others.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

from meshkit.k8s import ApiError, Conflict, Event, Informer, KubeClient, NotFound
from meshkit.k8s import resources as r
from meshkit.k8s.leader import LeaderElector
from meshkit.logs import kv

from istiod.waypoint import deployment as dep
from istiod.waypoint.l7 import L7Inputs, StatusUpdate, build_configs
from istiod.waypoint.meshconfig import ext_authz_providers
from istiod.waypoint.publish import WaypointPublisher

__all__ = ["KINDS", "WaypointController"]

log = logging.getLogger("istiod.waypoint")
Obj = dict[str, Any]

DEPLOYMENTS = r.Resource("apps", "v1", "deployments", "Deployment")
HTTPROUTES = r.Resource("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute")
GRPCROUTES = r.Resource("gateway.networking.k8s.io", "v1", "grpcroutes", "GRPCRoute")
TCPROUTES = r.Resource("gateway.networking.k8s.io", "v1alpha2", "tcproutes", "TCPRoute")
VIRTUALSERVICES = r.Resource("networking.istio.io", "v1", "virtualservices", "VirtualService")
DESTINATIONRULES = r.Resource("networking.istio.io", "v1", "destinationrules", "DestinationRule")
REQUESTAUTHENTICATIONS = r.Resource(
    "security.istio.io", "v1", "requestauthentications", "RequestAuthentication"
)

#: kind → (resource, optional); the ambient index already watches some of these (shared when passed in).
KINDS: dict[str, tuple[r.Resource, bool]] = {
    "gateways": (r.GATEWAYS, True),
    "gatewayclasses": (r.GATEWAYCLASSES, True),
    "namespaces": (r.NAMESPACES, False),
    "services": (r.SERVICES, False),
    "pods": (r.PODS, False),
    "deployments": (DEPLOYMENTS, False),
    "httproutes": (HTTPROUTES, True),
    "grpcroutes": (GRPCROUTES, True),
    "tcproutes": (TCPROUTES, True),
    "virtualservices": (VIRTUALSERVICES, True),
    "destinationrules": (DESTINATIONRULES, True),
    "authorizationpolicies": (r.AUTHORIZATIONPOLICIES, True),
    "requestauthentications": (REQUESTAUTHENTICATIONS, True),
}
BY_KIND = {
    "ServiceAccount": r.SERVICEACCOUNTS,
    "Deployment": DEPLOYMENTS,
    "Service": r.SERVICES,
    "HTTPRoute": HTTPROUTES,
    "GRPCRoute": GRPCROUTES,
    "TCPRoute": TCPROUTES,
    "VirtualService": VIRTUALSERVICES,
    "AuthorizationPolicy": r.AUTHORIZATIONPOLICIES,
    "RequestAuthentication": REQUESTAUTHENTICATIONS,
    "Gateway": r.GATEWAYS,
}
HASH_ANNOTATION = "istio.io/rendered-hash"
LEASE_NAME = "istio-gateway-deployment-default"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _hash(obj: Obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def _strip_times(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_times(v) for k, v in value.items() if k != "lastTransitionTime"}
    if isinstance(value, list):
        return [_strip_times(v) for v in value]
    return value


class WaypointController:
    """Reconciles waypoints; see the module docstring."""

    def __init__(
        self,
        client: KubeClient | None,
        publisher: WaypointPublisher,
        *,
        deploy: dep.DeploySettings | None = None,
        trust_domain: str = "cluster.local",
        domain_suffix: str = "cluster.local",
        root_namespace: str = "istio-system",
        cluster_id: str = "Kubernetes",
        debounce_s: float = 0.1,
        retry_initial_s: float = 1.0,
    ) -> None:
        self.client = client
        self.retry_initial_s = retry_initial_s
        self.publisher = publisher
        self.deploy = deploy or dep.DeploySettings(
            trust_domain=trust_domain, domain_suffix=domain_suffix, cluster_id=cluster_id
        )
        self.trust_domain, self.domain_suffix = trust_domain, domain_suffix
        self.root_namespace, self.cluster_id = root_namespace, cluster_id
        self.debounce_s = debounce_s
        self.sources: dict[str, Informer] = {}
        self._dirty = asyncio.Event()
        self._written: dict[tuple[str, str, str], Any] = {}
        self._forbidden: set[str] = set()
        self._reconciled: list[asyncio.Future[None]] = []
        self.reconciles = 0
        self.failed_writes = 0
        #: Kubernetes writes happen only while True (the leader); config is published either way.
        self.writes_enabled = True

    # -- inputs ---------------------------------------------------------------------------------------------

    def informers(
        self, client: KubeClient, existing: Mapping[str, Informer] | None = None
    ) -> dict[str, Informer]:
        """Informers for every kind we read, reusing ``existing`` ones; returns the ones created here."""
        created: dict[str, Informer] = {}
        for kind, (resource, optional) in KINDS.items():
            informer = (existing or {}).get(kind)
            if informer is None:
                informer = created[kind] = Informer(client, resource, optional=optional)
            self.watch(kind, informer)
        mesh = created["meshconfig"] = Informer(
            client,
            r.CONFIGMAPS,
            namespace=self.root_namespace,
            field_selector="metadata.name=istio",
            optional=True,
        )
        self.watch("meshconfig", mesh)
        return created

    def watch(self, kind: str, informer: Informer) -> None:
        self.sources[kind] = informer
        informer.subscribe(self._on_events)

    def _on_events(self, _batch: list[Event]) -> None:
        self._dirty.set()

    def _objects(self, kind: str) -> list[Obj]:
        source = self.sources.get(kind)
        return source.objects() if source is not None else []

    def inputs(self) -> L7Inputs:
        return L7Inputs(
            gateways=self._objects("gateways"),
            namespaces=self._objects("namespaces"),
            services=self._objects("services"),
            pods=self._objects("pods"),
            httproutes=self._objects("httproutes"),
            grpcroutes=self._objects("grpcroutes"),
            tcproutes=self._objects("tcproutes"),
            virtualservices=self._objects("virtualservices"),
            destinationrules=self._objects("destinationrules"),
            authorizationpolicies=self._objects("authorizationpolicies"),
            requestauthentications=self._objects("requestauthentications"),
            trust_domain=self.trust_domain,
            domain_suffix=self.domain_suffix,
            root_namespace=self.root_namespace,
            cluster_id=self.cluster_id,
            ext_authz=ext_authz_providers(
                next(iter(self._objects("meshconfig")), None), self.root_namespace, self.domain_suffix
            ),
        )

    # -- loop ---------------------------------------------------------------------------------------------

    def set_leader(self, leading: bool) -> None:
        """Leader election hook: start or stop writing (a new leader reconciles at once)."""
        self.writes_enabled = leading
        if leading:
            self._written.clear()
            self._dirty.set()

    async def run(self) -> None:
        """Reconcile on every change (debounced) until cancelled."""
        self._dirty.set()
        backoff = self.retry_initial_s
        retry: asyncio.TimerHandle | None = None
        loop = asyncio.get_running_loop()
        while True:
            await self._dirty.wait()
            await asyncio.sleep(self.debounce_s)
            self._dirty.clear()
            self.failed_writes = 0
            try:
                await self.reconcile()
            except Exception:
                log.exception("waypoint reconcile failed")
                self.failed_writes += 1
            for waiter in self._reconciled:
                if not waiter.done():
                    waiter.set_result(None)
            self._reconciled.clear()
            if retry is not None:
                retry.cancel()
                retry = None
            if self.failed_writes:
                # Retry failed writes later on a timer: changes keep being reconciled (and pushed) at once
                # meanwhile, and a failing API server is not hammered.
                retry = loop.call_later(backoff, self._dirty.set)
                backoff = min(backoff * 2, 60.0)
            else:
                backoff = self.retry_initial_s

    async def wait_reconciled(self) -> None:
        """Return once the next reconcile of :meth:`run` has finished (tests, diagnostics)."""
        waiter = asyncio.get_running_loop().create_future()
        self._reconciled.append(waiter)
        await waiter

    async def reconcile(self) -> None:
        self.reconciles += 1
        gateways = [g for g in self._objects("gateways") if dep.is_waypoint_gateway(g)]
        result = build_configs(self.inputs())
        self.publisher.update(result.configs)
        if self.client is None or not self.writes_enabled:
            return
        await asyncio.to_thread(self._write_all, gateways, result.statuses)

    # -- writes (thread) ----------------------------------------------------------------------------------

    def _write_all(self, gateways: list[Obj], statuses: list[StatusUpdate]) -> None:
        self._ensure_class()
        for gw in gateways:
            self._safe(self._ensure_objects, gw)
        self._safe(self._cleanup, gateways)
        for gw in gateways:
            self._safe(self._gateway_status, gw)
        for update in statuses:
            self._safe(self._status, update)

    def _safe(self, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except ApiError as exc:
            log.warning("kubernetes write failed", extra=kv(step=fn.__name__, error=str(exc)))
            self.failed_writes += 1

    def _ensure_class(self) -> None:
        assert self.client is not None
        existing = next(
            (c for c in self._objects("gatewayclasses") if c["metadata"]["name"] == dep.CLASS_NAME), None
        )
        if existing is None:
            try:
                existing = self.client.create(r.GATEWAYCLASSES, dep.gateway_class())
                log.info("created GatewayClass", extra=kv(name=dep.CLASS_NAME))
            except Conflict:
                existing = self.client.get(r.GATEWAYCLASSES, dep.CLASS_NAME)  # first writer wins
            except ApiError as exc:
                log.warning(
                    "cannot create GatewayClass (Gateway API CRDs installed?)", extra=kv(error=str(exc))
                )
                return
        status = dep.class_status(existing, _now())
        if (existing.get("spec") or {}).get("controllerName") == dep.CONTROLLER_NAME and _strip_times(
            (existing.get("status") or {}).get("conditions")
        ) != _strip_times(status["conditions"]):
            self._safe(self.client.patch_status, r.GATEWAYCLASSES, dep.CLASS_NAME, {"status": status})

    def _ensure_objects(self, gw: Obj) -> None:
        assert self.client is not None
        ns = gw["metadata"]["namespace"]
        for kind, desired in dep.desired_objects(gw, self.deploy):
            resource = BY_KIND[kind]
            digest = _hash(desired)
            desired["metadata"].setdefault("annotations", {})[HASH_ANNOTATION] = digest
            try:
                current = self.client.get(resource, desired["metadata"]["name"], ns)
            except NotFound:
                self.client.create(resource, desired, ns)
                log.info(
                    "created waypoint object",
                    extra=kv(kind=kind, namespace=ns, name=desired["metadata"]["name"]),
                )
                continue
            if ((current.get("metadata") or {}).get("annotations") or {}).get(HASH_ANNOTATION) == digest:
                continue
            desired["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            if kind == "Service":  # immutable allocations are kept
                for key in ("clusterIP", "clusterIPs", "ipFamilies"):
                    if key in (current.get("spec") or {}):
                        desired["spec"][key] = current["spec"][key]
            self.client.replace(resource, desired, ns)

    def _cleanup(self, gateways: list[Obj]) -> None:
        assert self.client is not None
        live = {(g["metadata"]["namespace"], g["metadata"]["name"]) for g in gateways}
        for kind in ("deployments", "services"):
            for obj in self._objects(kind):
                labels = (obj.get("metadata") or {}).get("labels") or {}
                if (
                    labels.get(dep.MANAGED_LABEL) != dep.MANAGED
                    or labels.get(dep.GATEWAY_CLASS_NAME) != dep.CLASS_NAME
                ):
                    continue
                ns, gw_name = obj["metadata"]["namespace"], labels.get(dep.GATEWAY_NAME, "")
                if (ns, gw_name) in live:
                    continue
                name = obj["metadata"]["name"]
                for resource in (DEPLOYMENTS, r.SERVICES, r.SERVICEACCOUNTS):
                    try:
                        self.client.delete(resource, name, ns)
                        log.info(
                            "deleted waypoint object", extra=kv(kind=resource.kind, namespace=ns, name=name)
                        )
                    except NotFound:
                        pass

    def _find(self, kind: str, ns: str, name: str) -> Obj | None:
        source = self.sources.get(kind)
        return source.get(f"{ns}/{name}") if source is not None else None

    def _gateway_status(self, gw: Obj) -> None:
        ns, gw_name = gw["metadata"]["namespace"], gw["metadata"]["name"]
        name, _sa = dep.object_names(gw)
        status = dep.gateway_status(
            gw, self._find("services", ns, name), self._find("deployments", ns, name), self.deploy, _now()
        )
        if _strip_times(gw.get("status") or {}) == _strip_times(status):
            return
        self._status(StatusUpdate("Gateway", ns, gw_name, status), force=True)

    def _status(self, update: StatusUpdate, *, force: bool = False) -> None:
        """Patch ``status`` unless we already wrote exactly this (``force``: compared with the live one)."""
        assert self.client is not None
        key = (update.kind, update.namespace, update.name)
        stripped = _strip_times(update.status)
        if not force and self._written.get(key) == stripped:
            return
        try:
            self.client.patch_status(
                BY_KIND[update.kind], update.name, {"status": update.status}, update.namespace
            )
        except NotFound:
            return  # deleted meanwhile, or the kind is not installed
        except ApiError as exc:
            if exc.status != 403:
                raise
            # RBAC does not allow this status: retrying cannot help until the status itself changes.
            if update.kind not in self._forbidden:
                self._forbidden.add(update.kind)
                log.warning(
                    "istiod may not write this status (add it to istiod's RBAC)",
                    extra=kv(kind=update.kind, error=str(exc)),
                )
        self._written[key] = stripped


def _may_list(client: KubeClient, resource: r.Resource) -> bool:
    """False only when the API server forbids listing ``resource`` (a missing CRD is the informer's job)."""
    try:
        client.list_page(resource, limit=1)
    except ApiError as exc:
        if exc.status == 403:
            log.warning(
                "not allowed to list an optional kind; waypoint config ignores it (add it to istiod's RBAC)",
                extra=kv(resource=str(resource)),
            )
            return False
    except Exception:
        return True
    return True


def start_waypoints(
    cache: Any, client: KubeClient, informers: Mapping[str, Informer], owner: Any, settings: Any
) -> list[Informer]:
    """istiod wiring in one call: register the xDS type, start the controller (and the informers the index
    does not already run). Returns the informers started here, for the caller to stop.

    ``settings`` is istiod's Settings (trust_domain, domain_suffix, root_namespace, cluster_id); the waypoint
    image comes from ``WAYPOINT_IMAGE`` (see :class:`~istiod.waypoint.deployment.DeploySettings`).
    """
    from meshkit.settings import load

    from istiod.waypoint.publish import register_waypoint_type

    deploy = load(dep.DeploySettings)
    deploy = dep.DeploySettings(
        **{
            **{f: getattr(deploy, f) for f in deploy.__dataclass_fields__},
            "trust_domain": settings.trust_domain,
            "domain_suffix": settings.domain_suffix,
            "cluster_id": settings.cluster_id,
        }
    )
    ctl = WaypointController(
        client,
        register_waypoint_type(cache),
        deploy=deploy,
        trust_domain=settings.trust_domain,
        domain_suffix=settings.domain_suffix,
        root_namespace=settings.root_namespace,
        cluster_id=settings.cluster_id,
    )
    created = ctl.informers(client, existing=informers)

    async def start_informers() -> None:
        for informer in created.values():
            # An optional kind our RBAC does not grant stays unstarted (empty) instead of retrying forever.
            if not informer.optional or await asyncio.to_thread(_may_list, client, informer.resource):
                informer.start()

    owner.spawn(start_informers(), name="waypoint-informers")
    if getattr(settings, "leader_election", False):
        # Like upstream's deployment controller: one writer per cluster; every replica still serves config.
        ctl.set_leader(False)
        elector = LeaderElector(
            client,
            settings.namespace,
            LEASE_NAME,
            settings.pod_name,
            on_started=lambda: ctl.set_leader(True),
            on_stopped=lambda: ctl.set_leader(False),
        )
        owner.spawn(elector.run(), name="waypoint-leader-election")
    owner.spawn(ctl.run(), name="waypoint-controller")
    return list(created.values())
