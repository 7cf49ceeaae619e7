"""``python -m ztunnel``: read settings from the environment, build the app, run until SIGTERM, drain."""

from __future__ import annotations

import asyncio
import contextlib

import uvloop
from meshkit import logs
from meshkit.drain import install_sigterm
from meshkit.identity.caclient import CaClient, CaClientConfig, CaClientSettings, CertificateFetcher
from meshkit.settings import load

from ztunnel.app import build, tune_process
from ztunnel.identity import LiteCaClient
from ztunnel.settings import Settings


async def main_async() -> None:
    settings = load(Settings)
    logs.setup(settings.log_level, settings.log_json)
    ca_settings = load(CaClientSettings)
    fetcher: CertificateFetcher = (
        LiteCaClient(ca_settings)
        if settings.grpc_client == "lite"
        else CaClient(CaClientConfig.from_settings(ca_settings))
    )
    app = await build(settings, fetcher=fetcher)
    install_sigterm(asyncio.get_running_loop(), app.request_shutdown, also_sigint=True)
    await app.stopped.wait()


def main() -> None:
    tune_process()
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(main_async())


if __name__ == "__main__":
    main()
