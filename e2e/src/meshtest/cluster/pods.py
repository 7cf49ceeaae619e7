"""One pod on one node: sandbox (network namespace via CNI), volumes, containers as supervised processes,
probes, and the status the API server sees. The node agent owns one :class:`PodWorker` per pod UID.

Lifecycle: ``setup`` (volumes, then network; retried while a referenced ConfigMap/Secret is missing) → init
containers in order → all containers, each under a supervisor that restarts it per ``restartPolicy`` with
exponential back-off (1 s doubling to 60 s, reset after 60 s of healthy running) → ``terminate`` (SIGTERM to
the process group, grace period, SIGKILL; then CNI DEL and the netns). Status is recomputed
(:mod:`~meshtest.cluster.podstatus`) after every change and written only when it differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from meshtest.cluster import podplan, probes, volumes
from meshtest.cluster.cni import CniRunner, pod_args, result_ips
from meshtest.cluster.config import DNS_SVC_IP, RUN_MARKER_ENV, NodeSpec, node_capacity, pod_netns_name
from meshtest.cluster.kubeapi import ApiError, AsyncKube
from meshtest.cluster.podstatus import ContainerState, PodProgress, now, pod_status

log = logging.getLogger("meshtest.cluster.pods")
Obj = dict[str, Any]
BACKOFF_START, BACKOFF_MAX = 1.0, 60.0


@dataclass(frozen=True, slots=True)
class NodeContext:
    """What every pod worker of one node shares."""

    node: NodeSpec
    node_dir: Path
    kube: AsyncKube
    cni: CniRunner
    http: aiohttp.ClientSession
    python: str  # the interpreter that runs our images' commands (the workspace venv)
    marker: str  # the cluster's run marker, put in every container's environment


class PodWorker:
    def __init__(self, pod: Obj, context: NodeContext) -> None:
        self.pod = pod
        node, node_dir = context.node, context.node_dir
        self.node = node
        self.kube = context.kube
        self.cni = context.cni
        self.http = context.http
        self.python = context.python
        self.marker = context.marker
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.dir = node_dir / "pods" / f"{self.namespace}_{self.name}_{self.uid}"
        self.node_root = node_dir / "root"
        self.host_network = bool(pod["spec"].get("hostNetwork"))
        self.container_id = self.uid.replace("-", "")
        self.netns_name = pod_netns_name(self.uid, node.instance)
        self.pod_ips: list[str] = []
        self.sources = podplan.Sources()
        self.token_times: dict[tuple[str, int], float] = {}
        spec = pod["spec"]
        self.init_states = [ContainerState(c, init=True) for c in spec.get("initContainers", [])]
        self.states = [ContainerState(c) for c in spec.get("containers", [])]
        self.initialized = not self.init_states
        self.init_failed = False
        self.sandbox_released = False
        self.setup_error: tuple[str, str] | None = None
        self.stopping = asyncio.Event()
        self.terminated = asyncio.Event()
        self.dirty = asyncio.Event()
        self.last_status: str = ""
        self.start_time = now()
        self._tasks: list[asyncio.Task[None]] = []
        self._status_task: asyncio.Task[None] | None = None

    # -- entry points ----------------------------------------------------------------------------------------
    def start(self) -> None:
        self._spawn(self._run())
        self._status_task = asyncio.get_running_loop().create_task(self._status_loop())

    def _spawn(self, coro: Coroutine[Any, Any, None], into: list[asyncio.Task[None]] | None = None) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        if into is None:
            self._tasks = [t for t in self._tasks if not t.done()]
        (self._tasks if into is None else into).append(task)

    def update(self, pod: Obj) -> None:
        self.pod = pod

    @property
    def netns_path(self) -> str:
        return self.node.netns_path if self.host_network else f"/run/netns/{self.netns_name}"

    # -- events ----------------------------------------------------------------------------------------------
    def event(self, reason: str, message: str, *, container: str = "", warning: bool = False) -> None:
        """Post a core/v1 Event about this pod, as the kubelet does (fire and forget)."""
        stamp = now()
        involved: Obj = {
            "apiVersion": "v1",
            "kind": "Pod",
            "namespace": self.namespace,
            "name": self.name,
            "uid": self.uid,
        }
        if container:
            involved["fieldPath"] = f"spec.containers{{{container}}}"
        body: Obj = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{self.name}.", "namespace": self.namespace},
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "type": "Warning" if warning else "Normal",
            "count": 1,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "source": {"component": "kubelet", "host": self.node.name},
            "reportingComponent": "kubelet",
            "reportingInstance": self.node.name,
        }

        async def post() -> None:
            with contextlib.suppress(ApiError, aiohttp.ClientError, OSError, TimeoutError):
                await self.kube.request("POST", f"/api/v1/namespaces/{self.namespace}/events", body)

        self._spawn(post())

    # -- main flow -------------------------------------------------------------------------------------------
    async def _run(self) -> None:
        try:
            await self._setup()
            self._spawn(self._resync_loop())
            for state in self.init_states:
                if not await self._run_init(state):
                    self.init_failed = not self.stopping.is_set()
                    self.dirty.set()
                    return
            self.initialized = True
            self.dirty.set()
            for state in self.states:
                self._spawn(self._supervise(state), state.tasks)
            if self.pod["spec"].get("restartPolicy", "Always") != "Always":
                # a finished pod keeps its status but, as with the kubelet, not its sandbox
                await asyncio.gather(*[t for s in self.states for t in s.tasks], return_exceptions=True)
                if not self.stopping.is_set():
                    await self._teardown_network()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("pod %s/%s failed", self.namespace, self.name)

    async def _setup(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "logs").mkdir(exist_ok=True)
        while not self.stopping.is_set():
            try:
                await self._fetch_sources()
                self._write_volumes()
                self.setup_error = None
                break
            except podplan.PlanError as err:
                if self.setup_error != (err.reason, str(err)):
                    self.event("FailedMount", str(err), warning=True)
                self.setup_error = (err.reason, str(err))
                self.dirty.set()
                log.warning("pod %s/%s waiting: %s", self.namespace, self.name, err)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), 2.0)
        if self.stopping.is_set():
            raise asyncio.CancelledError
        await self._sandbox()
        self._write_etc_files()
        self.dirty.set()

    async def _sandbox(self) -> None:
        """Create the pod's network, retrying with back-off while CNI ADD fails (e.g. a chained plugin whose
        node agent is not ready yet), undoing each failed attempt with DEL first, as the kubelet does."""
        backoff = BACKOFF_START
        while True:
            try:
                await self._network()
                return
            except Exception as err:  # any plugin failure: report, clean up, retry
                log.warning("pod %s/%s sandbox creation failed: %s", self.namespace, self.name, err)
                self.event(
                    "FailedCreatePodSandBox", f"Failed to create pod sandbox: {err}"[:1000], warning=True
                )
                self.setup_error = ("ContainerCreating", f"sandbox: {err}"[:500])
                self.dirty.set()
                self.sandbox_released = False
                await self._teardown_network()
                await self._sleep(backoff)
                if self.stopping.is_set():
                    raise asyncio.CancelledError from None
                backoff = min(backoff * 2, 30.0)
            finally:
                if self.pod_ips:
                    self.setup_error = None

    async def _network(self) -> None:
        if self.host_network:
            self.pod_ips = [self.node.ip]
            return
        proc = await asyncio.create_subprocess_exec("ip", "netns", "add", self.netns_name)
        await proc.wait()
        args = pod_args(self.namespace, self.name, self.uid, self.container_id)
        ports = [
            {
                "hostPort": p["hostPort"],
                "containerPort": p["containerPort"],
                "protocol": p.get("protocol", "TCP").lower(),
            }
            for c in self.pod["spec"].get("containers", [])
            for p in c.get("ports", [])
            if p.get("hostPort")
        ]
        attachment = await self.cni.add(self.container_id, self.netns_path, args, {"portMappings": ports})
        self.pod_ips = result_ips(attachment.result)
        log.info("pod %s/%s network ready ips=%s", self.namespace, self.name, self.pod_ips)

    # -- volumes ---------------------------------------------------------------------------------------------
    async def _fetch_sources(self) -> None:
        refs = podplan.references(self.pod)
        ns = self.namespace
        cms, secrets = {}, {}
        for name in refs.configmaps:
            with contextlib.suppress(ApiError):
                cms[name] = await self.kube.get(f"/api/v1/namespaces/{ns}/configmaps/{name}")
        for name in refs.secrets:
            with contextlib.suppress(ApiError):
                secrets[name] = await self.kube.get(f"/api/v1/namespaces/{ns}/secrets/{name}")
        self.sources.configmaps, self.sources.secrets = cms, secrets
        if self.pod["spec"].get("enableServiceLinks", True):
            with contextlib.suppress(ApiError):
                listing = await self.kube.get(f"/api/v1/namespaces/{ns}/services")
                self.sources.services = list(listing.get("items", []))
        for key in refs.tokens:
            audience, expiry = key
            age = time.monotonic() - self.token_times.get(key, -1e9)
            if key in self.sources.tokens and age < 0.8 * expiry:
                continue
            self.sources.tokens[key] = await self._token(audience, expiry)
            self.token_times[key] = time.monotonic()
        self.sources.node_cpu, self.sources.node_memory = node_capacity()

    async def _token(self, audience: str, expiry: int) -> str:
        sa = self.pod["spec"].get("serviceAccountName") or "default"
        body: Obj = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": expiry,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid},
            },
        }
        if audience:
            body["spec"]["audiences"] = [audience]
        try:
            result = await self.kube.request(
                "POST", f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{sa}/token", body
            )
        except ApiError as err:
            raise podplan.PlanError("CreateContainerConfigError", f"token request failed: {err}") from None
        return str(result["status"]["token"])

    def _volume_dirs(self) -> dict[str, str]:
        dirs = {}
        for volume in self.pod["spec"].get("volumes", []):
            name = volume["name"]
            if "hostPath" in volume:
                dirs[name] = podplan.host_path(volume, str(self.node_root))[0]
            else:
                dirs[name] = str(self.dir / "volumes" / name)
        return dirs

    def _write_volumes(self) -> None:
        for volume in self.pod["spec"].get("volumes", []):
            target = self.dir / "volumes" / volume["name"]
            files = podplan.volume_files(self.pod, volume, self.sources)
            if files is not None:
                volumes.sync_files(target, files)
            elif "emptyDir" in volume:
                target.mkdir(parents=True, exist_ok=True)
            elif "hostPath" in volume:
                volumes.ensure_host_path(*podplan.host_path(volume, str(self.node_root)))
            else:
                kind = sorted(k for k in volume if k != "name")
                raise podplan.PlanError(
                    "CreateContainerConfigError", f"volume type {kind} is not supported here"
                )

    async def _resync_loop(self) -> None:
        """ConfigMap/Secret/token volumes are refreshed like the kubelet's periodic sync (tokens at 80%
        TTL)."""
        while not self.stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), 10.0)
            if self.stopping.is_set():
                return
            try:
                await self._fetch_sources()
                self._write_volumes()
            except (podplan.PlanError, ApiError, aiohttp.ClientError, OSError) as err:
                log.warning("pod %s/%s volume resync: %s", self.namespace, self.name, err)

    def _write_etc_files(self) -> None:
        etc = self.dir / "etc"
        etc.mkdir(exist_ok=True)
        spec = self.pod["spec"]
        host_resolv = Path("/etc/resolv.conf").read_text() if Path("/etc/resolv.conf").exists() else ""
        (etc / "resolv.conf").write_text(podplan.resolv_conf(spec, self.namespace, DNS_SVC_IP, host_resolv))
        hostname = self.node.name if self.host_network else self.name
        (etc / "hostname").write_text(hostname + "\n")
        (etc / "hosts").write_text(podplan.hosts_file(spec, hostname, self.pod_ips))

    # -- containers ------------------------------------------------------------------------------------------
    def _plan(self, state: ContainerState) -> Path:
        pod = dict(self.pod)
        pod["status"] = dict(pod.get("status") or {}, **self._ip_status())
        etc = self.dir / "etc"
        implicit = [
            podplan.Mount(str(etc / "resolv.conf"), "/etc/resolv.conf", False),
            podplan.Mount(str(etc / "hostname"), "/etc/hostname", False),
        ]
        if not self.host_network:
            implicit.append(podplan.Mount(str(etc / "hosts"), "/etc/hosts", False))
        # a private /tmp per pod, as a container image's own filesystem would give (shared by its containers)
        tmp = self.dir / "tmp"
        if not tmp.exists():
            tmp.mkdir()
            tmp.chmod(0o1777)
        implicit.append(podplan.Mount(str(tmp), "/tmp", False))
        plan = podplan.container_plan(
            pod,
            state.spec,
            self.sources,
            volume_dirs=self._volume_dirs(),
            python=self.python,
            implicit_mounts=implicit,
        )
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONUNBUFFERED": "1",
            RUN_MARKER_ENV: self.marker,
            **dict(plan.env),
        }
        data = {
            "netns": self.netns_path,
            "hostname": self.node.name if self.host_network else self.name,
            "argv": list(plan.argv),
            "env": env,
            "workdir": plan.workdir,
            "capabilities": None if plan.capabilities is None else list(plan.capabilities),
            "rootfs": str(self.dir / "rootfs" / state.name),
            "mounts": [
                {"source": m.source, "target": m.target, "read_only": m.read_only} for m in plan.mounts
            ],
        }
        path = self.dir / f"{state.name}.plan.json"
        path.write_text(json.dumps(data, indent=1))
        return path

    def log_path(self, name: str, restart: int) -> Path:
        return self.dir / "logs" / f"{name}.{restart}.log"

    async def _launch(self, state: ContainerState) -> bool:
        try:
            plan = self._plan(state)
        except podplan.PlanError as err:
            if state.waiting != (err.reason, str(err)):
                self.event("Failed", str(err), container=state.name, warning=True)
            state.waiting = (err.reason, str(err))
            log.warning("pod %s/%s container %s: %s", self.namespace, self.name, state.name, err)
            self.dirty.set()
            return False
        # a local append-only file: opening it does not block the loop in any way that matters
        with open(self.log_path(state.name, state.restart_count), "ab") as out:  # noqa: ASYNC230
            state.proc = await asyncio.create_subprocess_exec(
                self.python,
                "-m",
                "meshtest.cluster.launch",
                str(plan),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, RUN_MARKER_ENV: self.marker},
            )
        state.started_at, state.waiting, state.terminated = now(), None, None
        state.ready = state.started = False
        self.event("Started", f"Started container {state.name} (pid {state.proc.pid})", container=state.name)
        self.dirty.set()
        return True

    async def _wait_exit(self, state: ContainerState) -> int:
        assert state.proc is not None
        code = await state.proc.wait()
        finished = now()
        state.ready = False
        state.terminated = {
            "exitCode": code if code >= 0 else 128 - code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": state.started_at,
            "finishedAt": finished,
        }
        self.dirty.set()
        return code

    async def _run_init(self, state: ContainerState) -> bool:
        backoff = BACKOFF_START
        policy = self.pod["spec"].get("restartPolicy", "Always")
        while not self.stopping.is_set():
            if not await self._launch(state):
                await self._sleep(backoff)
                continue
            if await self._wait_exit(state) == 0:
                return True
            if policy == "Never" or self.stopping.is_set():
                return False
            state.last_terminated, state.restart_count = state.terminated, state.restart_count + 1
            state.waiting = ("CrashLoopBackOff", f"back-off {backoff:.0f}s restarting failed container")
            await self._sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
        return False

    async def _supervise(self, state: ContainerState) -> None:
        backoff = BACKOFF_START
        policy = self.pod["spec"].get("restartPolicy", "Always")
        while not self.stopping.is_set():
            if not await self._launch(state):
                await self._sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            started = time.monotonic()
            probes = [asyncio.get_running_loop().create_task(self._probes(state))]
            try:
                code = await self._wait_exit(state)
            finally:
                for task in probes:
                    task.cancel()
                await asyncio.gather(*probes, return_exceptions=True)
            if self.stopping.is_set() or policy == "Never" or (policy == "OnFailure" and code == 0):
                return
            if time.monotonic() - started > BACKOFF_MAX:
                backoff = BACKOFF_START
            state.last_terminated, state.restart_count = state.terminated, state.restart_count + 1
            state.waiting = ("CrashLoopBackOff", f"back-off {backoff:.0f}s restarting failed container")
            self.event(
                "BackOff",
                f"Back-off {backoff:.0f}s restarting container {state.name}",
                container=state.name,
                warning=True,
            )
            self.dirty.set()
            await self._sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    # -- probes ----------------------------------------------------------------------------------------------
    async def _probes(self, state: ContainerState) -> None:
        """startupProbe first (readiness and liveness wait for it), then readiness and liveness together."""
        if "startupProbe" in state.spec and not await self._startup(state):
            return
        state.started = True
        if "readinessProbe" not in state.spec:
            state.ready = True
        self.dirty.set()
        kinds = [kind for kind in ("readinessProbe", "livenessProbe") if kind in state.spec]
        await asyncio.gather(*(self._probe_loop(state, kind) for kind in kinds))

    async def _startup(self, state: ContainerState) -> bool:
        probe = state.spec["startupProbe"]
        period = float(probe.get("periodSeconds", 10))
        failure_needed = int(probe.get("failureThreshold", 3))
        await asyncio.sleep(float(probe.get("initialDelaySeconds", 0)))
        failures = 0
        while not await self._probe_once(state, probe):
            failures += 1
            if failures >= failure_needed:
                self.event("Unhealthy", "Startup probe failed", container=state.name, warning=True)
                await self._kill(state, self._grace())
                return False
            await asyncio.sleep(period)
        return True

    async def _probe_loop(self, state: ContainerState, kind: str) -> None:
        probe = state.spec[kind]
        period = float(probe.get("periodSeconds", 10))
        success_needed = int(probe.get("successThreshold", 1))
        failure_needed = int(probe.get("failureThreshold", 3))
        await asyncio.sleep(float(probe.get("initialDelaySeconds", 0)))
        successes = failures = 0
        while True:
            ok = await self._probe_once(state, probe)
            successes, failures = (successes + 1, 0) if ok else (0, failures + 1)
            if kind == "readinessProbe":
                ready = state.ready
                if ok and successes >= success_needed:
                    ready = True
                elif not ok and failures >= failure_needed:
                    ready = False
                if ready != state.ready:
                    state.ready = ready
                    self.dirty.set()
            if failures == failure_needed:  # once per failing streak, not every poll
                self.event(
                    "Unhealthy", f"{kind[:-5].capitalize()} probe failed", container=state.name, warning=True
                )
            if kind == "livenessProbe" and failures >= failure_needed and state.proc is not None:
                log.warning(
                    "pod %s/%s container %s failed liveness; restarting",
                    self.namespace,
                    self.name,
                    state.name,
                )
                await self._kill(state, self._grace())
                return
            # the first readiness result comes fast (polled each 0.5 s) so pods turn Ready without a long wait
            await asyncio.sleep(min(period, 0.5) if kind == "readinessProbe" and not state.ready else period)

    def _pod_ip(self) -> str:
        return self.pod_ips[0] if self.pod_ips else ""

    async def _probe_once(self, state: ContainerState, probe: Obj) -> bool:
        pid = state.proc.pid if state.proc is not None and state.proc.returncode is None else None
        target = probes.ProbeTarget(container=state.spec, pod_ip=self._pod_ip(), pid=pid)
        return await probes.probe_once(probe, target, self.http)

    # -- termination -----------------------------------------------------------------------------------------
    def _grace(self) -> float:
        meta_grace = self.pod["metadata"].get("deletionGracePeriodSeconds")
        if meta_grace is not None:
            return float(meta_grace)
        return float(self.pod["spec"].get("terminationGracePeriodSeconds", 30))

    async def _kill(self, state: ContainerState, grace: float) -> None:
        proc = state.proc
        if proc is None or proc.returncode is not None:
            return
        self.event("Killing", f"Stopping container {state.name}", container=state.name)
        hook = (state.spec.get("lifecycle") or {}).get("preStop")
        if hook:  # runs within the grace period; the kubelet then grants at least 2 s for SIGTERM
            started = time.monotonic()
            target = probes.ProbeTarget(container=state.spec, pod_ip=self._pod_ip(), pid=proc.pid)
            await probes.run_hook(hook, target, self.http, grace)
            grace = max(grace - (time.monotonic() - started), 2.0)
        _killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), grace)
        except TimeoutError:
            _killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        _killpg(proc.pid, signal.SIGKILL)  # stragglers left in the container's process group

    async def terminate(self, grace: float | None = None) -> None:
        """Stop every container (SIGTERM, grace, SIGKILL), then tear the sandbox down. Idempotent."""
        if self.stopping.is_set():
            await self.terminated.wait()
            return
        self.stopping.set()
        grace = self._grace() if grace is None else grace
        all_states = self.init_states + self.states
        await asyncio.gather(*(self._kill(s, grace) for s in all_states), return_exceptions=True)
        for task in self._tasks + [t for s in all_states for t in s.tasks]:
            if task is not asyncio.current_task() and not task.done():
                task.cancel()
        await asyncio.gather(*[t for s in all_states for t in s.tasks], return_exceptions=True)
        await self._teardown_network()
        self.terminated.set()
        self.dirty.set()

    async def _teardown_network(self) -> None:
        if self.host_network or self.sandbox_released:
            return
        self.sandbox_released = True
        try:
            await self.cni.delete(self.container_id, self.netns_path)
        except Exception as err:  # the netns is removed anyway; the warning lands in the failure dump
            log.warning("pod %s/%s CNI DEL: %s", self.namespace, self.name, err)
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "del", self.netns_name, stderr=asyncio.subprocess.DEVNULL
        )
        await proc.wait()

    async def close(self) -> None:
        tasks = [*self._tasks, *([self._status_task] if self._status_task else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- status ----------------------------------------------------------------------------------------------
    def _ip_status(self) -> Obj:
        out: Obj = {"hostIP": self.node.ip, "hostIPs": [{"ip": self.node.ip}]}
        if self.pod_ips:
            out["podIP"] = self.pod_ips[0]
            out["podIPs"] = [{"ip": ip} for ip in self.pod_ips]
        return out

    def compute_status(self) -> Obj:
        if self.setup_error:
            for state in self.init_states + self.states:
                state.waiting = self.setup_error
        return pod_status(
            self.pod["spec"],
            PodProgress(
                init_states=self.init_states,
                states=self.states,
                initialized=self.initialized,
                init_failed=self.init_failed,
                start_time=self.start_time,
                ip_status=self._ip_status(),
                network_ready=bool(self.pod_ips),
            ),
        )

    async def _status_loop(self) -> None:
        path = f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status"
        previous: dict[str, Obj] = {}
        while True:
            await self.dirty.wait()
            self.dirty.clear()
            status = self.compute_status()
            # keep lastTransitionTime stable unless the condition's status changed
            for condition in status["conditions"]:
                old = previous.get(condition["type"])
                if old and old["status"] == condition["status"]:
                    condition["lastTransitionTime"] = old["lastTransitionTime"]
            previous = {c["type"]: c for c in status["conditions"]}
            encoded = json.dumps(status, sort_keys=True)
            if encoded == self.last_status:
                continue
            try:
                # strategic merge (as the kubelet): conditions merge by type, so a condition another
                # controller sets on the pod survives; the UID makes it a precondition
                await self.kube.patch(
                    path, {"metadata": {"uid": self.uid}, "status": status}, kind="strategic"
                )
                self.last_status = encoded
            except ApiError as err:
                if err.status in (404, 409):
                    return  # the pod is gone (or replaced under the same name)
                log.warning("pod %s/%s status update: %s", self.namespace, self.name, err)
                self.dirty.set()
                await asyncio.sleep(1.0)
            except (aiohttp.ClientError, OSError) as err:
                log.warning("pod %s/%s status update: %s", self.namespace, self.name, err)
                self.dirty.set()
                await asyncio.sleep(1.0)


def _killpg(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
