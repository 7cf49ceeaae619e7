"""meshkit.drain: drain sequence against real asyncio TCP servers, task ownership, SIGTERM hook."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from meshkit.drain import Drain, TaskOwner, install_sigterm

WAIT = 5.0  # bound for every wait on an event; a healthy run takes milliseconds


@dataclass
class EchoServer:
    """A line server whose connections are tracked by ``drain``.

    ``polite`` clients get ``bye`` as soon as the drain starts and the server closes them (they finish
    in time); ``stubborn`` ones are held open until the client closes, so only force-close ends them.
    """

    drain: Drain
    server: asyncio.Server | None = None
    tracked: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    notified: list[str] = field(default_factory=list)
    running: int = 0
    all_done: asyncio.Event = field(default_factory=asyncio.Event)
    clients: list[asyncio.StreamWriter] = field(default_factory=list)

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.running += 1
        self.all_done.clear()
        try:
            kind = (await reader.readline()).decode().strip()
            with self.drain.track(
                writer.transport.abort, on_drain=lambda: self.notified.append(kind), name=kind
            ):
                await self.tracked.put(kind)
                if kind == "polite":
                    await self.drain.wait_started()
                    writer.write(b"bye\n")
                    await writer.drain()
                else:
                    await reader.read()
        except ConnectionError:
            pass
        finally:
            writer.close()
            self.running -= 1
            if self.running == 0:
                self.all_done.set()


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    drain = Drain("test")
    echo = EchoServer(drain)
    echo.server = await asyncio.start_server(echo.handle, "127.0.0.1", 0)
    drain.on_start(echo.server.close)
    yield echo
    for writer in echo.clients:
        writer.close()
    echo.server.close()
    await echo.server.wait_closed()
    if echo.running:
        await asyncio.wait_for(echo.all_done.wait(), WAIT)


async def _connect(echo: EchoServer, kind: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", echo.port)
    echo.clients.append(writer)
    writer.write(f"{kind}\n".encode())
    await writer.drain()
    return reader, writer


async def test_polite_connections_finish_and_stubborn_ones_are_forced(echo: EchoServer) -> None:
    polite_r, _ = await _connect(echo, "polite")
    stubborn_r, _ = await _connect(echo, "stubborn")
    seen = {await asyncio.wait_for(echo.tracked.get(), WAIT) for _ in range(2)}
    assert seen == {"polite", "stubborn"}
    assert echo.drain.in_flight == 2
    draining_before = echo.drain.draining

    result = await echo.drain.drain(0.3)

    assert (draining_before, echo.drain.draining) == (False, True)
    assert (result.completed, result.forced) == (1, 1)
    assert result.elapsed_s >= 0.3
    assert sorted(echo.notified) == ["polite", "stubborn"]
    assert await asyncio.wait_for(polite_r.readline(), WAIT) == b"bye\n"
    assert await asyncio.wait_for(stubborn_r.read(), WAIT) == b""  # closed by the server, no "bye"
    await asyncio.wait_for(echo.all_done.wait(), WAIT)
    assert echo.drain.in_flight == 0


async def test_listener_stops_accepting_when_drain_starts(echo: EchoServer) -> None:
    port = echo.port
    result = await echo.drain.drain(1.0)
    assert (result.completed, result.forced) == (0, 0)
    assert result.elapsed_s < 1.0  # idle: no waiting for the deadline
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_all_finishing_early_returns_before_deadline(echo: EchoServer) -> None:
    conns = [await _connect(echo, "polite") for _ in range(3)]
    for _ in conns:
        await asyncio.wait_for(echo.tracked.get(), WAIT)
    result = await echo.drain.drain(WAIT)
    assert (result.completed, result.forced) == (3, 0)
    assert result.elapsed_s < WAIT


async def test_drain_runs_once_for_concurrent_callers() -> None:
    drain = Drain()
    starts: list[int] = []
    drain.on_start(lambda: starts.append(1))
    first, second = await asyncio.gather(drain.drain(0.1), drain.drain(0.1))
    assert first is second
    assert await drain.drain(0.1) is first
    assert starts == [1]


async def test_wait_started_wakes_on_drain() -> None:
    drain = Drain()
    async with TaskOwner("t") as owner:
        waiter = owner.spawn(drain.wait_started(), name="waiter")
        await asyncio.sleep(0)  # let the waiter block (not a timing wait: it just yields once)
        assert not waiter.done()
        await drain.drain(0.1)
        await asyncio.wait_for(waiter, WAIT)


async def test_on_start_after_drain_started_runs_at_once() -> None:
    drain = Drain()
    await drain.drain(0.1)
    ran: list[str] = []
    drain.on_start(lambda: ran.append("late"))
    assert ran == ["late"]

    async def late_async() -> None:
        pass

    with pytest.raises(TypeError, match="synchronous"):
        drain.on_start(late_async)


async def test_failing_hooks_are_logged_and_do_not_stop_the_drain(caplog: pytest.LogCaptureFixture) -> None:
    drain = Drain("hooks")

    def boom() -> None:
        raise RuntimeError("hook exploded")

    async def async_ok() -> None:
        calls.append("async")

    calls: list[str] = []
    drain.on_start(boom)
    drain.on_start(async_ok)
    with drain.track(boom, on_drain=boom, name="x") as item:
        result = await drain.drain(0.05, force_grace_s=0.05)
    assert item.forced
    assert result.forced == 1
    assert calls == ["async"]
    assert sum("drain hook failed" in r.getMessage() for r in caplog.records) == 3


async def test_task_owner_cancels_and_awaits_on_close() -> None:
    owner = TaskOwner("svc")
    cancelled = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    task = owner.spawn(forever(), name="loop")
    assert task.get_name() == "svc/loop"
    assert len(owner) == 1
    await asyncio.sleep(0)
    await owner.close()
    assert task.cancelled()
    assert cancelled.is_set()
    assert len(owner) == 0


async def test_task_owner_refuses_after_close_without_unawaited_warning() -> None:
    owner = TaskOwner("svc")
    await owner.close()

    async def work() -> None:
        pass

    coro = work()
    with pytest.raises(RuntimeError, match="closed"):
        owner.spawn(coro)
    assert inspect.getcoroutinestate(coro) == inspect.CORO_CLOSED  # so no "never awaited" warning


async def test_task_owner_logs_crashes_and_forgets_finished_tasks(caplog: pytest.LogCaptureFixture) -> None:
    async def crash() -> None:
        raise ValueError("bad thing")

    async def fine() -> int:
        return 7

    async with TaskOwner("svc") as owner:
        bad = owner.spawn(crash(), name="crash")
        good = owner.spawn(fine())
        await asyncio.wait([bad, good])
        assert await good == 7
        await asyncio.sleep(0)  # done-callbacks run on the next loop iteration
        assert len(owner) == 0
    crashes = [r for r in caplog.records if r.getMessage() == "owned task crashed"]
    assert len(crashes) == 1
    assert crashes[0].levelno == logging.ERROR
    assert crashes[0].exc_info is not None


async def test_task_owner_close_times_out_on_a_task_that_ignores_cancel() -> None:
    owner = TaskOwner("svc")
    release = asyncio.Event()

    async def stubborn() -> None:
        while True:
            try:
                await release.wait()
                return
            except asyncio.CancelledError:
                continue  # misbehaving on purpose

    task = owner.spawn(stubborn(), name="stubborn")
    await asyncio.sleep(0)
    with pytest.raises(TimeoutError, match="svc/stubborn"):
        await owner.close(timeout_s=0.05)
    release.set()
    await asyncio.wait_for(task, WAIT)


async def test_install_sigterm_calls_back_and_uninstalls() -> None:
    loop = asyncio.get_running_loop()
    got = asyncio.Event()
    uninstall = install_sigterm(loop, got.set)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(got.wait(), WAIT)
    finally:
        uninstall()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


async def test_task_owner_close_from_an_owned_task() -> None:
    owner = TaskOwner("svc")
    sibling_cancelled = asyncio.Event()

    async def sibling() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            sibling_cancelled.set()

    async def supervisor() -> str:
        await owner.close()
        return "closed"

    owner.spawn(sibling(), name="sibling")
    boss = owner.spawn(supervisor(), name="supervisor")
    assert await asyncio.wait_for(boss, WAIT) == "closed"
    assert sibling_cancelled.is_set()
