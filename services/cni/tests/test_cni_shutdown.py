"""A stopping agent decides: uninstall from the node, or keep the plugin for its successor (safe upgrade)."""

from __future__ import annotations

import asyncio
import os
import signal
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from istio_cni.__main__ import decide_uninstall, serve
from istio_cni.app import App
from istio_cni.settings import Settings


class Answers:
    """A DaemonSet check that fails ``failures`` times (raising or hanging), then answers ``gone``."""

    def __init__(self, failures: int, gone: bool, hang: bool = False) -> None:
        self.failures = failures
        self.gone = gone
        self.hang = hang
        self.calls = 0

    async def __call__(self) -> bool:
        self.calls += 1
        if self.calls <= self.failures:
            if self.hang:
                await asyncio.sleep(3600)
            raise TimeoutError("the API server did not answer")
        return self.gone


async def test_an_answer_on_the_first_try_decides() -> None:
    assert await decide_uninstall(Answers(0, gone=True)) is True
    assert await decide_uninstall(Answers(0, gone=False)) is False


async def test_failed_checks_are_retried_until_an_answer_comes() -> None:
    check = Answers(3, gone=True)
    assert await decide_uninstall(check, budget_s=5.0, first_delay_s=0.01) is True
    assert check.calls == 4


async def test_no_answer_within_the_budget_keeps_the_plugin(caplog: pytest.LogCaptureFixture) -> None:
    check = Answers(10_000, gone=True)
    assert await decide_uninstall(check, budget_s=0.3, first_delay_s=0.01) is False
    assert check.calls > 1
    assert "keeping the plugin" in caplog.text


async def test_a_hanging_check_is_cut_off_by_the_budget() -> None:
    check = Answers(10_000, gone=True, hang=True)
    async with asyncio.timeout(5):
        assert await decide_uninstall(check, budget_s=0.3, first_delay_s=0.01) is False


async def test_a_hung_first_check_then_an_answer() -> None:
    check = Answers(1, gone=True, hang=True)
    assert await decide_uninstall(check, budget_s=1.0, first_delay_s=0.01) is True


@dataclass
class FakeKube:
    gone: bool
    asked: list[tuple[str, str]] = field(default_factory=list)

    async def daemonset_gone(self, namespace: str, name: str) -> bool:
        self.asked.append((namespace, name))
        return self.gone


@dataclass
class FakeApp:
    settings: Settings
    kube: FakeKube
    calls: list[str] = field(default_factory=list)

    async def uninstall(self) -> None:
        self.calls.append("uninstall")

    async def close(self) -> None:
        self.calls.append("close")


async def test_sigterm_during_start_up_still_reaches_the_uninstall_decision() -> None:
    """Start-up chains the plugin before it finishes; a Helm uninstall that lands then must not leave it."""
    app = FakeApp(Settings(pod_namespace="istio-system"), FakeKube(gone=True))
    handler_during_start: list[Any] = []

    async def start(settings: Settings) -> App:
        handler_during_start.append(signal.getsignal(signal.SIGTERM))
        if handler_during_start[0] in (signal.SIG_DFL, None):
            pytest.fail("no SIGTERM handler while starting: the signal would kill the agent mid start-up")
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(0.05)  # the rest of start-up; the signal is only noted
        return cast(App, app)

    async with asyncio.timeout(10):
        await serve(Settings(), start)
    assert app.kube.asked == [("istio-system", "istio-cni-node")]
    assert app.calls == ["uninstall", "close"]
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.default_int_handler)


async def test_an_upgrade_keeps_the_plugin() -> None:
    app = FakeApp(Settings(), FakeKube(gone=False))

    async def start(settings: Settings) -> App:
        asyncio.get_running_loop().call_later(0.01, os.kill, os.getpid(), signal.SIGTERM)
        return cast(App, app)

    async with asyncio.timeout(10):
        await serve(Settings(), start)
    assert app.calls == ["close"]
