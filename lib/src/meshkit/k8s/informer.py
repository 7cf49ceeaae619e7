"""List+watch informers: a local cache of one kind of Kubernetes object, kept current, with change events.

Each :class:`Informer` runs the blocking list+watch loop in its own daemon thread (the ``kubernetes``
client is synchronous; see :mod:`meshkit.k8s.client`) and hands raw results to the event loop. The cache
(:attr:`store`) and every handler call live on the event loop only, so handlers never race the store.

The loop, as client-go's reflector does it:

* **list** (paginated) → resourceVersion R; the cache is replaced, and the difference is delivered as events
  (a relist after an outage produces exactly the adds, updates and deletes that were missed);
* **watch** from R with ``allowWatchBookmarks``; every event (and every BOOKMARK) advances R;
* a watch that ends cleanly (server timeout) is reopened from R; **410 Gone** (or an ERROR event with code
  410) means R is too old: relist; any other error backs off (doubling from 0.5 s up to 30 s, reset after a
  successful list or watch event) and retries.

Handler API: ``informer.subscribe(handler)`` where ``handler(batch: list[Event])`` is called on the loop with
every burst of changes, in order; :class:`Callbacks` adapts per-event ``on_add/on_update/on_delete`` callables
and an ``on_synced`` that fires once, after the first list has been delivered.
``await informer.wait_synced()`` waits for the same moment; ``informer.synced`` tells it synchronously.

Example (the CNI agent: pods on this node)::

    client = KubeClient.from_config()
    pods = Informer(client, PODS, field_selector=f"spec.nodeName={node}")
    pods.subscribe(Callbacks(on_add=enrol, on_update=lambda old, new: enrol(new), on_delete=unenrol))
    async with pods:                     # starts the thread; stops and joins it on exit
        await pods.wait_synced()
        ...

Invariants: events for one key arrive in resourceVersion order; an UPDATED event is only delivered when the
object's resourceVersion changed; DELETED carries the last known object.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from meshkit.k8s.client import ApiError, Gone, KubeClient, NotFound, WatchStream
from meshkit.k8s.resources import Obj, Resource, object_key, resource_version
from meshkit.logs import kv

__all__ = ["Callbacks", "Event", "EventType", "Informer"]

log = logging.getLogger("k8s")


class EventType(enum.Enum):
    ADDED = "ADDED"
    UPDATED = "UPDATED"
    DELETED = "DELETED"


@dataclass(frozen=True, slots=True)
class Event:
    """One change to the cache: ``obj`` is the new (or last) object, ``old`` the previous one for UPDATED."""

    type: EventType
    key: str
    obj: Obj
    old: Obj | None = None


Handler = Callable[[list[Event]], None]


@dataclass(frozen=True, slots=True)
class Callbacks:
    """Adapts a batch handler to per-event callables; ``on_synced`` runs once after the initial list."""

    on_add: Callable[[Obj], None] | None = None
    on_update: Callable[[Obj, Obj], None] | None = None
    on_delete: Callable[[Obj], None] | None = None
    on_synced: Callable[[], None] | None = None

    def __call__(self, batch: list[Event]) -> None:
        for event in batch:
            if event.type is EventType.ADDED and self.on_add:
                self.on_add(event.obj)
            elif event.type is EventType.UPDATED and self.on_update and event.old is not None:
                self.on_update(event.old, event.obj)
            elif event.type is EventType.DELETED and self.on_delete:
                self.on_delete(event.obj)


@dataclass(frozen=True, slots=True)
class _Listed:
    items: list[Obj]


@dataclass(frozen=True, slots=True)
class _Watched:
    type: str
    obj: Obj


class Informer:
    """Cache of one resource kind (optionally one namespace / label or field selector), kept by list+watch."""

    def __init__(
        self,
        client: KubeClient,
        resource: Resource,
        *,
        namespace: str | None = None,
        label_selector: str = "",
        field_selector: str = "",
        watch_timeout_s: int = 300,
        max_backoff_s: float = 30.0,
        optional: bool = False,
    ) -> None:
        self.client = client
        self.resource = resource
        self.namespace = namespace
        self._query = {"labelSelector": label_selector, "fieldSelector": field_selector}
        self._watch_timeout_s = watch_timeout_s
        self._max_backoff_s = max_backoff_s
        self.store: dict[str, Obj] = {}
        self._handlers: list[Handler] = []
        self._synced_callbacks: list[Callable[[], None]] = []
        self._synced = asyncio.Event()
        self._stop = threading.Event()
        self._stream: WatchStream | None = None
        self._stream_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.relists = 0
        self.optional = optional  # a missing kind (CRD not installed, 404) counts as synced and empty
        self._version = ""
        self._missing_reported = False
        self._progressed = False  # the current watch delivered an event (resets the back-off)

    # ---- handler API (event loop side) ----

    def subscribe(self, handler: Handler) -> None:
        """Call ``handler`` with every batch of events; a late subscriber first gets the cache as ADDED."""
        self._handlers.append(handler)
        if isinstance(handler, Callbacks) and handler.on_synced is not None:
            self._synced_callbacks.append(handler.on_synced)
        if self.store:
            handler([Event(EventType.ADDED, key, obj) for key, obj in self.store.items()])
            if self._synced.is_set() and isinstance(handler, Callbacks) and handler.on_synced:
                handler.on_synced()

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    async def wait_synced(self) -> None:
        await self._synced.wait()

    def get(self, key: str) -> Obj | None:
        return self.store.get(key)

    def objects(self) -> list[Obj]:
        return list(self.store.values())

    # ---- lifetime ----

    def start(self) -> None:
        """Start the list+watch thread; events are delivered on the running loop."""
        if self._thread is not None:
            raise RuntimeError(f"informer for {self.resource} already started")
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(
            target=self._run, name=f"informer-{self.resource.plural}", daemon=True
        )
        self._thread.start()

    async def stop(self) -> None:
        """Stop the thread (closing an open watch) and wait for it to exit."""
        self._stop.set()
        with self._stream_lock:
            if self._stream is not None:
                with contextlib.suppress(Exception):
                    self._stream.close()
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, thread.join)

    async def __aenter__(self) -> Informer:
        self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    # ---- thread side ----

    def _post(self, item: _Listed | _Watched) -> None:
        loop = self._loop
        if loop is None or self._stop.is_set():
            return
        with contextlib.suppress(RuntimeError):  # loop closed during shutdown
            loop.call_soon_threadsafe(self._apply, item)

    def _run(self) -> None:
        initial = min(0.5, self._max_backoff_s)
        backoff = initial
        version = ""
        while not self._stop.is_set():
            try:
                if not version:
                    items, version = self.client.list_all(self.resource, self.namespace, **self._query)
                    self._post(_Listed(items))
                    backoff = initial
                self._version = version
                self._progressed = False
                version = self._watch(version)
                backoff = initial  # a clean end (server timeout) is no failure
            except Gone:
                log.info("watch expired; relisting", extra=kv(resource=str(self.resource)))
                version = ""
                self._version = ""  # never resume from the expired version, even if the relist fails
            except Exception as exc:  # any other failure: back off, then resume from the last version
                if self._stop.is_set():
                    return
                if self._progressed:
                    backoff = initial  # the watch worked for a while: this is a new failure, not a streak
                version = self._failed(exc, backoff)
                self._stop.wait(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, self._max_backoff_s)

    def _failed(self, exc: Exception, backoff: float) -> str:
        """Log a failure; returns the version to resume from ("" = relist)."""
        if isinstance(exc, NotFound) and self.optional:
            if not self._missing_reported:
                log.info(
                    "kind not served (CRD missing?); empty until it appears",
                    extra=kv(resource=str(self.resource)),
                )
                self._missing_reported = True
            self._post(_Listed([]))
            return ""
        log.warning(
            "list/watch failed; retrying",
            extra=kv(resource=str(self.resource), error=_describe(exc), retry_in_s=round(backoff, 2)),
        )
        return self._version  # resume from the last event seen before the failure

    def _watch(self, version: str) -> str:
        stream = self.client.watch(
            self.resource, version, self.namespace, timeout_s=self._watch_timeout_s, **self._query
        )
        with self._stream_lock:
            if self._stop.is_set():
                stream.close()
                return version
            self._stream = stream
        try:
            for event in _events(stream):
                version = self._handle_watch_event(event, version)
                self._version = version
        finally:
            with self._stream_lock:
                self._stream = None
            stream.close()
        return version

    def _handle_watch_event(self, event: Obj, version: str) -> str:
        kind = event.get("type", "")
        obj = event.get("object") or {}
        if kind == "ERROR":
            code = int(obj.get("code", 0))
            if code == 410:
                raise Gone(410, str(obj.get("reason", "Expired")), str(obj.get("message", "")))
            raise ApiError(code, str(obj.get("reason", "")), str(obj.get("message", "")))
        if kind != "BOOKMARK":
            self._post(_Watched(kind, obj))
        self._progressed = True
        return resource_version(obj) or version

    # ---- loop side ----

    def _apply(self, item: _Listed | _Watched) -> None:
        batch = self._relist(item.items) if isinstance(item, _Listed) else self._one(item)
        if batch:
            self._deliver(batch)
        if isinstance(item, _Listed):
            self.relists += 1
            if not self._synced.is_set():
                self._synced.set()
                for callback in self._synced_callbacks:
                    callback()

    def _relist(self, items: Sequence[Obj]) -> list[Event]:
        fresh = {object_key(obj): obj for obj in items}
        batch: list[Event] = []
        for key, obj in fresh.items():
            old = self.store.get(key)
            if old is None:
                batch.append(Event(EventType.ADDED, key, obj))
            elif resource_version(old) != resource_version(obj):
                batch.append(Event(EventType.UPDATED, key, obj, old))
        batch.extend(
            Event(EventType.DELETED, key, obj) for key, obj in self.store.items() if key not in fresh
        )
        self.store = fresh
        return batch

    def _one(self, item: _Watched) -> list[Event]:
        key = object_key(item.obj)
        old = self.store.get(key)
        if item.type == "DELETED":
            if old is None:
                return []
            del self.store[key]
            return [Event(EventType.DELETED, key, item.obj)]
        self.store[key] = item.obj
        if old is None:
            return [Event(EventType.ADDED, key, item.obj)]
        if resource_version(old) == resource_version(item.obj):
            return []
        return [Event(EventType.UPDATED, key, item.obj, old)]

    def _deliver(self, batch: list[Event]) -> None:
        for handler in self._handlers:
            try:
                handler(batch)
            except Exception:
                log.exception("informer handler failed", extra=kv(resource=str(self.resource)))


def _events(stream: WatchStream) -> Iterator[dict[str, Any]]:
    yield from stream


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
