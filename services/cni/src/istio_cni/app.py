"""The node agent's composition root: ``build(settings)`` wires installer, host rules, ZDS hub, dataplane,
controller, plugin socket and the readiness/metrics servers, and returns a running :class:`App`.

Readiness (``/readyz`` on 8000) needs ``install`` (plugin chained into the CNI config), ``kube`` (informers
synced, start-up reconcile queued) and ``zds`` (socket listening). On shutdown the agent leaves pods and
the plugin in place ("safe upgrade": new pods wait for the next agent) unless it is being uninstalled; then
:meth:`App.uninstall` removes the conflist entry, the launcher and its runtime, the kubeconfig and the node
rules.
Tests pass their own ``view``/``annotator`` (fakes of the Kubernetes side) and port 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from meshkit import metrics as mk_metrics
from meshkit.admin import HttpServer, Readiness, start_http
from meshkit.drain import TaskOwner
from meshkit.logs import kv

from istio_cni.conflist import plugin_entry
from istio_cni.controller import KubeView, PodController
from istio_cni.dataplane import Annotator, DataplaneConfig, MeshDataplane
from istio_cni.events import PluginEventServer
from istio_cni.hostrules import HostRules
from istio_cni.install import KUBECONFIG_NAME, Installer, in_cluster_kubeconfig
from istio_cni.iptables import RuleError
from istio_cni.metrics import CniMetrics
from istio_cni.netns import Netns
from istio_cni.noderuntime import choose_runtime
from istio_cni.plugin.agentclient import PLUGIN_EVENT_SOCKET
from istio_cni.settings import Settings
from istio_cni.zdshub import ZtunnelHub

__all__ = ["App", "build"]

log = logging.getLogger("cni")
READY_PATH = "/readyz"


@dataclass
class App:
    settings: Settings
    dataplane: MeshDataplane
    hub: ZtunnelHub
    controller: PodController
    plugin_server: PluginEventServer
    readiness: Readiness
    registry: Any
    tasks: TaskOwner
    installer: Installer | None = None
    host: HostRules | None = None
    kube: Any = None
    servers: dict[str, HttpServer] = field(default_factory=dict)

    def url(self, name: str) -> str:
        return self.servers[name].url

    async def close(self) -> None:
        """Stop serving; pods keep their rules and the plugin stays installed (safe upgrade)."""
        await self.tasks.close()
        await self.plugin_server.close()
        await self.hub.close()
        if self.kube is not None:
            await self.kube.stop()
        for server in self.servers.values():
            await server.close()
        if self.host is not None:
            self.host.netns.close()
        self.dataplane.close()

    async def uninstall(self) -> None:
        """Clean the node: conflist entry, launcher, kubeconfig, node probe rules."""
        await self.tasks.close()  # the install watcher would otherwise put the entry straight back
        if self.installer is not None:
            self.installer.uninstall()
        if self.host is not None:
            await self.host.uninstall()
        log.info("istio-cni removed from the node")


def _entry(settings: Settings) -> dict[str, Any]:
    return plugin_entry(
        exclude_namespaces=list(settings.exclude_namespaces),
        enablement_selectors=list(settings.enablement_selectors),
        agent_run_dir=settings.run_dir,
        kubeconfig=f"{settings.run_dir}/{KUBECONFIG_NAME}",
        log_level=settings.log_level.split(",")[0],
        dns_capture=settings.dns_capture,
        ambient_enabled=settings.ambient_enabled,
    )


def _dataplane_config(settings: Settings) -> DataplaneConfig:
    return DataplaneConfig(
        dns_capture=settings.dns_capture,
        ipv6=settings.ipv6,
        # outside a pod (a host process, the local e2e cluster) the host's /proc is our own
        host_proc=settings.host_proc if os.path.isdir(os.path.join(settings.host_proc, "1")) else "/proc",
        netns_prefix="/host",
        retry_window_s=settings.retry_interval,
        probe_snat_v4=settings.probe_snat_v4,
        probe_snat_v6=settings.probe_snat_v6,
    )


def host_rules(settings: Settings) -> HostRules | None:
    if not settings.host_rules:
        return None
    netns = Netns.open(settings.host_netns or "/proc/self/ns/net")
    return HostRules(netns, settings.probe_snat_v4, settings.probe_snat_v6, settings.ipv6)


def _kube(settings: Settings) -> Any:
    from meshkit.k8s import KubeClient  # imported lazily: tests without a cluster never load the client

    from istio_cni.kube import KubeAdapter

    return KubeAdapter(KubeClient.from_config(settings.kubeconfig), settings.node_name)


async def build(
    settings: Settings, *, view: KubeView | None = None, annotator: Annotator | None = None
) -> App:
    """Start the agent. Without ``view``/``annotator`` it talks to the cluster (in-cluster or KUBECONFIG)."""
    registry = mk_metrics.new_registry()
    mk_metrics.BuildMetrics(registry, "istio-cni", "dev")
    metrics = CniMetrics(registry)
    readiness = Readiness("install", "kube", "zds")
    tasks = TaskOwner("istio-cni")
    kube = _kube(settings) if view is None or annotator is None else None
    view = view or kube
    annotator = annotator or kube
    if view is None or annotator is None:
        raise ValueError("pass both view and annotator, or neither")
    dp_cfg = _dataplane_config(settings)
    host = host_rules(settings)
    dataplane = MeshDataplane(dp_cfg, annotator, metrics, host)
    hub = ZtunnelHub(
        settings.ztunnel_uds, dataplane.snapshot, dataplane.on_snapshot_acked, metrics, snapshots_open=False
    )
    dataplane.hub = hub
    controller = PodController(
        view,
        dataplane,
        settings.enablement_selectors,
        settings.exclude_namespaces,
        retry_s=settings.retry_interval,
        reapply_on_startup=settings.reconcile_on_startup,
    )
    plugin_server = PluginEventServer(
        f"{settings.run_dir}/{PLUGIN_EVENT_SOCKET}", controller.plugin_add, metrics
    )
    app = App(
        settings, dataplane, hub, controller, plugin_server, readiness, registry, tasks, host=host, kube=kube
    )
    try:
        await _start(app, metrics)
    except BaseException:
        await app.close()
        raise
    return app


async def _start(app: App, metrics: CniMetrics) -> None:
    s = app.settings
    web_app = web.Application()
    app.readiness.add_routes(web_app, (READY_PATH,))
    app.servers["readiness"] = await start_http(web_app, s.listen_address, s.readiness_port)
    metrics_app = web.Application()
    mk_metrics.add_metrics_routes(metrics_app, app.registry)
    app.servers["metrics"] = await start_http(metrics_app, s.listen_address, s.metrics_port)
    if app.host is not None:
        try:
            await app.host.install()
        except RuleError as exc:  # e.g. no ipset on the node: run on, but say loudly what is lost
            log.error(  # noqa: TRY400 - the message is the useful part
                "node probe rules could not be installed; kubelet probes to enrolled pods will be captured"
                " by ztunnel (is ipset installed?)",
                extra=kv(error=str(exc)),
            )
            app.host.netns.close()
            app.host = app.dataplane.host = None
    await app.hub.start()
    app.readiness.set("zds")
    await app.plugin_server.start()
    if app.kube is not None:
        app.kube.connect(app.controller)
        await app.kube.start()
    app.controller.resync()
    app.readiness.set("kube")
    app.tasks.spawn(app.controller.run(), name="controller")
    app.tasks.spawn(_open_snapshots_after_reconcile(app), name="zds-gate")
    app.tasks.spawn(app.dataplane.retry_loop(s.retry_interval), name="zds-retry")
    if s.install_cni:
        app.installer = Installer(
            s.cni_bin_dir, s.cni_conf_dir, s.run_dir, s.plugin_python, _entry(s), s.cni_conf_name,
            in_cluster_kubeconfig(), runtime=choose_runtime(s.plugin_runtime, s.plugin_python),
        )  # fmt: skip
        installed = asyncio.Event()
        app.tasks.spawn(_watch_install(app.installer, installed, metrics), name="install")
        app.tasks.spawn(_mark_ready(app.readiness, installed), name="install-ready")
    else:
        app.readiness.set("install")
    log.info("istio-cni node agent started", extra=kv(node=s.node_name, zds=s.ztunnel_uds))


async def _watch_install(installer: Installer, ready: asyncio.Event, metrics: CniMetrics) -> None:
    """Run the installer and mirror its counters into the metrics."""
    seen = {"writes": 0, "failures": 0, "repairs": 0}
    task = asyncio.create_task(installer.watch(ready))
    try:
        while True:
            await installer.wait_changed()
            metrics.install_ready.set(1 if installer.chained_into else 0)
            metrics.installs.labels(result="success").inc(installer.writes - seen["writes"])
            metrics.installs.labels(result="failure").inc(installer.failures - seen["failures"])
            metrics.install_repairs.inc(installer.repairs - seen["repairs"])
            seen = {"writes": installer.writes, "failures": installer.failures, "repairs": installer.repairs}
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _open_snapshots_after_reconcile(app: App) -> None:
    await app.controller.idle.wait()
    app.hub.open_snapshots()
    stale = 0
    if app.host is not None:
        keep = {ip for rec in app.dataplane.pods.values() for ip in rec.ips}
        stale = await app.host.sync_ips(keep)
    log.info("start-up reconcile done", extra=kv(pods=len(app.dataplane.pods), stale_probe_ips=stale))


async def _mark_ready(readiness: Readiness, installed: asyncio.Event) -> None:
    await installed.wait()
    readiness.set("install")
