"""The agent's ZDS side and pod lifecycle against ZDS clients built on meshkit.zds (playing ztunnel), with
real network namespaces and iptables: enrol, unenrol, pending while no ztunnel, newest-gets-adds, and
restarts of either side.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from istio_cni.dataplane import DataplaneConfig, MeshDataplane
from istio_cni.metrics import CniMetrics
from istio_cni.netns import Netns
from istio_cni.zdshub import ZtunnelHub
from meshkit.metrics import new_registry
from meshkit.zds import (
    WorkloadAdded,
    WorkloadDeleted,
    WorkloadKept,
    ZdsClientConnection,
    ZdsClosed,
    ZdsEvent,
    ZdsSnapshotSent,
)

pytestmark = pytest.mark.root
WAIT_S = 10


class RecordingAnnotator:
    def __init__(self) -> None:
        self.values: dict[tuple[str, str], str | None] = {}
        self.changed = asyncio.Condition()

    async def set_redirection(self, namespace: str, name: str, value: str | None) -> None:
        async with self.changed:
            self.values[(namespace, name)] = value
            self.changed.notify_all()

    async def wait_for(self, key: tuple[str, str], value: str | None) -> None:
        async with asyncio.timeout(WAIT_S), self.changed:
            await self.changed.wait_for(lambda: self.values.get(key, "<unset>") == value)


@dataclass
class FakeZtunnel:
    """A ZDS client that acks everything (or nacks adds while ``nack`` is set) and records events."""

    path: str
    nack: str = ""
    events: list[ZdsEvent] = field(default_factory=list)
    inodes: dict[str, int] = field(default_factory=dict)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    conn: ZdsClientConnection | None = None
    task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.conn = await ZdsClientConnection.connect(self.path)
        self.task = asyncio.create_task(self._run(self.conn))

    async def _run(self, conn: ZdsClientConnection) -> None:
        with contextlib.suppress(ZdsClosed):
            while True:
                event = await conn.next_event()
                error = ""
                if isinstance(event, WorkloadAdded):
                    self.inodes[event.uid] = os.fstat(event.netns_fd).st_ino
                    os.close(event.netns_fd)
                    error = self.nack
                await conn.ack(error)
                async with self.changed:
                    self.events.append(event)
                    self.changed.notify_all()

    async def wait(self, pred: Callable[[list[ZdsEvent]], bool]) -> None:
        async with asyncio.timeout(WAIT_S), self.changed:
            await self.changed.wait_for(lambda: pred(self.events))

    async def stop(self) -> None:
        if self.conn is not None:
            self.conn.close()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ZdsClosed, OSError):
                await self.task


def kinds(events: list[ZdsEvent]) -> list[str]:
    return [type(e).__name__ for e in events]


def pod_obj(uid: str, name: str) -> dict[str, Any]:
    return {
        "metadata": {"uid": uid, "name": name, "namespace": "demo"},
        "spec": {"serviceAccountName": "sa-" + name},
        "status": {"podIP": "10.78.250.2"},
    }


@dataclass
class Agent:
    dataplane: MeshDataplane
    hub: ZtunnelHub
    annotator: RecordingAnnotator


@pytest.fixture
async def agent_factory(tmp_path: Path) -> AsyncIterator[Callable[[], Any]]:
    made: list[Agent] = []
    sock = str(tmp_path / "ztunnel.sock")

    async def make(window_s: float = 5.0) -> Agent:
        metrics = CniMetrics(new_registry())
        annotator = RecordingAnnotator()
        dataplane = MeshDataplane(DataplaneConfig(retry_window_s=window_s), annotator, metrics)
        hub = ZtunnelHub(sock, dataplane.snapshot, dataplane.on_snapshot_acked, metrics, keepalive_s=0.2)
        dataplane.hub = hub
        await hub.start()
        made.append(Agent(dataplane, hub, annotator))
        return made[-1]

    yield make
    for agent in made:
        await agent.hub.close()
        agent.dataplane.close()


@pytest.fixture
async def ztunnels(tmp_path: Path) -> AsyncIterator[Callable[[], Any]]:
    made: list[FakeZtunnel] = []

    async def make() -> FakeZtunnel:
        zt = FakeZtunnel(str(tmp_path / "ztunnel.sock"))
        await zt.start()
        made.append(zt)
        return zt

    yield make
    for zt in made:
        await zt.stop()


def has_rules(ns: Any) -> bool:
    return "ISTIO_OUTPUT" in ns.sh("iptables-save")


async def test_pending_until_ztunnel_then_enabled_and_unenrol(agent_factory, ztunnels, make_netns) -> None:  # type: ignore[no-untyped-def]
    agent = await agent_factory()
    ns = make_netns()
    assert not await agent.dataplane.enrol(pod_obj("u1", "web"), Netns.open(ns.path))
    assert has_rules(ns)  # rules first, listeners later: pending
    await agent.annotator.wait_for(("demo", "web"), "pending")

    zt = await ztunnels()
    await zt.wait(lambda ev: "ZdsSnapshotSent" in kinds(ev))
    assert kinds(zt.events) == ["WorkloadAdded", "ZdsSnapshotSent"]
    added = zt.events[0]
    assert isinstance(added, WorkloadAdded)
    assert (added.uid, added.info.name, added.info.namespace, added.info.service_account) == (
        "u1",
        "web",
        "demo",
        "sa-web",
    )
    assert added.in_snapshot
    assert zt.inodes["u1"] == os.stat(ns.path).st_ino  # the pod's netns fd went across
    await agent.annotator.wait_for(("demo", "web"), "enabled")

    await agent.dataplane.unenrol("u1", deleted=False)
    await zt.wait(lambda ev: isinstance(ev[-1], WorkloadDeleted))
    assert not has_rules(ns)
    await agent.annotator.wait_for(("demo", "web"), None)


async def test_adds_go_to_newest_dels_to_all(agent_factory, ztunnels, make_netns) -> None:  # type: ignore[no-untyped-def]
    agent = await agent_factory()
    old = await ztunnels()
    await agent.hub.wait_connected(1)
    new = await ztunnels()
    await agent.hub.wait_connected(2)
    assert await agent.dataplane.enrol(pod_obj("u2", "api"), Netns.open(make_netns().path))
    await new.wait(lambda ev: any(isinstance(e, WorkloadAdded) and e.uid == "u2" for e in ev))
    assert not any(isinstance(e, WorkloadAdded) for e in old.events)
    await agent.dataplane.unenrol("u2", deleted=True)
    for zt in (old, new):
        await zt.wait(lambda ev: any(isinstance(e, WorkloadDeleted) and e.uid == "u2" for e in ev))


async def test_ztunnel_restart_gets_snapshot(agent_factory, ztunnels, make_netns) -> None:  # type: ignore[no-untyped-def]
    agent = await agent_factory()
    first = await ztunnels()
    await agent.hub.wait_connected(1)
    assert await agent.dataplane.enrol(pod_obj("u3", "db"), Netns.open(make_netns().path))
    await first.stop()  # ztunnel goes away ...
    async with asyncio.timeout(WAIT_S), agent.hub.changed:
        await agent.hub.changed.wait_for(lambda: agent.hub.connected == 0)
    second = await ztunnels()  # ... and its replacement gets the pod in the snapshot
    await second.wait(lambda ev: kinds(ev) == ["WorkloadAdded", "ZdsSnapshotSent"])
    assert second.events[0].uid == "u3"  # type: ignore[union-attr]


async def test_agent_restart_resends_pods(agent_factory, ztunnels, make_netns) -> None:  # type: ignore[no-untyped-def]
    ns = make_netns()
    first = await agent_factory()
    zt = await ztunnels()
    await first.hub.wait_connected(1)
    assert await first.dataplane.enrol(pod_obj("u4", "cache"), Netns.open(ns.path))
    await first.hub.close()
    first.dataplane.close()
    await zt.wait(lambda ev: True)
    await zt.stop()

    second = await agent_factory()  # start-up reconcile finds the running pod again
    assert not await second.dataplane.enrol(pod_obj("u4", "cache"), Netns.open(ns.path))
    zt2 = await ztunnels()  # ztunnel reconnects to the new agent
    await zt2.wait(lambda ev: "ZdsSnapshotSent" in kinds(ev))
    assert kinds(zt2.events) == ["WorkloadAdded", "ZdsSnapshotSent"]
    await second.annotator.wait_for(("demo", "cache"), "enabled")
    assert has_rules(ns)


async def test_nacked_pod_stays_pending_until_retry_succeeds(agent_factory, ztunnels, make_netns) -> None:  # type: ignore[no-untyped-def]
    agent = await agent_factory()
    zt = await ztunnels()
    zt.nack = "failure to start proxy : no certificate yet"
    await agent.hub.wait_connected(1)
    assert not await agent.dataplane.enrol(pod_obj("u5", "slow"), Netns.open(make_netns().path))
    await agent.annotator.wait_for(("demo", "slow"), "pending")
    assert await agent.dataplane.retry_pending() == 0
    zt.nack = ""
    assert await agent.dataplane.retry_pending() == 1
    await agent.annotator.wait_for(("demo", "slow"), "enabled")


async def test_keep_sent_for_pod_without_netns(agent_factory, ztunnels) -> None:  # type: ignore[no-untyped-def]
    from istio_cni.dataplane import PodRecord

    agent = await agent_factory()
    agent.dataplane.pods["u6"] = PodRecord("u6", "gone", "demo", "default", (), None)
    zt = await ztunnels()
    await zt.wait(lambda ev: "ZdsSnapshotSent" in kinds(ev))
    assert isinstance(zt.events[0], WorkloadKept)
    assert isinstance(zt.events[1], ZdsSnapshotSent)


async def test_refused_in_snapshot_is_pending(agent_factory, ztunnels, make_netns) -> None:  # type: ignore[no-untyped-def]
    agent = await agent_factory()
    first = await ztunnels()
    await agent.hub.wait_connected(1)
    assert await agent.dataplane.enrol(pod_obj("u7", "web"), Netns.open(make_netns().path))
    await first.stop()
    async with asyncio.timeout(WAIT_S), agent.hub.changed:
        await agent.hub.changed.wait_for(lambda: agent.hub.connected == 0)
    second = FakeZtunnel(first.path, nack="failure to start proxy : boom")
    await second.start()
    try:
        await agent.annotator.wait_for(("demo", "web"), "pending")  # the new ztunnel did not take it
        second.nack = ""
        assert await agent.dataplane.retry_pending() == 1
        await agent.annotator.wait_for(("demo", "web"), "enabled")
    finally:
        await second.stop()


async def test_no_ztunnel_for_a_window_marks_pods_pending(agent_factory, ztunnels, make_netns) -> None:  # type: ignore[no-untyped-def]
    agent = await agent_factory(window_s=0.0)
    zt = await ztunnels()
    await agent.hub.wait_connected(1)
    assert await agent.dataplane.enrol(pod_obj("u8", "web"), Netns.open(make_netns().path))
    await agent.dataplane.retry_pending()
    assert agent.annotator.values[("demo", "web")] == "enabled"  # a ztunnel is connected: nothing changes
    await zt.stop()
    async with asyncio.timeout(WAIT_S), agent.hub.changed:
        await agent.hub.changed.wait_for(lambda: agent.hub.connected == 0)
    await agent.dataplane.retry_pending()
    assert agent.annotator.values[("demo", "web")] == "pending"
    await ztunnels()  # a ztunnel is back: its snapshot takes the pod
    await agent.annotator.wait_for(("demo", "web"), "enabled")


async def test_agent_restart_keeps_enabled_mark_without_flap(agent_factory, ztunnels, make_netns) -> None:  # type: ignore[no-untyped-def]
    agent = await agent_factory()
    pod = pod_obj("u9", "web")
    pod["metadata"]["annotations"] = {"ambient.istio.io/redirection": "enabled"}  # left by the previous agent
    assert not await agent.dataplane.enrol(pod, Netns.open(make_netns().path))
    assert agent.dataplane.pods["u9"].state == "enabled"
    zt = await ztunnels()
    await zt.wait(lambda ev: "ZdsSnapshotSent" in kinds(ev))
    await agent.hub.wait_connected(1)
    assert ("demo", "web") not in agent.annotator.values  # never patched: no pending/enabled flap
