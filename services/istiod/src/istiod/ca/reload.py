"""Pick up a rotated plug-in CA (``cacerts``) without restarting istiod.

:class:`RootOfTrustReloader` re-runs the loader (files or Secrets, see :mod:`istiod.ca.rootoftrust`) on an
interval; when the signing certificate or the roots change it swaps the CA's bundle (bundles are immutable, so
a request signs with the old or the new one, never a mix) and tells its listeners: the root ConfigMap
publisher re-publishes, and the serving credentials re-issue istiod's certificate on the next handshake.
Workload certificates move to the new chain as the node proxies refresh them at half-life.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable

from istiod.ca.authority import CertificateAuthority, KeyCertBundle
from meshkit.logs import kv

__all__ = ["RootOfTrustReloader"]

log = logging.getLogger("ca.reload")

Listener = Callable[[KeyCertBundle], Awaitable[object] | object]


def _same(a: KeyCertBundle, b: KeyCertBundle) -> bool:
    return a.signing_cert == b.signing_cert and a.intermediates == b.intermediates and a.roots == b.roots


class RootOfTrustReloader:
    def __init__(
        self, ca: CertificateAuthority, load: Callable[[], Awaitable[KeyCertBundle]], interval_s: float = 60.0
    ) -> None:
        self._ca = ca
        self._load = load
        self._interval = interval_s
        self._listeners: list[Listener] = []

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def check_once(self) -> bool:
        """Reload; returns True when the bundle changed. A bundle that fails to load keeps the current one."""
        try:
            bundle = await self._load()
        except Exception as exc:
            log.warning("CA key material failed to reload; keeping the current one", extra=kv(error=str(exc)))
            return False
        if _same(bundle, self._ca.bundle):
            return False
        self._ca.bundle = bundle
        log.info(
            "CA key material changed",
            extra=kv(source=bundle.source, subject=str(bundle.signing_cert.subject)),
        )
        for listener in self._listeners:
            result = listener(bundle)
            if inspect.isawaitable(result):
                await result
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.check_once()
