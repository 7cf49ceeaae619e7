"""The node agent: this cluster's kubelet. One process per node, running in that node's network namespace.

It registers the Node (labels, pod CIDR, addresses, capacity, the control-plane taint), renews its Lease every
10 s and posts a Ready heartbeat, watches the pods bound to it and runs each through a
:class:`~meshtest.cluster.pods.PodWorker`. It also serves the kubelet's ``/containerLogs`` endpoint on port
10250
so ``kubectl logs`` works. Graceful deletion ends with the final ``DELETE`` (grace 0, UID precondition), as
the kubelet does. On SIGTERM it stops all its pods (CNI DEL, netns removal) and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import platform
import signal
import ssl
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from meshkit import logs

from meshtest.cluster.cni import CniRunner
from meshtest.cluster.config import K8S_VERSION, ClusterLayout, NodeSpec, node_capacity
from meshtest.cluster.kubeapi import ApiError, AsyncKube, retrying, ssl_context
from meshtest.cluster.pods import NodeContext, PodWorker
from meshtest.cluster.podstatus import now

log = logging.getLogger("meshtest.cluster.agent")
Obj = dict[str, Any]
LEASE_SECONDS = 40
KUBELET_PORT = 10250


def micro_now() -> str:
    import datetime

    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def node_object(node: NodeSpec) -> Obj:
    labels = {
        "kubernetes.io/hostname": node.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": "amd64",
    }
    spec: Obj = {"podCIDR": node.pod_cidr, "podCIDRs": [node.pod_cidr]}
    if node.control_plane:
        labels["node-role.kubernetes.io/control-plane"] = ""
        spec["taints"] = [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node.name, "labels": labels},
        "spec": spec,
    }


def node_status(node: NodeSpec, since: str) -> Obj:
    """The Node status heartbeat; ``since`` (agent start) is every condition's lastTransitionTime."""
    cpus, memory_bytes = node_capacity()
    cpu, memory = str(cpus), f"{memory_bytes // 1024}Ki"
    resources = {"cpu": cpu, "memory": memory, "pods": "110", "ephemeral-storage": "100Gi"}
    stamp = now()

    def cond(kind: str, status: str, reason: str) -> Obj:
        return {
            "type": kind,
            "status": status,
            "reason": reason,
            "lastHeartbeatTime": stamp,
            "lastTransitionTime": since,
        }

    return {
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                cond("MemoryPressure", "False", "KubeletHasSufficientMemory"),
                cond("DiskPressure", "False", "KubeletHasNoDiskPressure"),
                cond("PIDPressure", "False", "KubeletHasSufficientPID"),
                cond("Ready", "True", "KubeletReady"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": node.ip},
                {"type": "Hostname", "address": node.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": KUBELET_PORT}},
            "nodeInfo": {
                "machineID": node.name,
                "systemUUID": node.name,
                "bootID": node.name,
                "kernelVersion": platform.release(),
                "osImage": "meshtest node (processes, no containers)",
                "containerRuntimeVersion": "meshtest://0.1.0",
                "kubeletVersion": K8S_VERSION,
                "kubeProxyVersion": K8S_VERSION,
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }
    }


class NodeAgent:
    def __init__(self, layout: ClusterLayout, node: NodeSpec) -> None:
        self.layout = layout
        self.node = node
        pki = layout.pki
        self.kube = AsyncKube(
            layout.api_url,
            ssl_context(pki / "ca.crt", pki / f"node-{node.name}.crt", pki / f"node-{node.name}.key"),
        )
        self.cni = CniRunner(layout.node_root(node.name))
        self.workers: dict[str, PodWorker] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = asyncio.Event()
        self.http: aiohttp.ClientSession | None = None
        self.since = now()

    async def run(self) -> None:
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        # the agents start with the API server: poll it briskly rather than backing off far
        await retrying(self._register, attempts=240, delay=0.25, max_delay=0.5)
        runner = await self._serve_kubelet_api()
        tasks = [asyncio.create_task(self._heartbeat()), asyncio.create_task(self._watch_pods())]
        await self.stopping.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(
            *(w.terminate(grace=min(w._grace(), 5.0)) for w in self.workers.values()), return_exceptions=True
        )
        await asyncio.gather(*(w.close() for w in self.workers.values()), return_exceptions=True)
        await runner.cleanup()
        await self.http.close()
        await self.kube.close()

    # -- node and lease --------------------------------------------------------------------------------------
    async def _register(self) -> None:
        try:
            await self.kube.request("POST", "/api/v1/nodes", node_object(self.node))
        except ApiError as err:
            if err.status != 409:
                raise
        await self.kube.patch(f"/api/v1/nodes/{self.node.name}/status", node_status(self.node, self.since))
        log.info("registered node %s", self.node.name)

    async def _renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node.name}"
        spec = {
            "holderIdentity": self.node.name,
            "leaseDurationSeconds": LEASE_SECONDS,
            "renewTime": micro_now(),
        }
        try:
            await self.kube.patch(path, {"spec": spec})
        except ApiError as err:
            if err.status != 404:
                raise
            await self.kube.request(
                "POST",
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": self.node.name, "namespace": "kube-node-lease"},
                    "spec": spec,
                },
            )

    async def _heartbeat(self) -> None:
        beats = 0
        while True:
            try:
                await self._renew_lease()
                if beats % 3 == 0:
                    await self.kube.patch(
                        f"/api/v1/nodes/{self.node.name}/status", node_status(self.node, self.since)
                    )
            except (TimeoutError, ApiError, aiohttp.ClientError, OSError) as err:
                log.warning("heartbeat failed: %s", err)
            beats += 1
            await asyncio.sleep(10)

    # -- pods ------------------------------------------------------------------------------------------------
    async def _watch_pods(self) -> None:
        params = {"fieldSelector": f"spec.nodeName={self.node.name}"}
        while True:
            try:
                async for event in self.kube.watch("/api/v1/pods", params):
                    if event["type"] == "BOOKMARK":
                        continue
                    if event["type"] == "SYNCED":
                        listed = {item["metadata"]["uid"] for item in event["object"]["items"]}
                        for uid, worker in list(self.workers.items()):
                            if uid not in listed and not worker.stopping.is_set():
                                self._background(self._finish(worker, final_delete=False))
                        continue
                    await self._dispatch(event["type"], event["object"])
            except (TimeoutError, ApiError, aiohttp.ClientError, OSError) as err:
                log.warning("pod watch: %s; re-listing", err)
                await asyncio.sleep(1)

    async def _dispatch(self, kind: str, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        worker = self.workers.get(uid)
        if kind == "DELETED":
            if worker is not None:
                self._background(self._finish(worker, final_delete=False))
            return
        if worker is None:
            if pod.get("status", {}).get("phase") in ("Succeeded", "Failed") or pod["metadata"].get(
                "deletionTimestamp"
            ):
                if pod["metadata"].get("deletionTimestamp"):
                    await self._final_delete(pod)
                return
            assert self.http is not None
            context = NodeContext(
                node=self.node,
                node_dir=self.layout.node_dir(self.node.name),
                kube=self.kube,
                cni=self.cni,
                http=self.http,
                python=sys.executable,
                marker=str(self.layout.run),
            )
            worker = PodWorker(pod, context)
            self.workers[uid] = worker
            log.info("starting pod %s/%s", pod["metadata"]["namespace"], pod["metadata"]["name"])
            worker.start()
            return
        worker.update(pod)
        if pod["metadata"].get("deletionTimestamp") and not worker.stopping.is_set():
            self._background(self._finish(worker, final_delete=True))

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _finish(self, worker: PodWorker, final_delete: bool) -> None:
        log.info("stopping pod %s/%s", worker.namespace, worker.name)
        await worker.terminate(grace=None if final_delete else 2.0)
        if final_delete:
            await self._final_delete(worker.pod)
        await worker.close()
        self.workers.pop(worker.uid, None)

    async def _final_delete(self, pod: Obj) -> None:
        meta = pod["metadata"]
        with contextlib.suppress(ApiError):
            await self.kube.request(
                "DELETE",
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}},
            )

    # -- kubelet API (logs) ----------------------------------------------------------------------------------
    async def _serve_kubelet_api(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/healthz", _healthz)
        app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", self._container_logs)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        pki = self.layout.pki
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(
            str(pki / f"kubelet-{self.node.name}.crt"), str(pki / f"kubelet-{self.node.name}.key")
        )
        ctx.verify_mode = ssl.CERT_REQUIRED
        await web.TCPSite(runner, self.node.ip, KUBELET_PORT, ssl_context=ctx).start()
        return runner

    async def _container_logs(self, request: web.Request) -> web.StreamResponse:
        ns, name, container = (request.match_info[k] for k in ("namespace", "pod", "container"))
        path = find_log(
            self.layout.node_dir(self.node.name),
            ns,
            name,
            container,
            previous=request.query.get("previous") in ("true", "1"),
        )
        if path is None:
            raise web.HTTPNotFound(text=f"no logs for {ns}/{name}/{container}")
        data = path.read_bytes()
        tail = request.query.get("tailLines")
        if tail:
            data = b"".join(data.splitlines(keepends=True)[-int(tail) :])
        if request.query.get("follow") not in ("true", "1"):
            return web.Response(body=data, content_type="text/plain")
        return await self._follow(request, path, data)

    async def _follow(self, request: web.Request, path: Path, first: bytes) -> web.StreamResponse:
        """``kubectl logs -f``: stream the file as it grows, until the client goes away or the container is
        replaced by a newer instance (a restart writes a new file)."""
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        await response.write(first)
        offset = len(first) if not request.query.get("tailLines") else _size(path)
        while not self.stopping.is_set():
            await asyncio.sleep(0.2)
            if request.transport is None or request.transport.is_closing():
                break  # the client (the API server's proxy for kubectl) went away
            offset, chunk = _read_from(path, offset)
            if chunk:
                await response.write(chunk)
            newest = find_log(self.layout.node_dir(self.node.name), *self._log_key(path))
            if newest is not None and newest != path:
                break
        await response.write_eof()
        return response

    @staticmethod
    def _log_key(path: Path) -> tuple[str, str, str]:
        namespace, pod, _uid = path.parents[1].name.split("_", 2)
        return namespace, pod, path.name.rsplit(".", 2)[0]


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _read_from(path: Path, offset: int) -> tuple[int, bytes]:
    """New bytes of a growing log file after ``offset`` (small local reads: fine on the loop)."""
    size = _size(path)
    if size <= offset:
        return offset, b""
    with open(path, "rb") as log_file:
        log_file.seek(offset)
        return size, log_file.read(size - offset)


async def _healthz(_request: web.Request) -> web.StreamResponse:
    return web.Response(text="ok")


def find_log(node_dir: Path, namespace: str, pod: str, container: str, previous: bool = False) -> Path | None:
    """The newest (or previous) log file of a container on this node, whatever pod UID it had."""
    candidates = sorted(
        (node_dir / "pods").glob(f"{namespace}_{pod}_*/logs/{container}.*.log"),
        key=lambda p: (
            p.parent.parent.stat().st_mtime,
            int(p.name.rsplit(".", 2)[-2]),
        ),  # pod dir age, restart
    )
    if previous:
        return candidates[-2] if len(candidates) > 1 else None
    return candidates[-1] if candidates else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--node", required=True)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--instance", type=int, default=0)
    args = parser.parse_args()
    logs.setup(os.environ.get("AMBIENT_CLUSTER_AGENT_LOG_LEVEL", "info"))
    layout = ClusterLayout(cache=Path(args.cache), workers=args.workers, instance=args.instance)
    agent = NodeAgent(layout, layout.node(args.node))

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, agent.stopping.set)
        await agent.run()

    asyncio.run(run())


if __name__ == "__main__":
    main()
