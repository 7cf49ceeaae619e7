"""Pytest plugin loaded for the whole workspace (``-p meshkit.testing.pytest_plugin`` in the root addopts).

It keeps two promises of our test tiers:
- tests marked ``root`` are skipped with a clear reason when not root, but never when ``CI`` is set: CI runs
  as root, so a root test that cannot run there means a broken environment, and it fails instead of hiding;
- an asyncio test that returns while tasks it started are still pending fails (an error at teardown that
  names the leaked tasks). The check runs after the test's other fixtures are torn down, so a fixture that
  owns and closes its tasks is fine.

Limitation: the leak check runs on the function-scoped event loop (the workspace default); a test that asks
for a wider ``loop_scope`` is not checked.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

# pytester (running pytest inside a test) is how the plugin's own tests check it. It is declared here rather
# than in lib/tests/conftest.py because pytest refuses ``pytest_plugins`` in a non-root conftest whenever the
# run starts above lib/tests (``pytest .``).
pytest_plugins = ["pytester"]

_MARKERS = (
    "root: needs root (network namespaces, iptables); skipped with a reason when not root, fails in CI",
    "cluster: needs the local Kubernetes cluster from e2e/cluster",
    "slow: takes more than a few seconds",
)
_LEAK_FIXTURE = "_no_leaked_tasks"
SKIP_REASON = "needs root (network namespaces / iptables); CI runs it as root"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def pytest_configure(config: pytest.Config) -> None:
    # Registered here too, so the plugin works outside this repo's pyproject (e.g. under pytester).
    for line in _MARKERS:
        config.addinivalue_line("markers", line)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        func = getattr(item, "function", None)
        if func is not None and inspect.iscoroutinefunction(func):
            # First in the list: set up before, and torn down after, every other fixture of the test.
            item.fixturenames.insert(0, _LEAK_FIXTURE)  # type: ignore[attr-defined]
        if item.get_closest_marker("root") is not None and _must_skip_root():
            # A skip marker (not pytest.skip at setup) so the summary points at the test, not at this plugin.
            item.add_marker(pytest.mark.skip(reason=SKIP_REASON))


def _must_skip_root() -> bool:
    return os.geteuid() != 0 and not _in_ci()


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("root") is not None and os.geteuid() != 0 and _in_ci():
        pytest.fail(f"CI=true but not running as root: {item.nodeid} must run as root in CI", pytrace=False)


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
        await asyncio.wait(leaked, timeout=1.0)  # let them unwind, so the loop closes without "pending" noise
        pytest.fail(f"test leaked {len(leaked)} asyncio task(s): {names}", pytrace=False)
