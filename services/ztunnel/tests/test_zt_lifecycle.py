"""Pod lifecycle over ZDS: adding and deleting pods returns every descriptor and thread (no leaks)."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest
from meshkit.zds import ZdsServer, ZdsServerConnection

pytestmark = [pytest.mark.root, pytest.mark.slow]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_add_and_delete_pods_leaks_nothing(mesh, topology) -> None:  # type: ignore[no-untyped-def]
    node = topology.add_node()
    pods = [topology.add_pod(node, f"p{i}") for i in range(6)]
    mesh.workloads = [mesh.workload(p) for p in pods]
    conns: asyncio.Queue[ZdsServerConnection] = asyncio.Queue()

    async def agent(conn: ZdsServerConnection) -> None:  # an agent that starts with no pods
        await conn.snapshot_sent()
        conns.put_nowait(conn)
        while await conn.probe():  # noqa: ASYNC110 - keepalive period
            await asyncio.sleep(0.05)

    server = ZdsServer(mesh.uds(node), agent, accepts_per_s=100)
    await server.start()
    mesh.agents[node.name] = server
    app = await mesh.start_ztunnel(node)
    mesh.apps[node.name] = app
    conn = await asyncio.wait_for(conns.get(), 10)
    await asyncio.wait_for(app.readiness.wait_ready(), 10)
    fds, threads = open_fds(), threading.active_count()
    for _ in range(2):
        for pod in pods:
            await mesh.add(conn, pod)
        await asyncio.wait_for(app.readiness.wait_ready(), 20)  # every pod serves with its certificate
        assert len(app.pods) == len(pods)
        assert open_fds() > fds
        for pod in pods:
            ack = await conn.delete(pod.uid)
            assert ack.ok
        assert app.pods == {}
    assert open_fds() <= fds + 2  # a little slack for lazily opened loop resources
    assert threading.active_count() <= threads + 1
