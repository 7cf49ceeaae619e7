"""``python -m istio_cni`` runs the node agent; ``python -m istio_cni uninstall`` cleans the node and exits.

On SIGTERM the agent stops; it also uninstalls from the node when ``AMBIENT_DISABLE_SAFE_UPGRADE`` is set or
its DaemonSet is gone (a Helm uninstall rather than an upgrade), as upstream decides.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable

from meshkit import logs
from meshkit.drain import install_sigterm
from meshkit.logs import kv
from meshkit.settings import load

from istio_cni.app import App, build, host_rules
from istio_cni.install import Installer
from istio_cni.settings import Settings

DAEMONSET_NAME = "istio-cni-node"
# How long a stopping agent keeps asking the API server whether its DaemonSet is gone before it falls back to
# keeping the plugin. Well inside the chart's grace period (30 s), long enough to ride out a busy API server.
DECISION_BUDGET_S = 10.0
log = logging.getLogger("cni")


async def decide_uninstall(
    daemonset_gone: Callable[[], Awaitable[bool]],
    budget_s: float = DECISION_BUDGET_S,
    first_delay_s: float = 0.2,
) -> bool:
    """Whether a stopping agent removes itself from the node: ask until answered or ``budget_s`` runs out.

    An unanswered question keeps the plugin (fail safe: new pods wait for the next agent instead of starting
    outside the mesh), but one slow or failed API call must not decide it, because on a real uninstall no
    agent comes back to clean up.
    """
    deadline = time.monotonic() + budget_s
    delay = first_delay_s
    attempt = 0
    while True:
        attempt += 1
        try:
            per_try = min(deadline - time.monotonic(), budget_s / 4)  # one hung call must not use it all
            async with asyncio.timeout(max(per_try, 0.05)):
                return await daemonset_gone()
        except Exception as exc:  # any failure means "no answer yet"
            error = str(exc) or type(exc).__name__
        remaining = deadline - time.monotonic()
        if remaining <= delay:
            log.warning(
                "cannot tell upgrade from uninstall; keeping the plugin",
                extra=kv(error=error, attempts=attempt),
            )
            return False
        log.info("DaemonSet check failed; asking again", extra=kv(error=error, attempt=attempt))
        await asyncio.sleep(delay)
        delay = min(delay * 2, 2.0)


async def _should_uninstall(app: App) -> bool:
    if app.settings.safe_upgrade_disabled:
        return True
    kube = app.kube
    if kube is None:
        return False
    namespace = app.settings.pod_namespace
    return await decide_uninstall(lambda: kube.daemonset_gone(namespace, DAEMONSET_NAME))


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


async def serve(settings: Settings, start: Callable[[Settings], Awaitable[App]] = build) -> None:
    """Run the agent until SIGTERM/SIGINT, then stop (and uninstall when this is an uninstall).

    The signal handler goes in before start-up: the agent chains its plugin early in start-up, and a SIGTERM
    arriving then (a Helm uninstall racing a rollout) must still reach the uninstall decision rather than kill
    the process with the plugin left behind.
    """
    stop = asyncio.Event()
    remove = install_sigterm(asyncio.get_running_loop(), stop.set, also_sigint=True)
    try:
        app = await start(settings)
        try:
            await stop.wait()
        finally:
            uninstall = await _should_uninstall(app)
            log.info("shutting down", extra=kv(uninstall=uninstall))
            if uninstall:
                await app.uninstall()
            await app.close()
    finally:
        remove()


async def _run(settings: Settings, uninstall_only: bool) -> None:
    if uninstall_only:
        await uninstall_node(settings)
        return
    await serve(settings)


def main() -> None:
    settings = load(Settings)
    logs.setup(settings.log_level, settings.log_json)
    asyncio.run(_run(settings, uninstall_only=sys.argv[1:] == ["uninstall"]))


if __name__ == "__main__":
    main()
