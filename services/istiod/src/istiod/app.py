"""istiod's composition root: ``await build(settings)`` returns the bound addresses and a shutdown handle.

Wiring: informers → :class:`AmbientIndex` inputs → derived Address/Authorization collections →
:class:`ResourceCache` (encode once, compare bytes) → :class:`DiscoveryServer` (debounced pushes) → the gRPC
server on 15012 (TLS, with the CA on the same port) and optionally 15010 (plaintext). Writers (the CA's
root-cert ConfigMaps) run only while this replica holds the leader Lease. Readiness (8080 ``/ready``)
turns true once every watched kind has synced; metrics and localhost-only debug are on 15014.

Tests and ``__main__`` use the same entry point; tests pass ``kube=None`` and drive ``app.index.inputs``
directly, or a real :class:`KubeClient` for the cluster tier. ``authenticator`` and ``tls`` may be injected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from meshkit.admin import HttpServer, Readiness, start_http
from meshkit.drain import TaskOwner
from meshkit.k8s import Informer, KubeClient
from meshkit.k8s.leader import LeaderElector
from meshkit.logs import kv
from meshkit.metrics import BuildMetrics, new_registry
from prometheus_client import CollectorRegistry

from istiod import kube
from istiod.debug import monitoring_app
from istiod.index.ambient import AmbientIndex
from istiod.index.services import MeshContext
from istiod.settings import Settings
from istiod.status import StatusWriter
from istiod.waypoint.controller import start_waypoints
from istiod.xds.cache import ResourceCache
from istiod.xds.metrics import XdsMetrics
from istiod.xds.server import Authenticator, DiscoveryServer, grpc_handler, server_options

__all__ = ["App", "build"]

log = logging.getLogger("istiod")


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


@dataclass
class App:
    settings: Settings
    index: AmbientIndex
    server: DiscoveryServer
    readiness: Readiness
    registry: CollectorRegistry
    addresses: dict[str, int] = field(default_factory=dict)
    informers: dict[str, Informer] = field(default_factory=dict)
    leader: LeaderElector | None = None
    status: StatusWriter | None = None
    ca: Any = None  # istiod.ca.assemble.CaComponents when the CA runs
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    _closed: bool = False

    async def shutdown(self) -> None:
        """Stop accepting, close streams, stop watches and tasks (reverse order of start)."""
        if self._closed:
            return
        self._closed = True
        for close in reversed(self._closers):
            try:
                await close()
            except Exception:
                log.exception("shutdown step failed")


def _tls_credentials(settings: Settings, ca: Any) -> grpc.ServerCredentials | None:
    if settings.tls_cert_file:
        key, cert = Path(settings.tls_key_file).read_bytes(), Path(settings.tls_cert_file).read_bytes()
        return grpc.ssl_server_credentials([(key, cert)])
    if ca is not None:
        return ca.serving.credentials()  # type: ignore[no-any-return]
    return None


async def _build_ca(settings: Settings, client: KubeClient, registry: CollectorRegistry) -> Any:
    from meshkit.settings import load

    from istiod.ca.assemble import build_ca
    from istiod.ca.settings import CaSettings

    return await build_ca(load(CaSettings), client.api, registry=registry)


def _jwt_authenticator(settings: Settings, client: KubeClient) -> Authenticator:
    """ServiceAccount JWT authentication for xDS when the CA (which normally provides it) is off."""
    from meshkit.settings import load

    from istiod.ca.settings import CaSettings
    from istiod.security.authn import KubeJwtAuthenticator

    ca_settings = load(CaSettings)
    return KubeJwtAuthenticator(
        client.api, audiences=ca_settings.token_audiences, cluster_id=settings.cluster_id,
        trust_domain=settings.trust_domain,
    )  # fmt: skip


async def build(
    settings: Settings,
    *,
    kube_client: KubeClient | None = None,
    authenticator: Authenticator | None = None,
    tls: grpc.ServerCredentials | None = None,
    registry: CollectorRegistry | None = None,
) -> App:
    registry = registry or new_registry()
    BuildMetrics(registry, "pilot", "ambient-py")
    mesh = MeshContext(settings.cluster_id, settings.network, settings.trust_domain, settings.domain_suffix,
                       settings.root_namespace, settings.namespace)  # fmt: skip
    index = AmbientIndex(mesh, dry_run_policies=settings.dry_run_policies)
    owner = TaskOwner("istiod")
    ca = await _build_ca(settings, kube_client, registry) if settings.ca_enabled and kube_client else None
    if authenticator is None and settings.xds_auth and kube_client is not None:
        authenticator = ca.authenticator if ca is not None else _jwt_authenticator(settings, kube_client)
    server = DiscoveryServer(
        ResourceCache(), XdsMetrics(registry), authenticator=authenticator,
        identity_check=settings.identity_check,
        debounce_s=settings.debounce_s, debounce_max_s=settings.debounce_max_s,
    )  # fmt: skip
    server.cache.on_change = server.notify
    aliases = lambda key: [r.resource_name for r in index.addresses.by_index("ip", key)]  # noqa: E731
    server.cache.watch(index.addresses, index.authorizations, aliases)
    app = App(settings, index, server, Readiness(), registry, ca=ca)
    server.ready = lambda: app.readiness.ready  # no xDS before every watched kind has synced (as /ready)
    app._closers.append(owner.close)
    owner.spawn(server.run_pushes(), name="pushes")
    try:
        await _serve_grpc(app, tls or _tls_credentials(settings, ca), ca)
        _watch(app, kube_client, owner)
        _writers(app, kube_client, owner, ca)
        await _serve_http(app)
    except BaseException:
        await app.shutdown()
        raise
    return app


async def _serve_grpc(app: App, creds: grpc.ServerCredentials | None, ca: Any) -> None:
    settings = app.settings
    grpc_server = grpc.aio.server(options=server_options(settings.max_connection_age_s))
    grpc_server.add_generic_rpc_handlers([grpc_handler(app.server)])
    if ca is not None:
        from meshproto.istio.v1.auth import ca_pb2_grpc

        ca_pb2_grpc.add_IstioCertificateServiceServicer_to_server(ca.servicer, grpc_server)
    if creds is not None and settings.secure_xds_addr:
        app.addresses["xds"] = grpc_server.add_secure_port(settings.secure_xds_addr, creds)
    elif settings.secure_xds_addr:
        log.warning(
            "no serving certificate: the TLS xDS port is not served", extra=kv(addr=settings.secure_xds_addr)
        )
    if settings.plaintext_xds_addr:
        app.addresses["xds_plaintext"] = grpc_server.add_insecure_port(settings.plaintext_xds_addr)
    await grpc_server.start()

    async def stop() -> None:
        await grpc_server.stop(grace=1.0)
        await app.server.wait_streams_closed()

    app._closers.append(stop)


def _watch(app: App, client: KubeClient | None, owner: TaskOwner) -> None:
    if client is None:
        return  # inputs are driven by the caller (tests)
    app.informers = kube.informers(client, app.index)
    app.readiness.register(*(f"sync {kind}" for kind in app.informers))
    for kind, informer in app.informers.items():
        informer.start()
        owner.spawn(_mark_synced(app.readiness, kind, informer), name=f"sync-{kind}")
    extra = start_waypoints(app.server.cache, client, app.informers, owner, app.settings)  # waypoints (#9)

    async def stop() -> None:
        await asyncio.gather(*(i.stop() for i in [*app.informers.values(), *extra]))
        client.close()

    app._closers.append(stop)


async def _mark_synced(readiness: Readiness, kind: str, informer: Informer) -> None:
    await informer.wait_synced()
    readiness.set(f"sync {kind}")
    log.info("initial sync done", extra=kv(kind=kind, objects=len(informer.store)))


def _writers(app: App, client: KubeClient | None, owner: TaskOwner, ca: Any) -> None:
    """Start the writers (policy status, the root-cert ConfigMaps), behind the leader Lease if enabled."""
    if client is None:
        return
    writers = TaskOwner("istiod-writers")
    app.status = StatusWriter(app.index, client)
    status = app.status

    def start() -> None:
        try:
            writers.spawn(status.run(), name="policy-status")
            if ca is not None:
                writers.spawn(ca.publisher.run(ca.configmaps.watch()), name="root-cert-publisher")
        except RuntimeError:
            log.info("leadership gained during shutdown; not starting writers")

    def stop() -> None:
        for task in writers.tasks:
            task.cancel()

    if app.settings.leader_election:
        settings = app.settings
        app.leader = LeaderElector(client, settings.namespace, settings.lease_name, settings.pod_name,
                                   on_started=start, on_stopped=stop)  # fmt: skip
        owner.spawn(app.leader.run(), name="leader-election")
    else:
        start()
    app._closers.append(writers.close)


async def _serve_http(app: App) -> None:
    ready = web.Application()
    app.readiness.add_routes(ready, paths=("/ready",))
    host, port = split_addr(app.settings.readiness_addr)
    servers: list[HttpServer] = [await start_http(ready, host, port)]
    app.addresses["readiness"] = servers[0].port
    monitoring = monitoring_app(
        app.registry, app.index, app.server, lambda: {kind: i.synced for kind, i in app.informers.items()}
    )
    host, port = split_addr(app.settings.monitoring_addr)
    servers.append(await start_http(monitoring, host, port))
    app.addresses["monitoring"] = servers[1].port

    async def stop() -> None:
        for server in servers:
            with contextlib.suppress(Exception):
                await server.close()

    app._closers.append(stop)
