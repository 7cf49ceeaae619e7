"""The ZDS side of the node agent: which ztunnels are connected and what each has been told (§3.5, wire §5).

Built on :mod:`meshkit.zds` (framing, protocol cores, server socket). Rules kept here:

* a new ztunnel gets the snapshot after its hello: every known pod as ``add`` with its netns fd (``keep`` when
  the netns is gone), each acked, then ``snapshot_sent``; only then does it count as connected;
* a new ``add`` goes to the most recently connected ztunnel (the one taking over during an upgrade); a ``del``
  goes to all of them;
* one lock serializes snapshots and adds/dels, so no ztunnel misses a change made while its snapshot was sent;
* idle connections are probed every few seconds (upstream keepalive); a dead one is dropped;
* no snapshot goes out before :meth:`ZtunnelHub.open_snapshots` (the agent calls it once its start-up
  reconcile is done): a ztunnel drops every pod a snapshot leaves out, so an early, empty snapshot after an
  agent restart would cut the traffic of every pod on the node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from meshkit.logs import kv
from meshkit.zds import WorkloadInfo, ZdsError, ZdsServer, ZdsServerConnection

from istio_cni.metrics import CniMetrics
from istio_cni.netns import Netns

log = logging.getLogger("cni.zds")
KEEPALIVE_S = 5.0


@dataclass(frozen=True, slots=True)
class ZdsPod:
    uid: str
    info: WorkloadInfo
    netns: Netns | None


SnapshotSource = Callable[[], list[ZdsPod]]
SnapshotCallback = Callable[[list[str], list[str]], Awaitable[None]]  # (accepted uids, refused uids)


class ZtunnelHub:
    """Owns the ZDS server socket and the ordered list of ready ztunnel connections."""

    def __init__(
        self,
        path: str,
        snapshot: SnapshotSource,
        on_snapshot_acked: SnapshotCallback,
        metrics: CniMetrics,
        *,
        keepalive_s: float = KEEPALIVE_S,
        snapshots_open: bool = True,
    ) -> None:
        self._snapshot = snapshot
        self._on_snapshot_acked = on_snapshot_acked
        self._metrics = metrics
        self._keepalive_s = keepalive_s
        self._server = ZdsServer(path, self._serve)
        self._lock = asyncio.Lock()
        self._ready: list[ZdsServerConnection] = []  # oldest first
        self.changed = asyncio.Condition()  # notified when a ztunnel becomes ready or goes away
        self.idle_since: float | None = None  # loop time since when no ztunnel is connected
        self._snapshots_open = asyncio.Event()
        if snapshots_open:
            self._snapshots_open.set()

    @property
    def connected(self) -> int:
        return len(self._ready)

    async def start(self) -> None:
        self.idle_since = asyncio.get_running_loop().time()
        await self._server.start()

    async def close(self) -> None:
        await self._server.close()

    async def wait_connected(self, count: int = 1) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: len(self._ready) >= count)

    async def _notify(self) -> None:
        self._metrics.ztunnel_connected.set(len(self._ready))
        async with self.changed:
            self.changed.notify_all()

    def open_snapshots(self) -> None:
        """The pod cache is complete: connected and future ztunnels may get their snapshot."""
        self._snapshots_open.set()

    async def _serve(self, conn: ZdsServerConnection) -> None:
        await self._snapshots_open.wait()
        async with self._lock:
            results = [await self._send_snapshot_pod(conn, pod) for pod in self._snapshot()]
            await conn.snapshot_sent()
            self._ready.append(conn)
            self.idle_since = None
        acked = [uid for uid, ok in results if ok]
        refused = [uid for uid, ok in results if not ok]
        log.info("ztunnel snapshot acked", extra=kv(pods=len(acked), ztunnels=len(self._ready)))
        try:
            await self._on_snapshot_acked(
                acked, refused
            )  # annotations first: "connected" means they are written
            await self._notify()
            while await self._keepalive(conn):
                pass
        finally:
            self._forget(conn)
            log.info("ztunnel disconnected", extra=kv(ztunnels=len(self._ready)))
            await self._notify()

    async def _keepalive(self, conn: ZdsServerConnection) -> bool:
        await asyncio.sleep(self._keepalive_s)  # a period, not a wait for an event: upstream probes when idle
        return not conn.closed and await conn.probe()

    async def _send_snapshot_pod(self, conn: ZdsServerConnection, pod: ZdsPod) -> tuple[str, bool]:
        """(uid, True if ztunnel now runs the pod's proxy); a ``keep`` cannot start one."""
        if pod.netns is None:
            ack = await conn.keep(pod.uid)
        else:
            ack = await conn.add(pod.uid, pod.info, pod.netns.fd)
        if not ack.ok:
            log.warning("ztunnel refused pod in snapshot", extra=kv(uid=pod.uid, error=ack.error))
        return pod.uid, ack.ok and pod.netns is not None

    async def add(self, pod: ZdsPod) -> bool:
        """Hand ``pod`` to the newest ztunnel; False if none is connected or it did not accept the pod."""
        if pod.netns is None:
            return False
        async with self._lock:
            if not self._ready:
                return False
            conn = self._ready[-1]
            try:
                ack = await conn.add(pod.uid, pod.info, pod.netns.fd)
            except ZdsError as exc:
                log.warning("ZDS add failed; dropping the connection", extra=kv(uid=pod.uid, error=str(exc)))
                self._drop(conn)
                return False
        if not ack.ok:
            log.warning("ztunnel could not start the pod proxy", extra=kv(uid=pod.uid, error=ack.error))
        self._metrics.zds_requests.labels(type="add", result="ok" if ack.ok else "nack").inc()
        return ack.ok

    async def delete(self, uid: str) -> None:
        """Tell every connected ztunnel that the pod is gone."""
        async with self._lock:
            for conn in list(self._ready):
                try:
                    await conn.delete(uid)
                except ZdsError as exc:
                    log.warning("ZDS del failed; dropping the connection", extra=kv(uid=uid, error=str(exc)))
                    self._drop(conn)
        self._metrics.zds_requests.labels(type="del", result="ok").inc()

    def _drop(self, conn: ZdsServerConnection) -> None:
        conn.close()
        self._forget(conn)

    def _forget(self, conn: ZdsServerConnection) -> None:
        with contextlib.suppress(ValueError):
            self._ready.remove(conn)
        if not self._ready and self.idle_since is None:
            self.idle_since = asyncio.get_running_loop().time()
