"""Graceful drain and task ownership: the two lifetime primitives every server uses (STYLE.md practice 10).

:class:`Drain` runs the shutdown sequence of one server or proxy: **stop accepting** (the ``on_start``
hooks, typically ``server.close``), tell each tracked connection that a drain started (its ``on_drain`` hook,
e.g. send an HTTP/2 GOAWAY), **wait** for the tracked in-flight work to finish up to a deadline, then
**force-close** what is left (its ``force_close`` hook, e.g. ``transport.abort``) and wait briefly for it to
unwind.

:class:`TaskOwner` replaces bare ``asyncio.create_task``: every task has an owner that keeps a strong
reference (so the loop cannot garbage-collect it mid-flight), logs its crash, and cancels and awaits it on
``close()``.

Example::

    drain = Drain("inbound")
    server = await asyncio.start_server(handle, "0.0.0.0", 15008)
    drain.on_start(server.close)

    async def handle(reader, writer):
        with drain.track(writer.transport.abort, on_drain=lambda: send_goaway(writer)):
            await proxy(reader, writer)

    install_sigterm(loop, lambda: owner.spawn(drain.drain(5.0), name="drain"))

Invariants: ``draining`` only goes from false to true; once draining, :meth:`Drain.track` still admits work
(a connection accepted a moment before the listener closed is tracked, and forced if it overstays); every
force-close hook runs at most once; :meth:`Drain.drain` may be called many times and runs the sequence once.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import signal
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from meshkit.logs import kv

__all__ = ["Drain", "DrainResult", "TaskOwner", "Tracked", "install_sigterm"]

log = logging.getLogger("drain")
T = TypeVar("T")
Hook = Callable[[], object]


async def _call(hook: Hook, what: str, name: str) -> None:
    """Run a hook that may be sync or return an awaitable; a failing hook is logged, never fatal to drain."""
    try:
        result = hook()
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("drain hook failed", extra=kv(drain=name, hook=what))


@dataclass(frozen=True, slots=True)
class DrainResult:
    """How a drain ended: tracked work that finished on its own, and work that had to be force-closed."""

    completed: int
    forced: int
    elapsed_s: float


class Tracked:
    """One unit of in-flight work registered with a :class:`Drain`."""

    __slots__ = ("_forced", "force_close", "name", "on_drain")

    def __init__(self, name: str, force_close: Hook, on_drain: Hook | None) -> None:
        self.name = name
        self.force_close = force_close
        self.on_drain = on_drain
        self._forced = False

    @property
    def forced(self) -> bool:
        """True once the drain deadline passed and this work was force-closed."""
        return self._forced


class Drain:
    """Stop accepting, wait for in-flight work up to a deadline, then force-close it."""

    def __init__(self, name: str = "drain") -> None:
        self.name = name
        self._active: set[Tracked] = set()
        self._start_hooks: list[Hook] = []
        self._started = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._completed = 0
        self._result: DrainResult | None = None
        self._lock = asyncio.Lock()

    @property
    def draining(self) -> bool:
        return self._started.is_set()

    @property
    def in_flight(self) -> int:
        return len(self._active)

    async def wait_started(self) -> None:
        """Return once a drain has started (for loops that should stop when the server drains)."""
        await self._started.wait()

    def on_start(self, hook: Hook) -> None:
        """Run ``hook`` when the drain starts: close listeners here.

        If the drain already started, ``hook`` runs at once, so a listener opened during shutdown still
        closes; it must then be synchronous.
        """
        if not self.draining:
            self._start_hooks.append(hook)
            return
        result = hook()
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()
            raise TypeError("on_start hooks added after the drain started must be synchronous")

    @contextlib.contextmanager
    def track(
        self, force_close: Hook, *, on_drain: Hook | None = None, name: str = "conn"
    ) -> Iterator[Tracked]:
        """Register in-flight work for the duration of the ``with`` block."""
        item = Tracked(name, force_close, on_drain)
        self._active.add(item)
        self._idle.clear()
        try:
            yield item
        finally:
            self._active.discard(item)
            if not item.forced:
                self._completed += 1
            if not self._active:
                self._idle.set()

    async def drain(self, deadline_s: float, *, force_grace_s: float = 1.0) -> DrainResult:
        """Run the drain sequence once; later (or concurrent) calls wait for and return the same result."""
        async with self._lock:
            if self._result is None:
                self._result = await self._run(deadline_s, force_grace_s)
            return self._result

    async def _run(self, deadline_s: float, force_grace_s: float) -> DrainResult:
        loop = asyncio.get_running_loop()
        started_at = loop.time()
        self._started.set()
        completed_before = self._completed
        log.info(
            "drain started", extra=kv(drain=self.name, in_flight=len(self._active), deadline_s=deadline_s)
        )
        for hook in self._start_hooks:
            await _call(hook, "on_start", self.name)
        for item in list(self._active):
            if item.on_drain is not None:
                await _call(item.on_drain, "on_drain", self.name)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), deadline_s)
        forced = await self._force(force_grace_s)
        result = DrainResult(self._completed - completed_before, forced, loop.time() - started_at)
        log.info(
            "drain complete",
            extra=kv(drain=self.name, completed=result.completed, forced=forced, elapsed_s=result.elapsed_s),
        )
        return result

    async def _force(self, grace_s: float) -> int:
        leftovers = list(self._active)
        for item in leftovers:
            item._forced = True  # Drain owns Tracked's state
            await _call(item.force_close, "force_close", self.name)
        if leftovers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace_s)
            if self._active:
                log.warning(
                    "work still running after force-close",
                    extra=kv(drain=self.name, remaining=sorted(t.name for t in self._active)),
                )
        return len(leftovers)


class TaskOwner:
    """Owns asyncio tasks: keeps them referenced, logs crashes, cancels and awaits them on :meth:`close`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def tasks(self) -> frozenset[asyncio.Task[Any]]:
        return frozenset(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
        """Start ``coro`` as a task owned by this owner."""
        if self._closed:
            coro.close()  # never awaited otherwise, which would warn (and warnings are errors in tests)
            raise RuntimeError(f"task owner {self.name!r} is closed")
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.name}/{name or 'task'}")
        self._tasks.add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("owned task crashed", exc_info=exc, extra=kv(owner=self.name, task=task.get_name()))

    async def close(self, timeout_s: float | None = None) -> None:
        """Refuse new tasks, cancel every owned task and wait for all of them to finish.

        Safe to call from one of the owned tasks: that task is left running (it is the one closing).
        """
        self._closed = True
        current = asyncio.current_task()
        while pending := [t for t in self._tasks if t is not current]:
            for task in pending:
                task.cancel()
            _done, still = await asyncio.wait(pending, timeout=timeout_s)
            if still:
                names = sorted(t.get_name() for t in still)
                raise TimeoutError(f"task owner {self.name!r}: tasks ignored cancellation: {names}")

    async def __aenter__(self) -> TaskOwner:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()


def install_sigterm(
    loop: asyncio.AbstractEventLoop, callback: Callable[[], object], *, also_sigint: bool = False
) -> Callable[[], None]:
    """Call ``callback`` on the loop when SIGTERM (and optionally SIGINT) arrives; returns an uninstaller.

    ``callback`` is synchronous (it runs inside the loop's signal handler): spawn the drain from it through a
    :class:`TaskOwner`, or set an event that ``main`` awaits.
    """
    signals = [signal.SIGTERM, signal.SIGINT] if also_sigint else [signal.SIGTERM]
    for sig in signals:
        loop.add_signal_handler(sig, callback)

    def uninstall() -> None:
        for sig in signals:
            loop.remove_signal_handler(sig)

    return uninstall
