"""``python -m waypoint``: settings from the environment, certificate from istiod's CA, config over delta xDS.

With ``WAYPOINT_CONFIG_FILE`` set the config comes from that file instead (no xDS), and with
``WAYPOINT_CERT_DIR`` (``cert-chain.pem``, ``key.pem``, ``root-cert.pem``) the certificate comes from files
instead of the CA (benchmarks, local runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import uvloop
from meshkit import logs
from meshkit.drain import install_sigterm
from meshkit.identity.caclient import CaClient, CaClientConfig, CaClientSettings
from meshkit.identity.certs import WorkloadCertificate
from meshkit.identity.spiffe import Identity
from meshkit.settings import load

from waypoint.app import build
from waypoint.settings import Settings
from waypoint.xds import xds_source


class FileFetcher:
    """Serves one certificate from PEM files (no rotation)."""

    def __init__(self, directory: str) -> None:
        self.dir = Path(directory)

    async def fetch(self, identity: Identity) -> WorkloadCertificate:
        now = datetime.now(UTC)
        return WorkloadCertificate(
            identity=identity,
            chain_pem=(self.dir / "cert-chain.pem").read_bytes(),
            private_key_pem=(self.dir / "key.pem").read_bytes(),
            roots_pem=(self.dir / "root-cert.pem").read_bytes(),
            not_before=now - timedelta(hours=1),
            not_after=now + timedelta(days=365),
        )


async def main_async() -> None:
    settings = load(Settings)
    logs.setup(settings.log_level, settings.log_json)
    cert_dir = os.environ.get("WAYPOINT_CERT_DIR", "")
    ca_settings = load(CaClientSettings)
    fetcher = FileFetcher(cert_dir) if cert_dir else CaClient(CaClientConfig.from_settings(ca_settings))
    source = None
    if not settings.config_file:
        source = xds_source(settings, ca_settings.root_ca, ca_settings.auth_token)
    app = await build(settings, fetcher=fetcher, config_source=source)
    install_sigterm(asyncio.get_running_loop(), app.request_shutdown, also_sigint=True)
    print(f"READY {app.hbone_address[1]}", flush=True)
    await app.stopped.wait()


def main() -> None:
    # uvloop: cheaper socket and TLS plumbing per request (python-perf.md §3i); WAYPOINT_EVENT_LOOP=asyncio
    # falls back to the standard loop.
    with contextlib.suppress(KeyboardInterrupt):
        if os.environ.get("WAYPOINT_EVENT_LOOP", "uvloop") == "asyncio":
            asyncio.run(main_async())
        else:
            uvloop.run(main_async())


if __name__ == "__main__":
    main()
