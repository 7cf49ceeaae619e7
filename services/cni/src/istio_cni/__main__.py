"""``python -m istio_cni`` runs the node agent; ``python -m istio_cni uninstall`` cleans the node and exits.

On SIGTERM the agent stops; it also uninstalls from the node when ``AMBIENT_DISABLE_SAFE_UPGRADE`` is set or
its DaemonSet is gone (a Helm uninstall rather than an upgrade), as upstream decides.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from meshkit import logs
from meshkit.drain import install_sigterm
from meshkit.logs import kv
from meshkit.settings import load

from istio_cni.app import App, build, host_rules
from istio_cni.install import Installer
from istio_cni.settings import Settings

DAEMONSET_NAME = "istio-cni-node"
log = logging.getLogger("cni")


async def _should_uninstall(app: App) -> bool:
    if app.settings.safe_upgrade_disabled:
        return True
    if app.kube is None:
        return False
    try:
        gone: bool = await app.kube.daemonset_gone(app.settings.pod_namespace, DAEMONSET_NAME)
    except Exception as exc:
        log.warning("cannot tell upgrade from uninstall; keeping the plugin", extra=kv(error=str(exc)))
        return False  # fail safe: new pods wait for the next agent instead of starting outside the mesh
    return gone


async def uninstall_node(settings: Settings) -> None:
    """Remove everything the agent put on the node, without starting it (Helm hooks, operators)."""
    installer = Installer(
        settings.cni_bin_dir, settings.cni_conf_dir, settings.run_dir, settings.plugin_python, {}
    )
    installer.uninstall()
    host = host_rules(settings)
    if host is not None:
        try:
            await host.uninstall()
        finally:
            host.netns.close()


async def _run(settings: Settings, uninstall_only: bool) -> None:
    if uninstall_only:
        await uninstall_node(settings)
        return
    app = await build(settings)
    stop = asyncio.Event()
    remove = install_sigterm(asyncio.get_running_loop(), stop.set, also_sigint=True)
    try:
        await stop.wait()
    finally:
        remove()
        uninstall = await _should_uninstall(app)
        log.info("shutting down", extra=kv(uninstall=uninstall))
        if uninstall:
            await app.uninstall()
        await app.close()


def main() -> None:
    settings = load(Settings)
    logs.setup(settings.log_level, settings.log_json)
    asyncio.run(_run(settings, uninstall_only=sys.argv[1:] == ["uninstall"]))


if __name__ == "__main__":
    main()
