"""Pod status as the kubelet reports it, computed purely from the state of a pod's containers.

:class:`ContainerState` is the mutable record a pod worker keeps per container; :func:`pod_status` turns the
records into the ``status`` the API server stores: phase (Pending → Running → Succeeded/Failed per
``restartPolicy``), conditions, pod/host IPs and per-container states with restart counts and last states.
"""

from __future__ import annotations

import asyncio
import datetime
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(slots=True)
class ContainerState:
    spec: Obj
    init: bool = False
    proc: asyncio.subprocess.Process | None = None
    restart_count: int = 0
    ready: bool = False
    started: bool = False  # the startup probe (if any) has passed
    started_at: str | None = None
    waiting: tuple[str, str] | None = ("ContainerCreating", "")
    terminated: Obj | None = None
    last_terminated: Obj | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def status(self, pod_image: str) -> Obj:
        if self.proc is not None and self.proc.returncode is None and self.started_at:
            state: Obj = {"running": {"startedAt": self.started_at}}
        elif self.terminated is not None and (self.waiting is None or self.waiting[0] != "CrashLoopBackOff"):
            state = {"terminated": self.terminated}
        else:
            reason, message = self.waiting or ("ContainerCreating", "")
            state = {"waiting": {"reason": reason, **({"message": message} if message else {})}}
        out: Obj = {
            "name": self.name,
            "image": pod_image,
            "imageID": f"meshtest://{pod_image}",
            "ready": self.ready,
            "restartCount": self.restart_count,
            "state": state,
            "started": "running" in state and self.started,
            "lastState": {},
        }
        if self.proc is not None and self.proc.returncode is None:
            out["containerID"] = f"meshtest://{self.proc.pid}"
        if self.last_terminated is not None:
            out["lastState"] = {"terminated": self.last_terminated}
        return out


@dataclass(frozen=True, slots=True)
class PodProgress:
    """Where a pod worker is: its container records and the pod-level facts the status needs."""

    init_states: list[ContainerState]
    states: list[ContainerState]
    initialized: bool
    init_failed: bool
    start_time: str
    ip_status: Obj
    network_ready: bool


def _running(state: ContainerState) -> bool:
    return state.proc is not None and state.proc.returncode is None


def pod_phase(spec: Obj, progress: PodProgress) -> str:
    states = progress.states
    running = [s for s in states if _running(s)]
    exited = [s for s in states if s.terminated is not None and not _running(s)]
    policy = spec.get("restartPolicy", "Always")
    if progress.init_failed:
        return "Failed"
    if policy != "Always" and states and len(exited) == len(states):
        failed = any(s.terminated and s.terminated["exitCode"] != 0 for s in exited)
        if policy == "Never" or not failed:
            return "Failed" if failed else "Succeeded"
    return "Running" if progress.initialized and running else "Pending"


def pod_status(spec: Obj, progress: PodProgress, stamp: str | None = None) -> Obj:
    images = {
        c["name"]: c.get("image", "") for c in spec.get("containers", []) + spec.get("initContainers", [])
    }
    all_ready = bool(progress.states) and all(s.ready for s in progress.states) and progress.initialized
    at = stamp or now()

    def cond(kind: str, ok: bool) -> Obj:
        return {
            "type": kind,
            "status": "True" if ok else "False",
            "lastProbeTime": None,
            "lastTransitionTime": at,
        }

    status: Obj = {
        "phase": pod_phase(spec, progress),
        "conditions": [
            cond("PodReadyToStartContainers", progress.network_ready),
            cond("Initialized", progress.initialized),
            cond("ContainersReady", all_ready),
            cond("Ready", all_ready),
            cond("PodScheduled", True),
        ],
        "containerStatuses": [s.status(images[s.name]) for s in progress.states],
        "startTime": progress.start_time,
        **progress.ip_status,
    }
    if progress.init_states:
        status["initContainerStatuses"] = [s.status(images[s.name]) for s in progress.init_states]
    return status
