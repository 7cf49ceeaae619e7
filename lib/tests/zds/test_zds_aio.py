"""The asyncio shells end to end over a real unix SEQPACKET socket in a temp dir."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from meshkit.zds import (
    WorkloadAdded,
    WorkloadDeleted,
    WorkloadInfo,
    WorkloadKept,
    ZdsAck,
    ZdsClientConnection,
    ZdsClosed,
    ZdsFatalError,
    ZdsServer,
    ZdsServerConnection,
    ZdsSnapshotSent,
)

INFO = WorkloadInfo("pod-a", "default", "sa-a")


async def test_snapshot_and_steady_state(tmp_path: Path) -> None:
    acks: list[ZdsAck] = []
    done, ended = asyncio.Event(), asyncio.Event()
    netns = os.open("/proc/self/ns/net", os.O_RDONLY)

    async def agent(conn: ZdsServerConnection) -> None:
        acks.append(await conn.add("uid-1", INFO, netns))
        acks.append(await conn.keep("uid-2"))
        acks.append(await conn.snapshot_sent())
        acks.append(await conn.delete("uid-2"))
        done.set()
        while await conn.probe():  # noqa: ASYNC110 - the keepalive period (upstream 5 s), not a wait
            await asyncio.sleep(0.01)
        ended.set()

    path = str(tmp_path / "zds.sock")
    try:
        async with ZdsServer(path, agent) as server:
            conn = await ZdsClientConnection.connect(path)
            async with conn:
                add = await conn.next_event()
                assert isinstance(add, WorkloadAdded)
                assert add.info == INFO
                assert add.in_snapshot
                assert os.fstat(add.netns_fd).st_ino == os.fstat(netns).st_ino
                os.close(add.netns_fd)
                await conn.ack()
                assert await conn.next_event() == WorkloadKept("uid-2")
                await conn.ack("failure to start proxy : no netns")
                assert await conn.next_event() == ZdsSnapshotSent(frozenset({"uid-1", "uid-2"}))
                await conn.ack()
                assert await conn.next_event() == WorkloadDeleted("uid-2")
                await conn.ack()
                await asyncio.wait_for(done.wait(), 5)
                assert len(server.connections) == 1
            # the keepalive probe sees ztunnel go away and the handler returns
            await asyncio.wait_for(ended.wait(), 5)
    finally:
        os.close(netns)
    assert [a.ok for a in acks] == [True, False, True, True]
    assert acks[1].error == "failure to start proxy : no netns"
    assert not Path(path).exists()  # noqa: ASYNC240


async def test_fatal_violation_nacks(tmp_path: Path) -> None:
    got: list[ZdsAck] = []
    answered = asyncio.Event()

    async def agent(conn: ZdsServerConnection) -> None:
        await conn.snapshot_sent()
        conn.protocol.state = conn.protocol.state.SNAPSHOT  # force a second snapshot_sent past the guard
        got.append(await conn.snapshot_sent())
        answered.set()

    path = str(tmp_path / "zds.sock")
    async with ZdsServer(path, agent), await ZdsClientConnection.connect(path) as conn:
        assert isinstance(await conn.next_event(), ZdsSnapshotSent)
        await conn.ack()
        with pytest.raises(ZdsFatalError):
            await conn.next_event()
        await asyncio.wait_for(answered.wait(), 5)
    assert got[0].error


async def test_client_sees_server_close(tmp_path: Path) -> None:
    async def agent(conn: ZdsServerConnection) -> None:
        return None

    path = str(tmp_path / "zds.sock")
    async with ZdsServer(path, agent), await ZdsClientConnection.connect(path) as conn:
        with pytest.raises(ZdsClosed):
            await asyncio.wait_for(conn.next_event(), 5)


async def test_connect_without_server_fails(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        await ZdsClientConnection.connect(str(tmp_path / "missing.sock"))


async def test_stale_socket_file_is_replaced(tmp_path: Path) -> None:
    path = str(tmp_path / "zds.sock")
    async with ZdsServer(path, lambda conn: asyncio.sleep(0)):
        pass
    import socket

    stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stale.bind(path)
    stale.close()
    assert Path(path).exists()  # noqa: ASYNC240
    async with ZdsServer(path, lambda conn: asyncio.sleep(0)), await ZdsClientConnection.connect(path):
        pass
