"""A small derived-collections engine in the spirit of Istio's krt (STYLE.md practice 6).

* :class:`Collection` — keyed values with named secondary indexes and batch change subscribers.
* :class:`Input` — a collection fed from outside (informer events).
* :class:`Derived` — ``fn(ctx, source_item) -> {key: value}``, run once per source item. Every read the
  function makes through ``ctx`` (one key, one index value, or a whole collection) is recorded as a
  dependency of that source item, so a change anywhere recomputes exactly the items that read it.
* :class:`Join` — the union of several collections with disjoint keys.

Invariants: a subscriber only sees keys whose value changed (``old != new``; records are frozen dataclasses,
so equality is by value); one upstream batch produces at most one downstream batch per collection;
everything runs synchronously on the event loop thread, so a batch is fully propagated when ``apply`` returns.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")
S = TypeVar("S")

log = logging.getLogger("krt")


@dataclass(frozen=True, slots=True)
class Change(Generic[T]):
    key: str
    old: T | None
    new: T | None


Subscriber = Callable[[list[Change[Any]]], None]
Dep = tuple[Any, ...]  # (collection id, "k", key) | (collection id, "i", index, value) | (collection id, "*")


class Collection(Generic[T]):
    """Keyed values plus secondary indexes; notifies subscribers with batches of :class:`Change`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._items: dict[str, T] = {}
        self._index_fns: dict[str, Callable[[T], Iterable[str]]] = {}
        self._indexes: dict[str, dict[str, set[str]]] = {}
        self._subscribers: list[Subscriber] = []

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} ({len(self)})>"

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def get(self, key: str) -> T | None:
        return self._items.get(key)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(list(self._items.items()))

    def keys(self) -> list[str]:
        return list(self._items)

    def add_index(self, name: str, fn: Callable[[T], Iterable[str]]) -> None:
        """Declare index ``name``: ``fn(value)`` gives the index values an item is filed under."""
        self._index_fns[name] = fn
        self._indexes[name] = {}
        for key, value in self._items.items():
            for index_name, v in self.index_values(value):
                if index_name == name:
                    self._indexes[name].setdefault(v, set()).add(key)

    def by_index(self, name: str, value: str) -> list[T]:
        return [self._items[k] for k in sorted(self._indexes[name].get(value, ()))]

    def index_values(self, value: T | None) -> Iterator[tuple[str, str]]:
        if value is None:
            return
        for name, fn in self._index_fns.items():
            try:
                values = list(fn(value))
            except Exception:  # a malformed input item is simply not indexed; it must not fail the batch
                log.exception("index function failed", extra={"kv": {"collection": self.name, "index": name}})
                continue
            for v in values:
                yield name, v

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def _apply(self, updates: Mapping[str, T | None]) -> list[Change[T]]:
        """Set (value) or delete (None) keys; returns and publishes the changes that were real."""
        changes: list[Change[T]] = []
        for key, new in updates.items():
            old = self._items.get(key)
            if old == new:
                continue
            self._unindex(key, old)
            if new is None:
                del self._items[key]
            else:
                self._items[key] = new
                for name, v in self.index_values(new):
                    self._indexes[name].setdefault(v, set()).add(key)
            changes.append(Change(key, old, new))
        if changes:
            for subscriber in self._subscribers:
                subscriber(changes)
        return changes

    def _unindex(self, key: str, old: T | None) -> None:
        for name, v in self.index_values(old):
            bucket = self._indexes[name].get(v)
            if bucket is not None:
                bucket.discard(key)
                if not bucket:
                    del self._indexes[name][v]


class Input(Collection[T]):
    """A collection written from outside, e.g. by an informer handler."""

    def apply(self, updates: Mapping[str, T | None]) -> list[Change[T]]:
        return self._apply(updates)

    def set(self, key: str, value: T) -> None:
        self._apply({key: value})

    def delete(self, key: str) -> None:
        self._apply({key: None})


class Context:
    """What a derivation function reads through; each read becomes a dependency."""

    __slots__ = ("deps",)

    def __init__(self) -> None:
        self.deps: set[Dep] = set()

    def get(self, collection: Collection[T], key: str) -> T | None:
        self.deps.add((id(collection), "k", key))
        _watch(collection)
        return collection.get(key)

    def by_index(self, collection: Collection[T], index: str, value: str) -> list[T]:
        self.deps.add((id(collection), "i", index, value))
        _watch(collection)
        return collection.by_index(index, value)

    def all(self, collection: Collection[T]) -> list[T]:
        self.deps.add((id(collection), "*"))
        _watch(collection)
        return [v for _, v in collection.items()]


_current: list[Derived[Any, Any]] = []


def _watch(collection: Collection[Any]) -> None:
    """Make the derivation now running a subscriber of ``collection`` (once)."""
    if _current:
        _current[-1].depend_on(collection)


class Derived(Collection[T], Generic[S, T]):
    """``fn(ctx, item) -> {out_key: value}`` for each item of ``source``; recomputed on dependency change."""

    def __init__(self, name: str, source: Collection[S], fn: Callable[[Context, S], Mapping[str, T]]) -> None:
        super().__init__(name)
        self.source = source
        self.fn = fn
        self._outputs: dict[str, tuple[str, ...]] = {}  # source key -> output keys
        self._deps: dict[str, set[Dep]] = {}  # source key -> deps
        self._rdeps: dict[Dep, set[str]] = {}  # dep -> source keys
        self._watched: dict[int, Collection[Any]] = {}
        self.recomputations = 0
        source.subscribe(self._on_source)
        self._recompute([k for k, _ in source.items()])

    def depend_on(self, collection: Collection[Any]) -> None:
        if id(collection) not in self._watched:
            self._watched[id(collection)] = collection
            collection.subscribe(functools.partial(self._on_dependency, collection))

    def _on_source(self, changes: list[Change[S]]) -> None:
        self._recompute([c.key for c in changes])

    def _on_dependency(self, collection: Collection[Any], changes: list[Change[Any]]) -> None:
        cid = id(collection)
        affected: set[str] = set(self._rdeps.get((cid, "*"), ()))
        for change in changes:
            affected |= self._rdeps.get((cid, "k", change.key), set())
            for value in (change.old, change.new):
                for name, v in collection.index_values(value):
                    affected |= self._rdeps.get((cid, "i", name, v), set())
        if affected:
            self._recompute(sorted(affected))

    def _recompute(self, source_keys: Iterable[str]) -> None:
        updates: dict[str, T | None] = {}
        for key in source_keys:
            for out_key in self._outputs.pop(key, ()):
                updates.setdefault(out_key, None)
            self._set_deps(key, set())
            item = self.source.get(key)
            if item is None:
                continue
            ctx = Context()
            _current.append(self)
            try:
                produced = self.fn(ctx, item)
            except Exception:  # one bad object must not stop the index; it yields nothing until it changes
                log.exception("derivation failed", extra={"kv": {"collection": self.name, "key": key}})
                produced = {}
            finally:
                _current.pop()
            self.recomputations += 1
            self._set_deps(key, ctx.deps)
            self._outputs[key] = tuple(produced)
            updates.update(produced)
        self._apply(updates)

    def _set_deps(self, key: str, deps: set[Dep]) -> None:
        for dep in self._deps.pop(key, ()):
            holders = self._rdeps.get(dep)
            if holders is not None:
                holders.discard(key)
                if not holders:
                    del self._rdeps[dep]
        if deps:
            self._deps[key] = deps
            for dep in deps:
                self._rdeps.setdefault(dep, set()).add(key)


class Join(Collection[T]):
    """The union of collections whose keys do not overlap (e.g. workloads and services → addresses)."""

    def __init__(self, name: str, parts: Iterable[Collection[T]]) -> None:
        super().__init__(name)
        for part in parts:
            self._apply(dict(part.items()))
            part.subscribe(self._forward)

    def _forward(self, changes: list[Change[T]]) -> None:
        self._apply({c.key: c.new for c in changes})


def singleton_source(name: str = "singleton") -> Input[bool]:
    """A one-item source for derivations that aggregate whole collections (e.g. "any PA exists")."""
    source: Input[bool] = Input(name)
    source.set("", True)
    return source
