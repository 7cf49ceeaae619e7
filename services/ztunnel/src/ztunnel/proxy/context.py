"""What every proxy handler needs: process-wide services plus one pod's context.

``ProxyServices`` is built once by the composition root; ``PodContext`` once per captured pod. Handlers take
both explicitly (no globals), so the same handler code runs in-pod (a ``NetnsSocketFactory``) and in tests on
loopback (a ``HostSocketFactory``).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from meshkit.drain import Drain
from meshkit.hbone.settings import HboneSettings
from meshkit.identity.certs import WorkloadCertificate
from meshkit.identity.spiffe import Identity
from meshkit.sockets import SocketFactory
from meshkit.zds import WorkloadInfo

from ztunnel.metrics import DnsMetrics, ProxyMetrics
from ztunnel.proxy.telemetry import ConnectionRecord
from ztunnel.settings import Settings
from ztunnel.state.records import Workload
from ztunnel.state.state import State

__all__ = ["ILLEGAL_PORTS", "Certificates", "PodContext", "ProxyServices"]

log = logging.getLogger("proxy")

#: Ports that must never be a proxied destination: prevents loops and double tunnelling (behaviour.md §1).
ILLEGAL_PORTS = frozenset({15001, 15006, 15008})


class Certificates(Protocol):
    """The part of ``meshkit.identity.CertificateManager`` the proxies use."""

    def workload_added(self, uid: str, identity: Identity) -> None: ...

    def workload_removed(self, uid: str) -> None: ...

    def find_certificate(self, identity: Identity) -> WorkloadCertificate | None: ...

    async def fetch_certificate(self, identity: Identity) -> WorkloadCertificate: ...


@dataclass
class ProxyServices:
    settings: Settings
    state: State
    certs: Certificates
    metrics: ProxyMetrics
    dns_metrics: DnsMetrics
    drain: Drain
    rng: random.Random = field(default_factory=random.Random)
    #: original-source spoofing towards the app (IP_TRANSPARENT + bind to the peer IP); in-pod only.
    spoof_source: bool = True
    #: HBONE tuning (``HTTP2_*``, ``POOL_*``, ``HBONE_*``), loaded once by ``app.build`` for every pod's pool
    #: and HBONE server.
    hbone: HboneSettings = field(default_factory=HboneSettings)
    #: connections whose byte counts are polled (HBONE relays count inside meshkit.hbone): (record, totals);
    #: ``totals()`` returns None once the connection is gone, which drops the entry.
    live: set[tuple[ConnectionRecord, Callable[[], tuple[int, int] | None]]] = field(default_factory=set)

    def flush_live(self) -> None:
        for entry in list(self.live):
            totals = entry[1]()
            if totals is None:
                self.live.discard(entry)
            else:
                entry[0].sync(*totals)


@dataclass
class PodContext:
    """One captured pod: its ZDS identity, its socket factory, and (once known) its WDS workload."""

    uid: str
    info: WorkloadInfo
    factory: SocketFactory
    services: ProxyServices
    workload: Workload | None = None
    on_workload: list[Callable[[Workload], None]] = field(default_factory=list)

    async def fetch_workload(self) -> Workload | None:
        """The pod's WDS workload, waiting up to ``WORKLOAD_WAIT`` for it (hold, don't drop)."""
        if self.workload is not None:
            return self.workload
        s = self.services
        wl = await s.state.fetch_pod_workload(
            self.info.name,
            self.info.namespace,
            self.info.service_account,
            s.settings.node_name,
            s.settings.workload_wait_s,
        )
        if wl is not None and self.workload is None:
            self.workload = wl
            for callback in self.on_workload:
                callback(wl)
        return wl

    def current_workload(self) -> Workload | None:
        """The latest version of the pod's workload (policy lists can change)."""
        if self.workload is None:
            return None
        return self.services.state.workloads.by_uid.get(self.workload.uid, self.workload)
