"""Pod phase and conditions from container records (no processes: fakes with a returncode)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from meshtest.cluster.podstatus import ContainerState, PodProgress, pod_phase, pod_status


@dataclass
class FakeProc:
    pid: int = 42
    returncode: int | None = None


def running(name: str, ready: bool = True) -> ContainerState:
    state = ContainerState(
        {"name": name, "image": "app"}, started_at="t0", waiting=None, ready=ready, started=True
    )
    state.proc = FakeProc()  # type: ignore[assignment]
    return state


def exited(name: str, code: int) -> ContainerState:
    state = ContainerState({"name": name, "image": "app"}, started_at="t0", waiting=None)
    state.proc = FakeProc(returncode=code)  # type: ignore[assignment]
    state.terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error"}
    return state


def progress(*states: ContainerState, initialized: bool = True, init_failed: bool = False) -> PodProgress:
    return PodProgress(
        init_states=[],
        states=list(states),
        initialized=initialized,
        init_failed=init_failed,
        start_time="t0",
        ip_status={"podIP": "10.244.1.2"},
        network_ready=True,
    )


def spec(policy: str, *names: str) -> dict[str, Any]:
    return {"restartPolicy": policy, "containers": [{"name": n, "image": "app"} for n in names]}


@pytest.mark.parametrize(
    ("policy", "codes", "phase"),
    [
        ("Always", (0,), "Pending"),
        ("Never", (0, 0), "Succeeded"),
        ("Never", (0, 1), "Failed"),
        ("OnFailure", (0, 0), "Succeeded"),
        ("OnFailure", (1, 0), "Pending"),
    ],
)
def test_phase_after_exits(policy: str, codes: tuple[int, ...], phase: str) -> None:
    names = [f"c{i}" for i in range(len(codes))]
    states = [exited(n, c) for n, c in zip(names, codes, strict=True)]
    assert pod_phase(spec(policy, *names), progress(*states)) == phase


def test_running_pod_is_ready_only_when_every_container_is() -> None:
    status = pod_status(
        spec("Always", "a", "b"), progress(running("a"), running("b", ready=False)), stamp="t1"
    )
    assert status["phase"] == "Running"
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions == {
        "PodReadyToStartContainers": "True",
        "Initialized": "True",
        "ContainersReady": "False",
        "Ready": "False",
        "PodScheduled": "True",
    }
    first = status["containerStatuses"][0]
    assert first["state"] == {"running": {"startedAt": "t0"}}
    assert first["containerID"] == "meshtest://42"
    assert first["started"] is True
    assert status["podIP"] == "10.244.1.2"


def test_init_failure_fails_the_pod_and_waiting_reasons_show() -> None:
    waiting = ContainerState({"name": "a", "image": "nope"}, waiting=("ErrImagePull", "no local command"))
    status = pod_status(
        spec("Never", "a"), progress(waiting, initialized=False, init_failed=True), stamp="t1"
    )
    assert status["phase"] == "Failed"
    assert status["containerStatuses"][0]["state"] == {
        "waiting": {"reason": "ErrImagePull", "message": "no local command"}
    }


def test_crash_loop_shows_waiting_with_last_state() -> None:
    state = exited("a", 2)
    state.last_terminated, state.restart_count = state.terminated, 1
    state.waiting = ("CrashLoopBackOff", "back-off 2s")
    entry = pod_status(spec("Always", "a"), progress(state), stamp="t1")["containerStatuses"][0]
    assert entry["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert entry["lastState"]["terminated"]["exitCode"] == 2
    assert entry["restartCount"] == 1
