"""ztunnel's certificate manager: one workload certificate per identity that has a workload on this node.

Lifecycle of an identity (anchors.md §3c, wire-contracts.md §4.2):
- :meth:`CertificateManager.workload_added` prefetches its certificate the first time a workload with that
  identity arrives; :meth:`workload_removed` forgets it when the last such workload leaves.
- One worker task per identity does every fetch, so concurrent callers share one CSR.
- A new certificate is refreshed at half-life. A failed fetch is retried with exponential back-off (ztunnel's:
  1 s doubling, ±20 % jitter, capped at 150 s); the still-valid certificate keeps serving meanwhile, and the
  retry is never scheduled past its expiry.
- Identities fetched on demand without a workload are dropped at their next wake-up instead of refreshed.

Listeners (:meth:`add_listener`) hear every new certificate and every forget: HBONE rebuilds its
``ssl.SSLContext`` there. ``find_certificate`` never waits; ``fetch_certificate`` may.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from prometheus_client import CollectorRegistry, Counter, Gauge

from meshkit.drain import TaskOwner
from meshkit.identity.caclient import CertificateFetcher
from meshkit.identity.certs import WorkloadCertificate
from meshkit.identity.clock import Clock, SystemClock
from meshkit.identity.pem import load_certificates
from meshkit.identity.spiffe import Identity
from meshkit.logs import kv

__all__ = [
    "Backoff",
    "CertificateListener",
    "CertificateManager",
    "CertificateMetrics",
    "CertificateStatus",
    "CertificateUnavailable",
]

log = logging.getLogger("identity.manager")

CertificateListener = Callable[[Identity, WorkloadCertificate | None], None]


def _rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _dump_cert(cert: x509.Certificate) -> dict[str, str]:
    pem = cert.public_bytes(Encoding.PEM)
    return {
        "pem": base64.b64encode(pem).decode(),
        "serialNumber": str(cert.serial_number),
        "validFrom": _rfc3339(cert.not_valid_before_utc),
        "expirationTime": _rfc3339(cert.not_valid_after_utc),
    }


class CertificateUnavailable(Exception):
    """No valid certificate for an identity: its last fetch failed (the cause is chained)."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Retry delays after failed fetches: ``initial * multiplier**n``, jittered, then capped at ``max_s``."""

    initial_s: float = 1.0
    multiplier: float = 2.0
    max_s: float = 150.0
    jitter: float = 0.2

    def delay(self, failures: int, rng: random.Random) -> float:
        """Delay before the next attempt after ``failures`` consecutive failures (``failures >= 1``)."""
        base = min(self.initial_s * self.multiplier ** (failures - 1), self.max_s)
        if self.jitter:
            base *= rng.uniform(1 - self.jitter, 1 + self.jitter)
        return min(base, self.max_s)


class CertificateMetrics:
    """Certificate manager metrics. Counter names are istio-agent's for CSR requests."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.held = Gauge(
            "workload_certificates_held",
            "Identities this proxy holds a valid certificate for.",
            registry=registry,
        )
        self.fetches = Counter(
            "num_outgoing_requests", "Requests sent to the CA.", ["request_type"], registry=registry
        ).labels(request_type="csr")
        self.failures = Counter(
            "num_failed_outgoing_requests", "Failed requests to the CA.", ["request_type"], registry=registry
        ).labels(request_type="csr")


@dataclass(frozen=True, slots=True)
class CertificateStatus:
    """One identity's state, for ``/config_dump`` and ``istioctl zc certificates``."""

    identity: Identity
    state: str  # "Initializing", "Available" or "Unavailable"
    certificate: WorkloadCertificate | None
    last_error: str
    next_attempt: datetime | None
    workloads: int


@dataclass(slots=True, eq=False)
class _Entry:
    identity: Identity
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    cert: WorkloadCertificate | None = None
    error: BaseException | None = None
    next_attempt: datetime | None = None
    failures: int = 0
    task: asyncio.Task[None] | None = None


class CertificateManager:
    """Holds, prefetches and rotates workload certificates (see the module docstring)."""

    def __init__(
        self,
        fetcher: CertificateFetcher,
        *,
        clock: Clock | None = None,
        metrics: CertificateMetrics | None = None,
        backoff: Backoff = Backoff(),
        max_concurrent_fetches: int = 8,
        rng: random.Random | None = None,
    ) -> None:
        self._fetcher = fetcher
        self._clock: Clock = clock or SystemClock()
        self._metrics = metrics
        self._backoff = backoff
        self._rng = rng or random.Random()
        self._slots = asyncio.Semaphore(max_concurrent_fetches)
        self._entries: dict[Identity, _Entry] = {}
        self._workloads: dict[str, Identity] = {}
        self._refcounts: collections.Counter[Identity] = collections.Counter()
        self._listeners: list[CertificateListener] = []
        self._owner = TaskOwner("certificates")

    # -- workloads on this node -------------------------------------------------------------------------
    def workload_added(self, uid: str, identity: Identity) -> None:
        """A workload with ``identity`` is on this node (idempotent per uid): prefetch its certificate."""
        previous = self._workloads.get(uid)
        if previous == identity:
            return
        self._workloads[uid] = identity
        self._refcounts[identity] += 1
        if previous is not None:
            self._release(previous)
        if identity not in self._entries:
            self._start(identity)

    def workload_removed(self, uid: str) -> None:
        identity = self._workloads.pop(uid, None)
        if identity is not None:
            self._release(identity)

    def _refs(self, identity: Identity) -> int:
        return self._refcounts[identity]

    def _release(self, identity: Identity) -> None:
        self._refcounts[identity] -= 1
        if self._refcounts[identity] <= 0:
            del self._refcounts[identity]
            self.forget_certificate(identity)

    # -- lookups ----------------------------------------------------------------------------------------
    def find_certificate(self, identity: Identity) -> WorkloadCertificate | None:
        """The current valid certificate, without waiting."""
        entry = self._entries.get(identity)
        if entry is None or entry.cert is None or self._clock.now() >= entry.cert.not_after:
            return None
        return entry.cert

    async def fetch_certificate(self, identity: Identity) -> WorkloadCertificate:
        """The certificate for ``identity``, waiting for the first fetch if there is none yet.

        Raises :class:`CertificateUnavailable` when the latest attempt failed and no valid certificate
        remains.
        """
        entry = self._entries.get(identity) or self._start(identity)
        await entry.settled.wait()
        cert = self.find_certificate(identity)
        if cert is not None:
            return cert
        raise CertificateUnavailable(f"no certificate for {identity}: {entry.error}") from entry.error

    def forget_certificate(self, identity: Identity) -> None:
        entry = self._entries.pop(identity, None)
        if entry is None:
            return
        if entry.task is not None:
            entry.task.cancel()
        self._release_waiters(entry, "the identity is no longer needed")
        log.info("certificate forgotten", extra=kv(identity=identity))
        self._update_held()
        if entry.cert is not None:
            self._notify(identity, None)

    @staticmethod
    def _release_waiters(entry: _Entry, reason: str) -> None:
        """Callers still waiting for a first certificate get an error instead of waiting forever."""
        if not entry.settled.is_set():
            entry.error = CertificateUnavailable(reason)
            entry.settled.set()

    def statuses(self) -> list[CertificateStatus]:
        out = []
        for identity, e in sorted(self._entries.items()):
            valid = self.find_certificate(identity)
            state = "Available" if valid else ("Unavailable" if e.settled.is_set() else "Initializing")
            out.append(
                CertificateStatus(
                    identity, state, valid, str(e.error or ""), e.next_attempt, self._refs(identity)
                )
            )
        return out

    def config_dump(self) -> list[dict[str, Any]]:
        """The ``certificates`` section of ztunnel's ``/config_dump`` (wire-contracts.md §6), by identity."""
        out = []
        for s in self.statuses():
            state = f"Unavailable: {s.last_error}" if s.state == "Unavailable" else s.state
            chain = roots = []
            if s.certificate is not None:
                chain = [_dump_cert(c) for c in load_certificates(s.certificate.chain_pem)]
                roots = [_dump_cert(c) for c in load_certificates(s.certificate.roots_pem)]
            out.append({"identity": s.identity.uri, "state": state, "certChain": chain, "rootCerts": roots})
        return out

    # -- listeners --------------------------------------------------------------------------------------
    def add_listener(self, listener: CertificateListener) -> Callable[[], None]:
        """Call ``listener(identity, cert)`` on each new certificate and ``(identity, None)`` on forget."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _notify(self, identity: Identity, cert: WorkloadCertificate | None) -> None:
        for listener in list(self._listeners):
            try:
                listener(identity, cert)
            except Exception:
                log.exception("certificate listener failed", extra=kv(identity=identity))

    # -- the per-identity worker ------------------------------------------------------------------------
    def _start(self, identity: Identity) -> _Entry:
        entry = _Entry(identity)
        self._entries[identity] = entry
        entry.task = self._owner.spawn(self._run(entry), name=str(identity))
        return entry

    async def _run(self, entry: _Entry) -> None:
        while True:
            wake = await self._attempt(entry)
            entry.next_attempt = wake
            await self._clock.sleep_until(wake)
            if self._refs(entry.identity) == 0:
                # Fetched on demand for no workload: let it go rather than keep refreshing it.
                self._entries.pop(entry.identity, None)
                self._update_held()
                if entry.cert is not None:
                    self._notify(entry.identity, None)
                return

    async def _attempt(self, entry: _Entry) -> datetime:
        """One fetch; returns when to wake next."""
        try:
            async with self._slots:
                if self._metrics:
                    self._metrics.fetches.inc()
                cert = await self._fetcher.fetch(entry.identity)
        except Exception as exc:
            return self._failed(entry, exc)
        entry.cert, entry.error, entry.failures = cert, None, 0
        entry.settled.set()
        self._update_held()
        log.info(
            "certificate issued",
            extra=kv(identity=entry.identity, serial=hex(cert.serial), expires=cert.not_after.isoformat()),
        )
        self._notify(entry.identity, cert)
        return cert.refresh_at()

    def _failed(self, entry: _Entry, exc: Exception) -> datetime:
        if self._metrics:
            self._metrics.failures.inc()
        entry.error = exc
        entry.failures += 1
        now = self._clock.now()
        wake = now + timedelta(seconds=self._backoff.delay(entry.failures, self._rng))
        if entry.cert is not None and now < entry.cert.not_after:
            wake = min(wake, entry.cert.not_after)
            log.warning(
                "certificate renewal failed; keeping the valid one",
                extra=kv(identity=entry.identity, error=str(exc), retry=wake.isoformat()),
            )
        else:
            if entry.cert is not None:
                entry.cert = None
                self._notify(entry.identity, None)
            log.warning(
                "certificate fetch failed",
                extra=kv(identity=entry.identity, error=str(exc), retry=wake.isoformat()),
            )
        entry.settled.set()
        self._update_held()
        return wake

    def _update_held(self) -> None:
        if self._metrics:
            self._metrics.held.set(sum(1 for i in self._entries if self.find_certificate(i) is not None))

    async def close(self) -> None:
        """Stop every worker; certificates are dropped."""
        await self._owner.close()
        for entry in self._entries.values():
            self._release_waiters(entry, "the certificate manager is closed")
        self._entries.clear()
        self._workloads.clear()
        self._refcounts.clear()
