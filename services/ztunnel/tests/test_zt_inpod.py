"""The workload proxy manager and the ZDS client loop, against meshkit.zds's server (no netns needed)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from meshkit.zds import WorkloadInfo, ZdsAck, ZdsServer, ZdsServerConnection, send_packet
from meshproto.istio.workload.zds import zds_pb2
from ztunnel.inpod.client import run_zds_client
from ztunnel.inpod.manager import WorkloadProxyManager

INFO = WorkloadInfo("pod", "default", "sa")


class FakeProxy:
    def __init__(self, uid: str, log: list[str]) -> None:
        self.uid = uid
        self.log = log

    async def stop(self) -> None:
        self.log.append(f"stop {self.uid}")


class Factory:
    def __init__(self) -> None:
        self.log: list[str] = []
        self.fail: set[str] = set()

    async def __call__(self, uid: str, info: WorkloadInfo, fd: int) -> FakeProxy:
        if uid in self.fail:
            raise OSError("no such netns")
        os.fstat(fd)  # the fd is open while we start
        self.log.append(f"start {uid}")
        return FakeProxy(uid, self.log)


def netns() -> int:
    return os.open("/proc/self/ns/net", os.O_RDONLY)


async def run_agent(tmp: Path, script) -> tuple[ZdsServer, asyncio.Queue[ZdsServerConnection]]:  # type: ignore[no-untyped-def]
    conns: asyncio.Queue[ZdsServerConnection] = asyncio.Queue()

    async def agent(conn: ZdsServerConnection) -> None:
        await script(conn)
        conns.put_nowait(conn)
        while await conn.probe():  # noqa: ASYNC110 - keepalive period
            await asyncio.sleep(0.01)

    server = ZdsServer(str(tmp / "zds.sock"), agent, accepts_per_s=1000)
    await server.start()
    return server, conns


async def add(conn: ZdsServerConnection, uid: str, fd: int | None = None) -> ZdsAck:
    own = fd is None
    fd = netns() if fd is None else fd
    try:
        return await conn.add(uid, INFO, fd)
    finally:
        if own:
            os.close(fd)


async def test_snapshot_drops_unnamed_pods_after_reconnect(tmp_path: Path) -> None:
    factory = Factory()
    manager = WorkloadProxyManager(factory)
    rounds = [["add a", "add b"], ["keep a"]]
    acks: list[ZdsAck] = []

    async def script(conn: ZdsServerConnection) -> None:
        for step in rounds.pop(0):
            op, uid = step.split()
            acks.append(await (add(conn, uid) if op == "add" else conn.keep(uid)))
        acks.append(await conn.snapshot_sent())

    server, conns = await run_agent(tmp_path, script)
    client = asyncio.create_task(run_zds_client(server.path, manager))
    try:
        first = await asyncio.wait_for(conns.get(), 5)
        assert manager.ready
        assert sorted(manager.pods) == ["a", "b"]
        first.close()  # the agent restarts: ztunnel reconnects, the new snapshot keeps only "a"
        await asyncio.wait_for(conns.get(), 5)
        assert sorted(manager.pods) == ["a"]
        assert factory.log == ["start a", "start b", "stop b"]  # "a" kept running, untouched
        assert all(a.ok for a in acks)
    finally:
        client.cancel()
        await asyncio.gather(client, return_exceptions=True)
        await server.close()
        await manager.close()


async def test_add_del_replace_and_retry(tmp_path: Path) -> None:
    factory = Factory()
    factory.fail.add("bad")
    manager = WorkloadProxyManager(factory)
    results: dict[str, ZdsAck] = {}
    other_ns_r, other_ns_w = os.pipe()  # any fd with another inode stands for "a new netns"

    async def script(conn: ZdsServerConnection) -> None:
        results["snap"] = await conn.snapshot_sent()
        results["add1"] = await add(conn, "p1")
        results["again"] = await add(conn, "p1")
        results["moved"] = await add(conn, "p1", other_ns_r)
        results["bad"] = await add(conn, "bad")
        results["del"] = await conn.delete("p1")

    server, conns = await run_agent(tmp_path, script)
    client = asyncio.create_task(run_zds_client(server.path, manager))
    try:
        await asyncio.wait_for(conns.get(), 5)
        # the new netns' proxy starts before the old one is retired (drained in the background)
        assert sorted(factory.log) == ["start p1", "start p1", "stop p1", "stop p1"]
        assert factory.log[:2] == ["start p1", "start p1"]
        assert results["bad"].error.startswith("failure to start proxy : ")
        assert not manager.ready  # a pending pod keeps in-pod readiness down
        assert manager.dump()["bad"]["state"] == "Pending"  # type: ignore[index]
        factory.fail.clear()
        await manager.retry_pending()
        assert manager.ready
        assert factory.log[-1] == "start bad"
    finally:
        client.cancel()
        await asyncio.gather(client, return_exceptions=True)
        await server.close()
        await manager.close()
        os.close(other_ns_r)
        os.close(other_ns_w)


async def test_fatal_protocol_error_stops_the_client(tmp_path: Path) -> None:
    manager = WorkloadProxyManager(Factory())
    nacked = asyncio.Event()

    async def agent(conn: ZdsServerConnection) -> None:
        # an AddWorkload without workload_info: fatal for ztunnel
        request = zds_pb2.WorkloadRequest(add=zds_pb2.AddWorkload(uid="x")).SerializeToString()
        fd = netns()
        try:
            send_packet(conn._sock, request, fd)
        finally:
            os.close(fd)
        nacked.set()

    server = ZdsServer(str(tmp_path / "zds.sock"), agent, accepts_per_s=1000)
    await server.start()
    try:
        await asyncio.wait_for(run_zds_client(server.path, manager), 5)  # returns: no reconnect
        assert nacked.is_set()
    finally:
        await server.close()


async def test_client_backs_off_until_the_agent_listens(tmp_path: Path) -> None:
    manager = WorkloadProxyManager(Factory())
    path = tmp_path / "zds.sock"
    client = asyncio.create_task(run_zds_client(str(path), manager))
    try:
        await asyncio.sleep(0.05)  # let it fail a few connects first
        assert not manager.snapshot_done

        async def script(conn: ZdsServerConnection) -> None:
            await conn.snapshot_sent()

        server, conns = await run_agent(tmp_path, script)
        try:
            await asyncio.wait_for(conns.get(), 10)
            assert manager.snapshot_done
        finally:
            await server.close()
    finally:
        client.cancel()
        await asyncio.gather(client, return_exceptions=True)
