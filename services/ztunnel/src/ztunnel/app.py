"""The composition root: ``build(settings)`` wires state, certificates, config source, the in-pod manager,
and the admin, metrics and readiness servers, and returns a running :class:`App` (STYLE.md practice 4).

Tests and ``__main__`` use the same entry point; tests inject a certificate fetcher (an in-process CA) and a
config source (static records or a fake control plane). Readiness (``/healthz/ready`` on 15021) needs:
``xds`` (first config received), ``workload proxy manager`` (ZDS snapshot done, no pod pending) and
``certificates`` (every captured pod serves with its certificate).

Shutdown (SIGTERM, ``/quitquitquit``, or :meth:`App.drain`): every pod stops accepting at once, in-flight
connections get up to ``CONNECTION_TERMINATION_DEADLINE``, then everything is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import random
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from meshkit.drain import Drain, TaskOwner
from meshkit.hbone.settings import HboneSettings
from meshkit.identity.caclient import CertificateFetcher
from meshkit.identity.manager import CertificateManager
from meshkit.logs import kv
from meshkit.netns import arun_in_netns
from meshkit.settings import load
from meshkit.sockets import SO_MARK, NetnsSocketFactory
from meshkit.zds import WorkloadInfo
from prometheus_client import CollectorRegistry, disable_created_metrics
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from ztunnel.admin import admin_routes, config_dump
from ztunnel.http import HttpServer, Readiness, Request, Response, start_http
from ztunnel.inpod.client import run_zds_client
from ztunnel.inpod.manager import PodProxyFactory, WorkloadProxyManager
from ztunnel.inpod.pod import InPodProxy
from ztunnel.metrics import DnsMetrics, ProxyMetrics, WorkloadManagerMetrics, build_info
from ztunnel.proxy.context import ProxyServices
from ztunnel.settings import Settings, split_addr, termination_deadline
from ztunnel.state.state import State
from ztunnel.xds import ConfigSource, load_static, xds_source

__all__ = ["App", "ConfigSource", "build"]

log = logging.getLogger("ztunnel")

READY_XDS = "xds"
READY_INPOD = "workload proxy manager"
READY_CERTS = "certificates"


def _udp_reuseport(host: str, port: int, mark: int) -> socket.socket:
    """Runs inside the pod netns: a bound, marked UDP socket that a second ztunnel can bind too."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setblocking(False)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


M_ARENA_MAX = -8  # <malloc.h>


def tune_process(arenas: int = 2) -> None:
    """Process-wide memory tuning, called first thing by ``__main__``: at most ``arenas`` glibc malloc arenas.

    Every thread that allocates (one per pod netns, executor threads) would otherwise get its own arena and
    keep its fragments resident; two arenas keep ztunnel inside its RSS budget (64 MB with 1,000 workloads).
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, arenas)


def _trim_heap() -> None:
    """glibc ``malloc_trim(0)``: return freed heap pages to the OS (no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


_reqsk_unset_noted: list[None] = [None]  # popped by the first note: one per process, atomic under the GIL


def _enable_reqsk_migration(path: str = "/proc/sys/net/ipv4/tcp_migrate_req") -> None:
    """Per-netns sysctl: on listener close, queued connections move to another SO_REUSEPORT listener.

    Runs in the pod netns. The istio-cni agent sets it when it enrols the pod, since in a container ztunnel's
    ``/proc/sys`` is read-only; this is the fallback (an agent that did not, or a host where ztunnel may
    write). It cannot fail the pod: without it a hand-over may reset connections still queued on the old
    ztunnel's listeners, which is noted once per process.
    """
    try:
        with open(path) as f:
            if f.read().strip() == "1":
                return
        with open(path, "w") as f:
            f.write("1")
    except OSError as exc:
        with contextlib.suppress(IndexError):
            _reqsk_unset_noted.pop()
            log.info(
                "tcp_migrate_req is not set in a pod netns and ztunnel cannot set it (logged once): a"
                " hand-over to a new ztunnel may reset connections queued on this one's listeners",
                extra=kv(error=str(exc)),
            )


@dataclass
class App:
    settings: Settings
    state: State
    certs: CertificateManager
    manager: WorkloadProxyManager
    readiness: Readiness
    registry: Any
    services: ProxyServices
    tasks: TaskOwner
    servers: dict[str, HttpServer] = field(default_factory=dict)
    pods: dict[str, InPodProxy] = field(default_factory=dict)
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    static_config: dict[str, Any] = field(default_factory=dict)
    _closing: asyncio.Task[None] | None = None

    def url(self, name: str) -> str:
        return self.servers[name].url

    def config_dump(self) -> dict[str, Any]:
        return config_dump(
            self.state,
            self.certs.config_dump(),
            self.manager.dump(),
            asdict(self.settings),
            self.static_config,
        )

    def update_readiness(self) -> None:
        was_ready = self.readiness.ready
        self._update_conditions()
        if self.readiness.ready and not was_ready:
            _trim_heap()  # start-up garbage (config parse, first certificates) goes back to the OS

    def _update_conditions(self) -> None:
        if self.manager.ready:
            self.readiness.set(READY_INPOD)
        else:
            self.readiness.clear(READY_INPOD)
        if all(pod.ready.is_set() for pod in self.pods.values()):
            self.readiness.set(READY_CERTS)
        else:
            self.readiness.clear(READY_CERTS)

    def request_shutdown(self) -> None:
        if self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self.drain(), name="ztunnel/drain")

    async def drain(self, deadline_s: float | None = None) -> None:
        """Stop accepting everywhere, let connections finish up to the deadline, then close everything."""
        deadline = termination_deadline(self.settings) if deadline_s is None else deadline_s
        log.info("draining", extra=kv(pods=len(self.pods), deadline_s=deadline))
        self.readiness.clear(READY_INPOD)
        await asyncio.gather(
            *(pod.stop_accepting(deadline) for pod in self.pods.values()),
            self.services.drain.drain(deadline),
        )
        await self.close()

    async def close(self) -> None:
        await self.tasks.close()
        await self.manager.close()
        await self.certs.close()
        for server in self.servers.values():
            await server.close()
        self.stopped.set()


async def _serve_http(app: App, name: str, routes: dict[tuple[str, str], Any], addr: str) -> None:
    host, port = split_addr(addr)
    app.servers[name] = await start_http(host, port, routes)


def _metrics_routes(registry: CollectorRegistry) -> dict[tuple[str, str], Any]:
    async def handle(_request: Request) -> Response:
        return Response(body=generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

    return {("GET", "/metrics"): handle, ("GET", "/stats/prometheus"): handle}


async def build(
    settings: Settings,
    *,
    fetcher: CertificateFetcher,
    config_source: ConfigSource | None = None,
    rng: random.Random | None = None,
    hbone: HboneSettings | None = None,
) -> App:
    """Build and start ztunnel. ``fetcher`` signs workload certificates (the CA client in production);
    ``hbone`` is the HBONE tuning every pod's pool and server use (default: ``load(HboneSettings)``, i.e.
    the process environment)."""
    disable_created_metrics()  # type: ignore[no-untyped-call]  # Istio emits no *_created series
    registry = CollectorRegistry(auto_describe=True)
    build_info(registry, "0.1.0")
    state = State(settings.network)
    certs = CertificateManager(fetcher)
    services = ProxyServices(
        settings,
        state,
        certs,
        ProxyMetrics(registry),
        DnsMetrics(registry),
        Drain("ztunnel"),
        rng or random.Random(),
        hbone=hbone or load(HboneSettings),
    )
    app_ref: list[App] = []
    manager = WorkloadProxyManager(_pod_starter(app_ref, services), WorkloadManagerMetrics(registry))
    readiness = Readiness(READY_XDS, READY_INPOD, READY_CERTS)
    app = App(settings, state, certs, manager, readiness, registry, services, TaskOwner("ztunnel"))
    app_ref.append(app)
    manager.on_ready_change(lambda _ready: app.update_readiness())
    app.update_readiness()
    _start_config(app, config_source)
    app.tasks.spawn(_flush_metrics(services), name="metrics-flush")
    if settings.inpod_enabled:
        app.tasks.spawn(run_zds_client(settings.inpod_uds, manager), name="zds")
        app.tasks.spawn(manager.run_retries(), name="zds-retries")
    else:
        manager.snapshot_done = True
        app.update_readiness()
    try:
        await _start_servers(app)
    except BaseException:
        await app.close()
        raise
    log.info("ztunnel started", extra=kv(**{name: s.url for name, s in app.servers.items()}))
    return app


def _pod_starter(app_ref: list[App], services: ProxyServices) -> PodProxyFactory:
    """The manager's factory: a pod's proxy, its sockets made inside the netns ZDS handed over."""
    settings = services.settings

    async def start_pod(uid: str, info: WorkloadInfo, netns_fd: int) -> _Tracked:
        factory = NetnsSocketFactory(netns_fd, mark=settings.inpod_mark, name=info.name)
        try:
            await arun_in_netns(netns_fd, _enable_reqsk_migration)

            async def udp_listener(host: str, port: int) -> socket.socket:
                return await arun_in_netns(netns_fd, _udp_reuseport, host, port, settings.inpod_mark)

            pod = InPodProxy(
                services, uid, info, factory, close_factory=factory.close, udp_listener=udp_listener
            )
            await pod.start()
        except BaseException:
            factory.close()
            raise
        app = app_ref[0]
        app.pods[uid] = pod
        app.tasks.spawn(_pod_ready(app, pod), name=f"ready-{info.name}")
        return _Tracked(app, uid, pod)

    return start_pod


def _start_config(app: App, config_source: ConfigSource | None) -> None:
    """Static config (LOCAL_XDS_PATH) now, and/or the given source or the xDS client as a task."""
    settings, readiness = app.settings, app.readiness

    def synced() -> None:
        if not readiness.ready:
            _trim_heap()  # the first full config leaves parse garbage; hand the freed pages back
        readiness.set(READY_XDS)

    if settings.local_xds_path and Path(settings.local_xds_path).exists():
        load_static(settings.local_xds_path, app.state)
        app.static_config = json.loads(Path(settings.local_xds_path).read_text())
        synced()
    if config_source is None and not settings.local_xds_path:
        config_source = xds_source(settings, app.registry)
    if config_source is not None:
        app.tasks.spawn(config_source(app.state, synced), name="config")


async def _start_servers(app: App) -> None:
    s = app.settings
    await _serve_http(app, "admin", admin_routes(app.config_dump, app.request_shutdown), s.admin_addr)
    await _serve_http(app, "stats", _metrics_routes(app.registry), s.stats_addr)
    await _serve_http(app, "readiness", {("GET", "/healthz/ready"): app.readiness.handle}, s.readiness_addr)


METRICS_FLUSH_S = 5.0


async def _flush_metrics(services: ProxyServices) -> None:
    """Bytes of long HBONE connections reach the counters while they run, not only at close (§7.1)."""
    while True:
        await asyncio.sleep(METRICS_FLUSH_S)  # periodic by design
        services.flush_live()


async def _pod_ready(app: App, pod: InPodProxy) -> None:
    await pod.ready.wait()
    app.update_readiness()


class _Tracked:
    """The manager's handle on a pod proxy: stopping it also forgets it in the app."""

    def __init__(self, app: App, uid: str, pod: InPodProxy) -> None:
        self.app, self.uid, self.pod = app, uid, pod

    async def stop(self) -> None:
        if self.app.pods.get(self.uid) is self.pod:
            del self.app.pods[self.uid]
        await self.pod.stop()
        self.app.update_readiness()

    async def drain(self, grace_s: float) -> None:
        """Replaced by a proxy for the pod's new netns: stop accepting, let connections finish, stop."""
        if self.app.pods.get(self.uid) is self.pod:
            del self.app.pods[self.uid]
        try:
            await self.pod.stop_accepting(grace_s)
        finally:
            await self.pod.stop()
