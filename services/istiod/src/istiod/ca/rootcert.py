"""Publish the mesh root as the ``istio-ca-root-cert`` ConfigMap (key ``root-cert.pem``) in every namespace.

ztunnel and workloads mount it to verify istiod (wire-contracts.md §4.4).
:meth:`RootCertPublisher.reconcile` makes one namespace right (create, or fix ``root-cert.pem`` keeping other
keys) and is idempotent, so it can be driven by any event source: namespace added, the ConfigMap changed or
deleted, a periodic resync.
:meth:`RootCertPublisher.run` is a simple driver over :class:`KubeConfigMapStore`'s watch; an informer-based
control plane can instead call :meth:`on_namespace` / :meth:`on_configmap` from its own handlers.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from meshkit.logs import kv

__all__ = [
    "ROOT_CERT_KEY",
    "ConfigMapStore",
    "KubeConfigMapStore",
    "Outcome",
    "RootCertPublisher",
    "WatchEvent",
]

log = logging.getLogger("ca.rootcert")

ROOT_CERT_KEY = "root-cert.pem"
LABELS = {"istio.io/config": "true"}


class Outcome(enum.Enum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    SKIPPED = "skipped"


class ConfigMapConflict(Exception):
    """Create found the ConfigMap already there, or replace found it gone: re-read and retry."""


class ConfigMapStore(Protocol):
    async def list_namespaces(self) -> Sequence[str]:
        """Names of the namespaces that are not terminating."""
        ...

    async def get(self, namespace: str, name: str) -> Mapping[str, str] | None: ...

    async def create(
        self, namespace: str, name: str, data: Mapping[str, str], labels: Mapping[str, str]
    ) -> None:
        """Raise :class:`ConfigMapConflict` if it exists."""
        ...

    async def replace(
        self, namespace: str, name: str, data: Mapping[str, str], labels: Mapping[str, str]
    ) -> None:
        """Raise :class:`ConfigMapConflict` if it does not exist."""
        ...


@dataclass(frozen=True, slots=True)
class WatchEvent:
    kind: str  # "Namespace" or "ConfigMap"
    type: str  # "ADDED", "MODIFIED", "DELETED"
    namespace: str
    name: str
    terminating: bool = False


class RootCertPublisher:
    def __init__(
        self, store: ConfigMapStore, root_pem: str | bytes, name: str = "istio-ca-root-cert"
    ) -> None:
        self._store = store
        self._root = root_pem.decode() if isinstance(root_pem, bytes) else root_pem
        self.name = name

    @property
    def root_pem(self) -> str:
        return self._root

    def set_root(self, root_pem: str | bytes) -> None:
        """A new root (rotation): the next reconcile of each namespace writes it."""
        self._root = root_pem.decode() if isinstance(root_pem, bytes) else root_pem

    async def reconcile(self, namespace: str) -> Outcome:
        for _ in range(3):  # a create/replace race with another writer: re-read and try again
            try:
                return await self._reconcile_once(namespace)
            except ConfigMapConflict:
                continue
        raise ConfigMapConflict(f"{namespace}/{self.name} keeps changing under us")

    async def _reconcile_once(self, namespace: str) -> Outcome:
        current = await self._store.get(namespace, self.name)
        if current is None:
            await self._store.create(namespace, self.name, {ROOT_CERT_KEY: self._root}, LABELS)
            log.info("root cert published", extra=kv(namespace=namespace, configmap=self.name))
            return Outcome.CREATED
        if current.get(ROOT_CERT_KEY) == self._root:
            return Outcome.UNCHANGED
        await self._store.replace(namespace, self.name, {**current, ROOT_CERT_KEY: self._root}, LABELS)
        log.info("root cert updated", extra=kv(namespace=namespace, configmap=self.name))
        return Outcome.UPDATED

    async def reconcile_all(self) -> dict[str, Outcome]:
        """Every namespace; one failing namespace is logged and does not stop the others."""
        results: dict[str, Outcome] = {}
        for namespace in await self._store.list_namespaces():
            try:
                results[namespace] = await self.reconcile(namespace)
            except Exception as exc:
                log.warning("root cert publish failed", extra=kv(namespace=namespace, error=str(exc)))
        return results

    async def on_namespace(self, event_type: str, namespace: str, terminating: bool = False) -> Outcome:
        if event_type == "DELETED" or terminating:
            return Outcome.SKIPPED
        return await self.reconcile(namespace)

    async def on_configmap(self, event_type: str, namespace: str, name: str) -> Outcome:
        if name != self.name:
            return Outcome.SKIPPED
        # A deleted ConfigMap is recreated, unless its whole namespace is going away.
        if event_type == "DELETED" and namespace not in await self._store.list_namespaces():
            return Outcome.SKIPPED
        return await self.reconcile(namespace)

    async def handle(self, event: WatchEvent) -> Outcome:
        try:
            if event.kind == "Namespace":
                return await self.on_namespace(event.type, event.name, event.terminating)
            return await self.on_configmap(event.type, event.namespace, event.name)
        except Exception as exc:
            log.warning("root cert reconcile failed", extra=kv(namespace=event.namespace, error=str(exc)))
            return Outcome.SKIPPED

    async def run(self, events: AsyncIterator[WatchEvent]) -> None:
        """Reconcile everything once, then follow ``events`` (e.g. :meth:`KubeConfigMapStore.watch`)."""
        await self.reconcile_all()
        async for event in events:
            await self.handle(event)


class KubeConfigMapStore:
    """:class:`ConfigMapStore` and a namespace + ConfigMap watch over the ``kubernetes`` client."""

    def __init__(self, api_client: Any, name: str = "istio-ca-root-cert") -> None:
        from kubernetes import client

        self._client = client
        self._api = client.CoreV1Api(api_client)
        self._name = name

    def _list_namespaces(self) -> list[str]:
        items = self._api.list_namespace().items
        return [
            str(n.metadata.name)
            for n in items
            if n.metadata and not (n.status and n.status.phase == "Terminating")
        ]

    def _get(self, namespace: str, name: str) -> Mapping[str, str] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return dict(self._api.read_namespaced_config_map(name, namespace).data or {})
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _body(self, namespace: str, name: str, data: Mapping[str, str], labels: Mapping[str, str]) -> Any:
        meta = self._client.V1ObjectMeta(name=name, namespace=namespace, labels=dict(labels))
        return self._client.V1ConfigMap(metadata=meta, data=dict(data))

    def _write(self, create: bool, namespace: str, name: str, data: Mapping[str, str], labels: Any) -> None:
        from kubernetes.client.exceptions import ApiException

        body = self._body(namespace, name, data, labels)
        try:
            if create:
                self._api.create_namespaced_config_map(namespace, body)
            else:
                self._api.replace_namespaced_config_map(name, namespace, body)
        except ApiException as exc:
            if exc.status in (404, 409):
                raise ConfigMapConflict(f"{namespace}/{name}: {exc.reason}") from None
            raise

    async def list_namespaces(self) -> Sequence[str]:
        return await asyncio.to_thread(self._list_namespaces)

    async def get(self, namespace: str, name: str) -> Mapping[str, str] | None:
        return await asyncio.to_thread(self._get, namespace, name)

    async def create(
        self, namespace: str, name: str, data: Mapping[str, str], labels: Mapping[str, str]
    ) -> None:
        await asyncio.to_thread(self._write, True, namespace, name, data, labels)

    async def replace(
        self, namespace: str, name: str, data: Mapping[str, str], labels: Mapping[str, str]
    ) -> None:
        await asyncio.to_thread(self._write, False, namespace, name, data, labels)

    async def watch(self, timeout_s: int = 30) -> AsyncGenerator[WatchEvent, None]:
        """Namespace and ConfigMap events, from two watch threads (restarted every ``timeout_s``)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[WatchEvent] = asyncio.Queue()
        stop = threading.Event()
        selector = f"metadata.name={self._name}"
        sources = [
            ("Namespace", self._api.list_namespace, {}),
            ("ConfigMap", self._api.list_config_map_for_all_namespaces, {"field_selector": selector}),
        ]
        for kind, func, kwargs in sources:
            spec = _WatchSpec(kind, func, kwargs, loop, queue, stop, timeout_s)
            threading.Thread(target=_watch_thread, args=(spec,), daemon=True, name=f"watch-{kind}").start()
        try:
            while True:
                yield await queue.get()
        finally:
            stop.set()


@dataclass(frozen=True, slots=True)
class _WatchSpec:
    kind: str
    func: Any
    kwargs: dict[str, Any]
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[WatchEvent]
    stop: threading.Event
    timeout_s: int


def _watch_thread(spec: _WatchSpec) -> None:
    """Blocking watch loop; hands events to the loop. Exits within ``timeout_s`` of ``stop`` being set."""
    from kubernetes import watch

    while not spec.stop.is_set():
        try:
            stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
                spec.func, timeout_seconds=spec.timeout_s, **spec.kwargs
            )
            for raw in stream:
                if spec.stop.is_set():
                    return
                obj = raw["object"]
                terminating = spec.kind == "Namespace" and bool(
                    obj.status and obj.status.phase == "Terminating"
                )
                ns = obj.metadata.name if spec.kind == "Namespace" else obj.metadata.namespace
                event = WatchEvent(spec.kind, raw["type"], ns, obj.metadata.name, terminating)
                spec.loop.call_soon_threadsafe(spec.queue.put_nowait, event)
        except RuntimeError:
            return  # the loop is closed: nobody is listening any more
        except Exception as exc:
            log.warning("watch failed; restarting", extra=kv(kind=spec.kind, error=str(exc)))
            spec.stop.wait(1.0)
