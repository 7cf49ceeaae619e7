"""``python -m istiod``: load settings, build, serve until SIGTERM/SIGINT, shut down."""

from __future__ import annotations

import asyncio
import logging

from meshkit import logs
from meshkit.drain import install_sigterm
from meshkit.k8s import KubeClient
from meshkit.logs import kv
from meshkit.settings import load

from istiod.app import build
from istiod.settings import Settings


async def main() -> None:
    settings = load(Settings)
    logs.setup(settings.log_level, settings.log_json)
    client = KubeClient.from_config(settings.kubeconfig)
    app = await build(settings, kube_client=client)
    logging.getLogger("istiod").info(
        "istiod serving", extra=kv(**{k: str(v) for k, v in app.addresses.items()})
    )
    stop = asyncio.Event()
    uninstall = install_sigterm(asyncio.get_running_loop(), stop.set, also_sigint=True)
    try:
        await stop.wait()
    finally:
        uninstall()
        await app.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
