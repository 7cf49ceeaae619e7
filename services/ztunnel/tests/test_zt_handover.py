"""Handover: a second ztunnel binds beside the first in every pod (SO_REUSEPORT), becomes ready, the old one
drains; a continuous stream of new connections sees no failure (both the client's and the server's node)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from ztunnel.state.records import Service

pytestmark = [pytest.mark.root, pytest.mark.slow]

SVC_KEY = "default/echo.default.svc.cluster.local"
VIP = "10.77.200.1"


async def test_handover_under_continuous_new_connections(mesh, topology) -> None:  # type: ignore[no-untyped-def]
    n1, n2 = topology.add_node(), topology.add_node()
    topology.link_nodes()
    client = topology.add_pod(n1, "client")
    server = topology.add_pod(n2, "server")
    mesh.workloads = [mesh.workload(client), mesh.workload(server, (SVC_KEY,))]
    mesh.services = [
        Service("echo", "default", "echo.default.svc.cluster.local", vips=(("", VIP),), ports={80: 8080})
    ]
    await mesh.start()
    await mesh.echo(server)

    ok, failures = 0, []
    stop = asyncio.Event()
    progress = asyncio.Condition()

    async def load(worker: int) -> None:
        nonlocal ok
        i = 0
        while not stop.is_set():
            payload = b"w%d-%d" % (worker, i)
            try:
                reply = await mesh.request(client, VIP, 80, payload)
            except (OSError, TimeoutError) as exc:
                failures.append(repr(exc))
            else:
                if reply == payload:
                    ok += 1
                    async with progress:
                        progress.notify_all()
                else:
                    failures.append(f"bad reply {reply!r}")
            i += 1

    async def progressed(n: int) -> None:
        target = ok + n
        async with progress:
            await progress.wait_for(lambda: ok >= target)

    workers = [asyncio.create_task(load(w)) for w in range(5)]
    try:
        await asyncio.wait_for(progressed(20), 20)
        for node in (n2, n1):  # server side first (inbound 15008), then client side (outbound 15001)
            old = mesh.apps[node.name]
            new = await mesh.start_ztunnel(node)
            mesh.extra_apps.append(new)
            await asyncio.wait_for(new.readiness.wait_ready(), 20)
            await asyncio.wait_for(progressed(20), 20)  # both serve now
            await old.drain(5.0)
            mesh.apps[node.name] = new
            await asyncio.wait_for(progressed(30), 20)  # only the new one serves
    finally:
        stop.set()
        await asyncio.gather(*workers)
    assert failures == []
    assert ok > 100


async def test_drain_stops_accepting_then_force_closes_at_the_deadline(mesh, topology) -> None:  # type: ignore[no-untyped-def]
    from meshkit.sockets import open_tcp

    n1, n2 = topology.add_node(), topology.add_node()
    topology.link_nodes()
    client = topology.add_pod(n1, "client")
    server = topology.add_pod(n2, "server")
    mesh.workloads = [mesh.workload(client), mesh.workload(server, (SVC_KEY,))]
    mesh.services = [
        Service("echo", "default", "echo.default.svc.cluster.local", vips=(("", VIP),), ports={80: 8080})
    ]
    await mesh.start()
    await mesh.echo(server)
    sock = await open_tcp(mesh.factory(client), VIP, 80)  # a long-lived connection through node1's ztunnel
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(b"hold")
    assert await asyncio.wait_for(reader.readexactly(4), 10) == b"hold"
    app = mesh.apps["node1"]
    loop = asyncio.get_running_loop()
    started = loop.time()
    drain = asyncio.create_task(app.drain(0.5))
    # new connections are refused at once (the listeners are closed, no other ztunnel is there)
    async with asyncio.timeout(5):
        while True:
            try:
                probe = await open_tcp(mesh.factory(client), VIP, 80)
            except ConnectionRefusedError:
                break
            probe.close()
            await asyncio.sleep(0.01)  # the listener closes a moment after drain() starts
    # the open connection keeps working until the deadline, then is force-closed
    writer.write(b"more")
    assert await asyncio.wait_for(reader.readexactly(4), 10) == b"more"
    with contextlib.suppress(ConnectionError):
        assert await asyncio.wait_for(reader.read(), 10) == b""
    await asyncio.wait_for(drain, 10)
    assert loop.time() - started >= 0.5
    assert app.stopped.is_set()
    writer.close()
