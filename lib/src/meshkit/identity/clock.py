"""The wall clock the certificate manager runs on, injected so rotation and back-off tests run in fake time.

Certificates carry wall-clock validity (not_before / not_after), so the manager schedules against wall time.
:class:`SystemClock` is the real one; :class:`ManualClock` only moves when a test calls :meth:`advance`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = ["Clock", "ManualClock", "SystemClock"]


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    async def sleep_until(self, when: datetime) -> None:
        """Return once ``now() >= when``."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep_until(self, when: datetime) -> None:
        # Re-check after waking: a long asyncio.sleep may end early relative to a wall clock that jumped.
        while (delay := (when - self.now()).total_seconds()) > 0:  # noqa: ASYNC110 - a timer, not a poll
            await asyncio.sleep(min(delay, 3600.0))


class ManualClock:
    """A clock that stands still until :meth:`advance`; sleepers wake in deadline order.

    :meth:`wait_for_sleepers` lets a test wait (on an event, not a timer) until the code under test is parked.
    """

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._sleepers: list[tuple[datetime, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self._changed = asyncio.Event()

    def now(self) -> datetime:
        return self._now

    async def sleep_until(self, when: datetime) -> None:
        if when <= self._now:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (when, next(self._seq), fut))
        self._changed.set()
        await fut

    @property
    def sleepers(self) -> int:
        return sum(1 for _, _, f in self._sleepers if not f.done())

    def next_deadline(self) -> datetime | None:
        live = [when for when, _, f in self._sleepers if not f.done()]
        return min(live) if live else None

    async def wait_for_sleepers(self, count: int = 1, timeout_s: float = 5.0) -> None:
        """Wait until at least ``count`` tasks are parked in :meth:`sleep_until`."""
        async with asyncio.timeout(timeout_s):
            while self.sleepers < count:
                self._changed.clear()
                await self._changed.wait()

    async def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline has passed, letting each one run."""
        self.advance_to(self._now + timedelta(seconds=seconds))
        for _ in range(5):  # a few loop turns so woken tasks reach their next await
            await asyncio.sleep(0)

    def advance_to(self, when: datetime) -> None:
        self._now = max(self._now, when)
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)
