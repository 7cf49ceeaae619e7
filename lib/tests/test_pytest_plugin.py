"""meshkit.testing.pytest_plugin, checked by running pytest inside pytest (``pytester``)."""

from __future__ import annotations

import os

import pytest
from meshkit.testing.pytest_plugin import SKIP_REASON

INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
filterwarnings = error
addopts = -p meshkit.testing.pytest_plugin --strict-markers -rs
"""

LEAKY = """
import asyncio
import contextlib

import pytest


async def test_leaks_a_task():
    asyncio.get_running_loop().create_task(asyncio.sleep(3600), name="forgotten-sleeper")


async def test_awaits_its_task():
    await asyncio.get_running_loop().create_task(asyncio.sleep(0), name="awaited")


@pytest.fixture
async def owned_task():
    task = asyncio.get_running_loop().create_task(asyncio.sleep(3600), name="fixture-owned")
    yield task
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_fixture_that_cleans_up_is_fine(owned_task):
    assert not owned_task.done()


def test_sync_tests_are_not_checked():
    pass
"""

ROOT = """
import pytest


@pytest.mark.root
def test_needs_root():
    pass


def test_plain():
    pass
"""


@pytest.fixture
def inner(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(INI)
    return pytester


def test_leaked_task_fails_the_test(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_leaky=LEAKY)
    result = inner.runpytest()
    # The leaking test errors at teardown; the others pass untouched.
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_leaks_a_task*",
            "*test leaked 1 asyncio task(s): forgotten-sleeper*",
        ]
    )
    assert "fixture-owned" not in result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_root_tests_skip_with_reason_when_not_root(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    inner.makepyfile(test_root=ROOT)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.delenv("CI", raising=False)
    result = inner.runpytest()
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines([f"SKIPPED*test_root.py*{SKIP_REASON}*"])
    assert result.ret == pytest.ExitCode.OK


@pytest.mark.parametrize("ci", ["true", "1", "TRUE"])
def test_root_tests_fail_in_ci_when_not_root(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str
) -> None:
    inner.makepyfile(test_root=ROOT)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("CI", ci)
    result = inner.runpytest()
    result.assert_outcomes(passed=1, errors=1)  # fails in setup: never a silent skip
    result.stdout.fnmatch_lines(["*CI=true but not running as root*test_needs_root*must run as root in CI*"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


@pytest.mark.parametrize("ci", [None, "true"])
def test_root_tests_run_as_root(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str | None
) -> None:
    inner.makepyfile(test_root=ROOT)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    inner.runpytest().assert_outcomes(passed=2)


def test_ci_false_still_skips(inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    inner.makepyfile(test_root=ROOT)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("CI", "false")
    inner.runpytest().assert_outcomes(passed=1, skipped=1)


def test_markers_are_registered_by_the_plugin(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_marks="""
        import pytest

        @pytest.mark.cluster
        @pytest.mark.slow
        def test_marked():
            pass
        """
    )
    inner.runpytest().assert_outcomes(passed=1)  # --strict-markers would error on unknown marks
