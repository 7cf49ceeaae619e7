"""The waypoint's composition root: ``build(settings, ...)`` returns a running :class:`App` (STYLE.md #4).

Wires: the certificate (one identity: the waypoint's service account), the config store fed by a config
source (istiod's delta xDS, a static file, or a test pushing ``WaypointConfig`` directly), the HBONE server
(15008) whose per-CONNECT handler is :meth:`WaypointProxy.handle`, the upstream HBONE connection pool (the
waypoint's own identity, ``podIP:15008``), and the admin (15000: ``/config_dump``, ``/logging``,
``/quitquitquit``), stats (15020) and readiness (15021: ``certificate``, ``config``) servers.

Drain (SIGTERM, ``/quitquitquit``, :meth:`App.drain`): readiness goes 503, the listener closes, connections
get GOAWAY, in-flight tunnels get ``TERMINATION_DRAIN_DURATION``, then everything is closed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from meshkit import logs
from meshkit import metrics as mk_metrics
from meshkit.admin import HttpServer, Readiness, start_http
from meshkit.drain import TaskOwner
from meshkit.hbone.pool import ConnectionPool, Connector, PoolKey
from meshkit.hbone.request import SourceMetadata, connect_headers
from meshkit.hbone.server import HboneServer
from meshkit.hbone.settings import HboneSettings
from meshkit.hbone.stream import HboneStream
from meshkit.identity.caclient import CertificateFetcher
from meshkit.identity.certs import WorkloadCertificate
from meshkit.identity.manager import CertificateManager
from meshkit.identity.spiffe import Identity, InvalidIdentity
from meshkit.logs import kv
from meshkit.settings import load
from meshkit.sockets import HostSocketFactory, SocketFactory
from meshproto.ambient.waypoint.v1 import waypoint_pb2 as pb
from opentelemetry.sdk.trace.export import SpanExporter

from waypoint.config import TYPE_URL, ConfigStore
from waypoint.jwks import JwksFetcher
from waypoint.otlp import OtlpJsonExporter
from waypoint.proxy import ExtAuthzCheck, WaypointProxy
from waypoint.settings import Settings
from waypoint.telemetry import RequestMetrics, Tracing

__all__ = ["App", "ConfigSource", "build", "split_addr"]

log = logging.getLogger("waypoint")

#: Runs for the app's lifetime keeping ``store`` current; calls ``synced()`` after the first full config.
ConfigSource = Callable[[ConfigStore, Callable[[], None]], Coroutine[Any, Any, None]]
READY_CERT = "certificate"
READY_CONFIG = "config"


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


@dataclass
class App:
    settings: Settings
    identity: Identity
    store: ConfigStore
    proxy: WaypointProxy
    hbone: HboneServer
    pool: ConnectionPool
    certs: CertificateManager
    readiness: Readiness
    registry: Any
    tracing: Tracing
    tasks: TaskOwner
    jwks: JwksFetcher
    servers: dict[str, HttpServer] = field(default_factory=dict)
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    _closing: asyncio.Task[None] | None = None

    @property
    def hbone_address(self) -> tuple[str, int]:
        return self.hbone.address

    def url(self, name: str) -> str:
        return self.servers[name].url

    def config_dump(self) -> dict[str, Any]:
        cert = self.certs.find_certificate(self.identity)
        return {
            "waypoint": self.store.dump(),
            "identity": self.identity.uri,
            "certificate": {
                "not_after": cert.not_after.isoformat() if cert else None,
                "serial": format(cert.serial, "x") if cert else None,
            },
            "settings": asdict(self.settings),
            "active_tunnels": self.proxy.active_tunnels,
        }

    def request_shutdown(self) -> None:
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self.drain(), name="waypoint/drain")

    async def drain(self, deadline_s: float | None = None) -> None:
        deadline = self.settings.drain_duration_s if deadline_s is None else deadline_s
        log.info("draining", extra=kv(deadline_s=deadline, active_tunnels=self.proxy.active_tunnels))
        self.readiness.clear(READY_CONFIG)
        await self.hbone.close(grace_s=deadline)
        await self.close()

    async def close(self) -> None:
        if self.stopped.is_set():
            return
        await self.hbone.close()
        await self.tasks.close()
        await self.jwks.close()
        await self.proxy.close()
        await self.pool.close()
        await self.certs.close()
        for server in self.servers.values():
            await server.close()
        self.tracing.shutdown()
        self.stopped.set()


def _admin_app(app_ref: list[App]) -> web.Application:
    async def config_dump(_req: web.Request) -> web.Response:
        return web.json_response(
            app_ref[0].config_dump(), dumps=lambda d: json.dumps(d, sort_keys=True, default=str)
        )

    async def logging_handler(req: web.Request) -> web.Response:
        level = req.query.get("level")
        try:
            levels = logs.set_levels(level) if level else logs.current_levels()
        except ValueError as exc:
            return web.Response(status=400, text=f"{exc}\n")
        return web.json_response(levels)

    async def quit_handler(_req: web.Request) -> web.Response:
        app_ref[0].request_shutdown()
        return web.Response(text="OK\n")

    admin = web.Application()
    admin.router.add_get("/config_dump", config_dump)
    admin.router.add_route("*", "/logging", logging_handler)
    admin.router.add_post("/quitquitquit", quit_handler)
    return admin


def static_source(path: str) -> ConfigSource:
    """A config source reading one ``WaypointConfig`` in protobuf JSON from ``path`` (no xDS)."""

    async def run(store: ConfigStore, synced: Callable[[], None]) -> None:
        msg = json_format.Parse(Path(path).read_text(), pb.WaypointConfig())  # noqa: ASYNC240 - once
        name = store.waypoint_name or f"{msg.namespace}/{msg.name}"
        rejected = store.apply(TYPE_URL, [(name, msg)], [])
        if rejected:
            log.error("static config rejected", extra=kv(path=path, rejected=rejected))
        synced()

    return run


def _opener(pool: ConnectionPool, identity: Identity, settings: Settings, snapshot: Callable[[], Any]) -> Any:
    meta = SourceMetadata(
        namespace=settings.pod_namespace,
        workload_name=settings.waypoint_name,
        canonical_name=settings.waypoint_name,
        canonical_revision="latest",
    )
    headers = connect_headers(meta, (settings.pod_ip, 0))
    identities: dict[tuple[str, int], Identity] = {}

    def expected(address: str, port: int) -> Identity:
        found = identities.get((address, port))
        if found is None:
            found = _endpoint_identity(snapshot(), address, port, identity.trust_domain)
            identities[(address, port)] = found
        return found

    async def open_stream(address: str, port: int) -> HboneStream:
        key = PoolKey.of(identity, settings.pod_ip, [expected(address, port)], (address, 15008))
        return await pool.connect(key, (address, port), [h for h in headers if h[0] != "traceparent"])

    open_stream.reset = identities.clear  # type: ignore[attr-defined]
    return open_stream


def _endpoint_identity(snap: Any, address: str, port: int, trust_domain: str) -> Identity:
    workload = [svc.workload for svc in snap.services if svc.workload is not None]
    for endpoints in [*(c.endpoints for c in snap.clusters.values()), workload]:
        for ep in endpoints:
            if ep.address == address and ep.port in (port, 0):
                try:
                    return Identity.parse(ep.identity)
                except InvalidIdentity:
                    return Identity(trust_domain, ep.namespace or "default", "default")
    return Identity(trust_domain, "default", "default")


async def build(
    settings: Settings,
    *,
    fetcher: CertificateFetcher,
    config_source: ConfigSource | None = None,
    connector: Connector | None = None,
    span_exporter: SpanExporter | None = None,
    ext_authz: ExtAuthzCheck | None = None,
    rng: random.Random | None = None,
    socket_factory: SocketFactory | None = None,
) -> App:
    """Build and start the waypoint. ``fetcher`` signs its certificate (the CA client in production).

    ``socket_factory`` opens the HBONE listener (default: the host netns); ``connector`` dials upstream
    HBONE (default: from the host netns). Tests put both inside the waypoint pod's netns.
    """
    registry = mk_metrics.new_registry()
    mk_metrics.BuildMetrics(registry, "waypoint", "0.1.0")
    identity = Identity(settings.trust_domain, settings.pod_namespace, settings.service_account)
    store = ConfigStore(f"{settings.pod_namespace}/{settings.waypoint_name}")
    readiness = Readiness(READY_CERT, READY_CONFIG)
    certs = CertificateManager(fetcher)
    certs.workload_added("waypoint", identity)
    current: list[WorkloadCertificate] = [await certs.fetch_certificate(identity)]
    readiness.set(READY_CERT)

    def certificate(_identity: Identity | None = None) -> WorkloadCertificate:
        found = certs.find_certificate(identity)
        if found is not None:
            current[0] = found
        return current[0]

    pool = ConnectionPool(certificate, connector, name="waypoint-upstream")
    exporter = span_exporter or (OtlpJsonExporter(settings.otlp_endpoint) if settings.otlp_endpoint else None)
    tracing = Tracing(
        exporter,
        service_name=f"{settings.waypoint_name}.{settings.pod_namespace}",
        batch=span_exporter is None,
    )
    opener = _opener(pool, identity, settings, lambda: store.snapshot)
    store.subscribe(lambda _snap: opener.reset())
    tasks = TaskOwner("waypoint")
    jwks = JwksFetcher(tasks)
    store.subscribe(jwks.attach)
    if not settings.access_log:
        logging.getLogger("access").setLevel(logging.WARNING)
    proxy = WaypointProxy(
        store,
        opener,
        RequestMetrics(registry),
        tracing,
        identity=identity.uri,
        rng=rng,
        ext_authz=ext_authz,
        sniff_timeout_s=settings.sniff_timeout_s,
    )
    store.subscribe(proxy.config_changed)
    host, port = split_addr(settings.hbone_addr)
    sock = (socket_factory or HostSocketFactory()).listen_tcp(host, port)
    # Upstream's waypoint listener (Envoy connect_terminate) allows 100 concurrent streams (behaviour §2.5).
    hbone_settings = replace(load(HboneSettings), server_max_concurrent_streams=100)
    hbone = HboneServer(sock, certificate, proxy.handle, hbone_settings, name="waypoint-hbone")
    app = App(settings, identity, store, proxy, hbone, pool, certs, readiness, registry, tracing, tasks, jwks)
    app_ref = [app]
    try:
        await hbone.start()
        source = config_source or (static_source(settings.config_file) if settings.config_file else None)
        if source is not None:
            tasks.spawn(source(store, lambda: readiness.set(READY_CONFIG)), name="config")
        else:
            log.warning("no config source: waiting for WaypointConfig pushes (xDS client not wired)")
        stats = web.Application()
        mk_metrics.add_metrics_routes(stats, registry)
        ready = web.Application()
        readiness.add_routes(ready)
        for name, web_app, addr in (
            ("admin", _admin_app(app_ref), settings.admin_addr),
            ("stats", stats, settings.stats_addr),
            ("readiness", ready, settings.readiness_addr),
        ):
            h, p = split_addr(addr)
            app.servers[name] = await start_http(web_app, h, p)
    except BaseException:
        await app.close()
        raise
    log.info(
        "waypoint started", extra=kv(identity=identity.uri, hbone=f"{hbone.address[0]}:{hbone.address[1]}")
    )
    return app
