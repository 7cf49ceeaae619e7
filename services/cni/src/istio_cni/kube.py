"""Kubernetes glue for the node agent on :mod:`meshkit.k8s`: informers for this node's pods and for all
namespaces feeding the :class:`~istio_cni.controller.PodController`, API lookups, and the redirection
annotation (merge patch on ``pods/status``, as upstream; the chart's ClusterRole grants exactly that).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from meshkit.k8s import ApiError, Callbacks, Informer, KubeClient, NotFound
from meshkit.k8s.resources import NAMESPACES, PODS, Obj, Resource

from istio_cni.controller import PodController
from istio_cni.enrolment import REDIRECTION_ANNOTATION

log = logging.getLogger("cni.kube")
DAEMONSETS = Resource("apps", "v1", "daemonsets", "DaemonSet")


class KubeAdapter:
    """Implements ``KubeView`` and ``Annotator`` over one :class:`KubeClient`."""

    def __init__(self, client: KubeClient, node_name: str) -> None:
        self.client = client
        self.pods = Informer(client, PODS, field_selector=f"spec.nodeName={node_name}")
        self.namespaces = Informer(client, NAMESPACES)

    def pod(self, key: str) -> Obj | None:
        return self.pods.get(key)

    def namespace(self, name: str) -> Obj | None:
        return self.namespaces.get(name)

    def node_pods(self) -> list[Obj]:
        return self.pods.objects()

    async def fetch_pod(self, namespace: str, name: str) -> Obj | None:
        return await self._get(PODS, name, namespace)

    async def fetch_namespace(self, name: str) -> Obj | None:
        return await self._get(NAMESPACES, name, None)

    async def _get(self, resource: Resource, name: str, namespace: str | None) -> Obj | None:
        try:
            return await asyncio.to_thread(self.client.get, resource, name, namespace)
        except NotFound:
            return None

    async def set_redirection(self, namespace: str, name: str, value: str | None) -> None:
        patch: dict[str, Any] = {"metadata": {"annotations": {REDIRECTION_ANNOTATION: value}}}
        try:
            await asyncio.to_thread(self.client.patch_status, PODS, name, patch, namespace)
        except NotFound:
            if value is not None:
                raise

    async def daemonset_gone(self, namespace: str, name: str) -> bool:
        """Uninstall (not upgrade) when our DaemonSet is gone or being deleted.

        401/403 count as gone: ``helm uninstall`` deletes our ServiceAccount and ClusterRole in the same sweep
        as the DaemonSet, so by the time we are stopped we may no longer be allowed to look.
        """
        try:
            ds = await self._get(DAEMONSETS, name, namespace)
        except ApiError as exc:
            if exc.status in (401, 403):
                return True
            raise
        return ds is None or bool(ds.get("metadata", {}).get("deletionTimestamp"))

    def connect(self, controller: PodController) -> None:
        self.pods.subscribe(
            Callbacks(
                on_add=controller.pod_changed,
                on_update=lambda _old, new: controller.pod_changed(new),
                on_delete=controller.pod_changed,
            )
        )
        self.namespaces.subscribe(
            Callbacks(
                on_add=controller.namespace_changed,
                on_update=lambda old, new: _on_namespace_update(controller, old, new),
            )
        )

    async def start(self) -> None:
        self.pods.start()
        self.namespaces.start()
        await asyncio.gather(self.pods.wait_synced(), self.namespaces.wait_synced())

    async def stop(self) -> None:
        await self.pods.stop()
        await self.namespaces.stop()


def _on_namespace_update(controller: PodController, old: Obj, new: Obj) -> None:
    """Only a label change can change enrolment; other namespace updates are ignored."""
    if (old.get("metadata", {}).get("labels") or {}) != (new.get("metadata", {}).get("labels") or {}):
        controller.namespace_changed(new)
