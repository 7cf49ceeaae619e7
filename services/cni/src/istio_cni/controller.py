"""Keeps the node's pods in line with the enrolment rules: reacts to Pod and Namespace changes, to CNI plugin
ADD events, and reconciles everything once at start-up (behaviour.md §3.1-3.2).

Work is queued by pod key (``namespace/name``) and done by one worker, so a pod is never reconciled twice at
once; a namespace change queues each of its pods on this node. A failed reconcile is queued again after the
retry interval. Plugin ADDs are handled inline (the runtime waits for them) under the dataplane's pod lock.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from meshkit.logs import kv

from istio_cni import enrolment
from istio_cni.dataplane import ENABLED, MeshDataplane, pod_ips
from istio_cni.events import AddOutcome, PluginAddEvent
from istio_cni.iptables import remove_pod_rules

log = logging.getLogger("cni.controller")
Obj = Mapping[str, Any]


class KubeView(Protocol):
    """What the controller reads: informer caches of this node's pods and all namespaces, plus API lookups."""

    def pod(self, key: str) -> Obj | None: ...
    def namespace(self, name: str) -> Obj | None: ...
    def node_pods(self) -> list[Obj]: ...
    async def fetch_pod(self, namespace: str, name: str) -> Obj | None: ...
    async def fetch_namespace(self, name: str) -> Obj | None: ...


def _same_uid(pod: Obj, uid: str) -> bool:
    """The runtime's K8S_POD_UID (when it sends one) names the pod; a cache may still hold its predecessor."""
    return not uid or str(pod.get("metadata", {}).get("uid", "")) == uid


def pod_key(pod: Obj) -> str:
    meta = pod.get("metadata", {})
    return f"{meta.get('namespace')}/{meta.get('name')}"


class PodController:
    def __init__(
        self,
        view: KubeView,
        dataplane: MeshDataplane,
        selectors: Sequence[Obj],
        exclude_namespaces: Sequence[str],
        *,
        retry_s: float = 5.0,
        reapply_on_startup: bool = True,
    ) -> None:
        self.view = view
        self.dataplane = dataplane
        self.selectors = list(selectors)
        self.exclude = list(exclude_namespaces)
        self.retry_s = retry_s
        self.reapply_on_startup = reapply_on_startup
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.idle = asyncio.Event()  # set whenever the queue has been drained (tests wait on it)
        # Until the start-up reconcile has drained, a redirection annotation means a previous agent's rules.
        # Afterwards it proves nothing (a pod's owner can write it), so rules are always applied.
        self.starting = True

    # ---- event intake (called on the loop by informers) ----

    def pod_changed(self, pod: Obj) -> None:
        self._enqueue(pod_key(pod))

    def namespace_changed(self, namespace: Obj) -> None:
        name = namespace.get("metadata", {}).get("name")
        for pod in self.view.node_pods():
            if pod.get("metadata", {}).get("namespace") == name:
                self._enqueue(pod_key(pod))

    def resync(self) -> None:
        """Start-up reconcile: every pod on the node, and every pod we still hold."""
        for pod in self.view.node_pods():
            self._enqueue(pod_key(pod))
        for rec in list(self.dataplane.pods.values()):
            self._enqueue(f"{rec.namespace}/{rec.name}")

    def _enqueue(self, key: str) -> None:
        self.idle.clear()
        self.queue.put_nowait(key)

    # ---- decisions ----

    def wants(self, pod: Obj, namespace: Obj | None) -> bool:
        return enrolment.should_enrol(pod, namespace, self.selectors, self.exclude)

    async def run(self) -> None:
        while True:
            if self.queue.empty():
                self.starting = False
                self.idle.set()
            key = await self.queue.get()
            try:
                await self.reconcile(key)
            except Exception as exc:
                log.warning("reconcile failed; will retry", extra=kv(pod=key, error=str(exc)))
                asyncio.get_running_loop().call_later(self.retry_s, self._enqueue, key)

    def _record_for(self, key: str) -> str | None:
        ns, _, name = key.partition("/")
        for uid, rec in self.dataplane.pods.items():
            if rec.namespace == ns and rec.name == name:
                return uid
        return None

    async def reconcile(self, key: str) -> None:
        pod = self.view.pod(key)
        held = self._record_for(key)
        if pod is None or not enrolment.pod_is_running(pod):
            if held is not None:
                await self.dataplane.unenrol(held, deleted=True)
            return
        uid = str(pod.get("metadata", {}).get("uid", ""))
        if held is not None and held != uid:  # same name, new pod: the old one is gone
            await self.dataplane.unenrol(held, deleted=True)
        namespace = self.view.namespace(str(pod.get("metadata", {}).get("namespace")))
        if self.wants(pod, namespace):
            if uid not in self.dataplane.pods and pod_ips(pod):
                # a pod a previous agent enrolled keeps its rules unless we were told to re-apply them
                inherited = self.starting and bool(
                    enrolment.annotations_of(pod).get(enrolment.REDIRECTION_ANNOTATION)
                )
                await self.dataplane.enrol(pod, apply_rules=self.reapply_on_startup or not inherited)
        elif uid in self.dataplane.pods:
            await self.dataplane.unenrol(uid, deleted=False)
        elif enrolment.annotations_of(pod).get(enrolment.REDIRECTION_ANNOTATION):
            await self._clean_leftover(pod)

    async def _clean_leftover(self, pod: Obj) -> None:
        """A pod a previous agent enrolled that no longer belongs in the mesh: remove its rules and mark."""
        netns = await asyncio.to_thread(self.dataplane.find_netns, pod_ips(pod))
        if netns is not None:
            try:
                await remove_pod_rules(netns)
            finally:
                netns.close()
        meta = pod.get("metadata", {})
        await self.dataplane.annotator.set_redirection(
            str(meta.get("namespace")), str(meta.get("name")), None
        )
        log.info("removed leftover redirection", extra=kv(pod=pod_key(pod)))

    async def plugin_add(self, event: PluginAddEvent) -> AddOutcome:
        """CNI ADD: enrol before the pod's containers start, if it belongs in the mesh."""
        key = f"{event.pod_namespace}/{event.pod_name}"
        if event.pod_namespace in self.exclude:
            return AddOutcome(False, "namespace excluded")
        pod = self.view.pod(key)
        if pod is None or not _same_uid(pod, event.pod_uid):  # not cached yet, or a same-name predecessor
            pod = await self.view.fetch_pod(event.pod_namespace, event.pod_name)
        if pod is None:
            raise LookupError(f"pod {key} not found in the API server")
        if not _same_uid(pod, event.pod_uid):  # fail the ADD; the runtime retries once the API catches up
            raise LookupError(f"pod {key} in the API server is not the pod {event.pod_uid} being created")
        namespace = self.view.namespace(event.pod_namespace) or await self.view.fetch_namespace(
            event.pod_namespace
        )
        if not self.wants(pod, namespace):
            return AddOutcome(False, "not selected for ambient")
        netns = self.dataplane.open_netns(event.netns)
        acked = await self.dataplane.enrol(pod, netns, event.ips or pod_ips(pod))
        return AddOutcome(True, ENABLED if acked else "pending")
