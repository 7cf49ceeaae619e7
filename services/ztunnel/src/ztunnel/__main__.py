"""``python -m ztunnel``: read settings from the environment, build the app, run until SIGTERM, drain.

ztunnel runs with ``-OO`` (docstrings and asserts stripped: ~3 MB less RSS, which its 64 MB budget needs).
When started without it, and without an explicit ``PYTHONOPTIMIZE``, it re-executes itself once with
``-OO`` before importing anything heavy (same pid, same environment and arguments).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys


def _reexec_optimized() -> None:
    if sys.flags.optimize < 2 and "PYTHONOPTIMIZE" not in os.environ:
        os.execv(sys.executable, [sys.executable, "-OO", "-m", "ztunnel", *sys.argv[1:]])


async def main_async() -> None:
    from meshkit import logs
    from meshkit.drain import install_sigterm
    from meshkit.identity.caclient import CaClient, CaClientConfig, CaClientSettings, CertificateFetcher
    from meshkit.settings import load

    from ztunnel.app import build
    from ztunnel.identity import LiteCaClient
    from ztunnel.settings import Settings

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
    import uvloop

    from ztunnel.app import tune_process

    tune_process()
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(main_async())


def usage() -> str:
    from meshkit.hbone.settings import HboneSettings
    from meshkit.identity.caclient import CaClientSettings
    from meshkit.settings import describe

    from ztunnel.settings import Settings

    rows = describe(Settings) + describe(CaClientSettings) + describe(HboneSettings)
    width = max(len(var) for var, _, _ in rows)
    lines = [f"  {var:<{width}}  {text} (default {default})" for var, default, text in rows]
    return "usage: python -m ztunnel  (configured by environment variables)\n\n" + "\n".join(lines)


if __name__ == "__main__":
    if {"-h", "--help"} & set(sys.argv[1:]):
        print(usage())
        sys.exit(0)
    _reexec_optimized()
    main()
