"""The workload proxy manager: turns ZDS events into started and stopped per-pod proxies (§5.3 of
wire-contracts.md).

- ``WorkloadAdded``: start the pod's proxy (listeners in its netns). The same uid with the same netns inode
  is a no-op (a re-sent snapshot); a different inode starts a new proxy and drains the old one beside it.
  A failure to start is acked with ``failure to start proxy : ...`` and the pod stays *pending*; pending pods
  are retried every 5 s.
- ``WorkloadKept``: the pod stays as it is (it must already run: without a netns it cannot be started).
- ``WorkloadDeleted``: stop the proxy at once.
- ``ZdsSnapshotSent``: stop every proxy whose uid the snapshot did not name; the manager is then *snapshot
  done*, one of the readiness conditions ("workload proxy manager": snapshot received, nothing pending).

The manager owns every netns fd it receives: the fd is kept open while the proxy runs (it pins the netns)
and closed when the proxy stops or the add fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from meshkit.drain import TaskOwner
from meshkit.logs import kv
from meshkit.netns import is_netns_fd
from meshkit.zds import WorkloadAdded, WorkloadDeleted, WorkloadInfo, WorkloadKept, ZdsEvent, ZdsSnapshotSent

from ztunnel.metrics import WorkloadManagerMetrics

__all__ = ["PodProxy", "PodProxyFactory", "WorkloadProxyManager"]

log = logging.getLogger("inpod")

RETRY_INTERVAL_S = 5.0
#: How long a replaced pod proxy (same uid, new netns) may finish its connections.
REPLACE_DRAIN_S = 5.0


class PodProxy(Protocol):
    """A running proxy for one pod (listeners in its netns)."""

    async def stop(self) -> None: ...


PodProxyFactory = Callable[[str, WorkloadInfo, int], Awaitable[PodProxy]]


@dataclass(slots=True)
class _Pod:
    uid: str
    info: WorkloadInfo
    netns_fd: int
    inode: int
    proxy: PodProxy | None = None
    error: str = ""

    @property
    def state(self) -> str:
        return "Up" if self.proxy is not None else "Pending"


class WorkloadProxyManager:
    def __init__(self, factory: PodProxyFactory, metrics: WorkloadManagerMetrics | None = None) -> None:
        self._factory = factory
        self._metrics = metrics
        self._background = TaskOwner("inpod-retire")
        self.pods: dict[str, _Pod] = {}
        self.snapshot_done = False
        self._ready_changed: list[Callable[[bool], None]] = []

    @property
    def ready(self) -> bool:
        return self.snapshot_done and not any(p.proxy is None for p in self.pods.values())

    def on_ready_change(self, callback: Callable[[bool], None]) -> None:
        self._ready_changed.append(callback)

    async def handle(self, event: ZdsEvent) -> str:
        """Apply one ZDS event; returns the ack error ("" for success)."""
        if isinstance(event, WorkloadAdded):
            error = await self._add(event.uid, event.info, event.netns_fd)
        elif isinstance(event, WorkloadDeleted):
            await self._stop(event.uid)
            error = ""
        elif isinstance(event, WorkloadKept):
            error = ""
        else:
            await self._snapshot(event)
            error = ""
        self._update()
        return error

    async def _add(self, uid: str, info: WorkloadInfo, netns_fd: int) -> str:
        inode = os.fstat(netns_fd).st_ino
        log.debug("ZDS add", extra=kv(uid=uid, netns_inode=inode, is_netns=is_netns_fd(netns_fd)))
        current = self.pods.get(uid)
        if current is not None and current.inode == inode and current.proxy is not None:
            os.close(netns_fd)  # the same netns again (a re-sent snapshot): keep the running proxy
            return ""
        if current is not None:  # a new sandbox for the same pod: drain the old proxy beside the new one
            log.info("pod netns changed, replacing its proxy", extra=kv(uid=uid))
            old = self.pods.pop(uid)
            self._background.spawn(self._retire(old), name=f"drain-{uid}")
        pod = _Pod(uid, info, netns_fd, inode)
        self.pods[uid] = pod
        return await self._start(pod)

    async def _start(self, pod: _Pod) -> str:
        try:
            pod.proxy = await self._factory(pod.uid, pod.info, pod.netns_fd)
        except Exception as exc:
            pod.error = f"failure to start proxy : {exc}"
            log.warning("pod proxy failed to start", extra=kv(uid=pod.uid, error=str(exc)))
            return pod.error
        pod.error = ""
        if self._metrics is not None:
            self._metrics.started.inc()
        log.info("pod proxy started", extra=kv(uid=pod.uid, pod=f"{pod.info.namespace}/{pod.info.name}"))
        return ""

    async def _stop(self, uid: str) -> None:
        pod = self.pods.pop(uid, None)
        if pod is None:
            return
        try:
            if pod.proxy is not None:
                await pod.proxy.stop()
                if self._metrics is not None:
                    self._metrics.stopped.inc()
                log.info("pod proxy stopped", extra=kv(uid=uid))
        finally:
            with contextlib.suppress(OSError):
                os.close(pod.netns_fd)

    async def _retire(self, pod: _Pod) -> None:
        try:
            if pod.proxy is not None:
                drain = getattr(pod.proxy, "drain", None)
                if drain is not None:
                    await drain(REPLACE_DRAIN_S)
                else:
                    await pod.proxy.stop()
                if self._metrics is not None:
                    self._metrics.stopped.inc()
        finally:
            with contextlib.suppress(OSError):
                os.close(pod.netns_fd)

    async def _snapshot(self, event: ZdsSnapshotSent) -> None:
        for uid in [u for u in self.pods if u not in event.named]:
            log.info("dropping pod not in the ZDS snapshot", extra=kv(uid=uid))
            await self._stop(uid)
        self.snapshot_done = True

    async def retry_pending(self) -> None:
        """Try to start pending pods once (the retry loop calls this every 5 s)."""
        for pod in [p for p in self.pods.values() if p.proxy is None]:
            await self._start(pod)
        self._update()

    async def run_retries(self) -> None:
        while True:
            await asyncio.sleep(RETRY_INTERVAL_S)  # periodic retry, as upstream
            await self.retry_pending()

    def _update(self) -> None:
        if self._metrics is not None:
            self._metrics.active.set(sum(1 for p in self.pods.values() if p.proxy is not None))
            self._metrics.pending.set(sum(1 for p in self.pods.values() if p.proxy is None))
        for callback in self._ready_changed:
            callback(self.ready)

    async def close(self) -> None:
        await self._background.close()
        for uid in list(self.pods):
            await self._stop(uid)

    def dump(self) -> dict[str, object]:
        """``workloadState`` for /config_dump."""
        return {
            uid: {
                "state": pod.state,
                "info": {
                    "name": pod.info.name,
                    "namespace": pod.info.namespace,
                    "serviceAccount": pod.info.service_account,
                },
                **({"error": pod.error} if pod.error else {}),
            }
            for uid, pod in sorted(self.pods.items())
        }
