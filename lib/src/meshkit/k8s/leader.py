"""Leader election on a ``coordination.k8s.io/v1`` Lease, as client-go's leaderelection does it.

One :class:`LeaderElector` per lease: it tries to acquire (create, or take over an expired lease) every
``retry_s``, renews every ``retry_s`` while leading, and gives up leadership when it cannot renew within
``renew_deadline_s``. Writes use the Lease's resourceVersion (optimistic concurrency), so two replicas can
never both believe they hold it for longer than the lease duration. Expiry is judged, as client-go does,
by how long *this* replica has seen the same record unchanged on its own monotonic clock, never by
comparing the holder's ``renewTime`` with the local wall clock: clock skew between nodes cannot make a
replica take a lease that is still being renewed. ``leading`` is an :class:`asyncio.Event`;
``on_started`` / ``on_stopped`` callbacks let a controller start and stop its writers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

from meshkit.k8s.client import ApiError, Conflict, KubeClient, NotFound
from meshkit.k8s.resources import LEASES, Obj
from meshkit.logs import kv

__all__ = ["LeaderElector"]

log = logging.getLogger("k8s.leader")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _fmt(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


class LeaderElector:
    def __init__(
        self,
        client: KubeClient,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_duration_s: float = 15.0,
        renew_deadline_s: float = 10.0,
        retry_s: float = 2.0,
        on_started: Callable[[], None] | None = None,
        on_stopped: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration_s = lease_duration_s
        self.renew_deadline_s = renew_deadline_s
        self.retry_s = retry_s
        self.on_started = on_started
        self.on_stopped = on_stopped
        self.leading = asyncio.Event()
        self._last_renew: dt.datetime | None = None
        self._clock = clock
        self._observed: tuple[Any, ...] | None = None  # the lease record as last seen
        self._observed_at = 0.0  # local monotonic time it was first seen as it is

    async def run(self) -> None:
        """Campaign and renew until cancelled; releases nothing on exit (the lease simply expires)."""
        try:
            while True:
                ok = await asyncio.to_thread(self.try_acquire_or_renew)
                self._transition(ok)
                await asyncio.sleep(self.retry_s)
        finally:
            self._transition(False)

    def _transition(self, ok: bool) -> None:
        now = _now()
        if ok:
            self._last_renew = now
            if not self.leading.is_set():
                log.info("became leader", extra=kv(lease=self.name, identity=self.identity))
                self.leading.set()
                if self.on_started:
                    self.on_started()
            return
        expired = self._last_renew is None or (now - self._last_renew).total_seconds() > self.renew_deadline_s
        if self.leading.is_set() and expired:
            log.warning("lost leadership", extra=kv(lease=self.name, identity=self.identity))
            self.leading.clear()
            if self.on_stopped:
                self.on_stopped()

    def _spec(self, acquire: dt.datetime, transitions: int) -> Obj:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self.lease_duration_s),
            "acquireTime": _fmt(acquire),
            "renewTime": _fmt(_now()),
            "leaseTransitions": transitions,
        }

    def try_acquire_or_renew(self) -> bool:
        """One round (blocking): True if we hold the lease afterwards."""
        try:
            lease = self.client.get(LEASES, self.name, self.namespace)
        except NotFound:
            meta = {"name": self.name, "namespace": self.namespace}
            spec = self._spec(_now(), 0)
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}
            try:
                self.client.create(LEASES, body, self.namespace)
            except (Conflict, ApiError):
                return False
            self._observe(spec)
            return True
        except Exception as exc:
            log.warning("lease read failed", extra=kv(lease=self.name, error=str(exc)))
            return False
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        duration = float(spec.get("leaseDurationSeconds") or self.lease_duration_s)
        now = self._observe(spec)
        if holder and holder != self.identity and now - self._observed_at < duration:
            return False  # another holder, renewed (as far as we can tell) within the lease duration
        transitions = int(spec.get("leaseTransitions") or 0) + (1 if holder != self.identity else 0)
        acquire = _parse(spec.get("acquireTime")) if holder == self.identity else None
        lease["spec"] = self._spec(acquire or _now(), transitions)
        try:
            self.client.replace(LEASES, lease, self.namespace)
        except Exception as exc:
            log.info("lease update lost", extra=kv(lease=self.name, error=str(exc)))
            return False
        self._observe(lease["spec"])
        return True

    def _observe(self, spec: Obj) -> float:
        """Note the record; returns the local time. ``_observed_at`` moves only when the record changed."""
        record = tuple(
            spec.get(k) for k in ("holderIdentity", "renewTime", "acquireTime", "leaseTransitions")
        )
        now = self._clock()
        if record != self._observed:
            self._observed, self._observed_at = record, now
        return now
