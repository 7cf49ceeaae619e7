"""Informer against a small fake API server on loopback (real HTTP, real threads): list, watch, bookmarks,
410 Gone relist with the missed changes as events, and errors with back-off."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import kubernetes
import pytest
from aiohttp import web
from meshkit.k8s import Callbacks, Event, EventType, Informer, KubeClient
from meshkit.k8s.resources import PODS


def pod(name: str, rv: int, ns: str = "default") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "resourceVersion": str(rv)}}


class FakeApi:
    """Serves /api/v1/pods: a list of ``objects`` at ``version``; a watch streams what tests push."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.version = 1
        self.watches: list[asyncio.Queue[dict[str, Any] | None]] = []
        self.watch_versions: list[str] = []
        self.lists = 0
        self.fail_lists = 0
        self.fail_watches: list[int] = []  # HTTP statuses the next watch requests get, in order
        self.requests: list[tuple[str, float]] = []  # ("list" | "watch", monotonic time)
        self.watch_opened = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        is_watch = request.query.get("watch") == "true"
        self.requests.append(("watch" if is_watch else "list", time.monotonic()))
        if is_watch and self.fail_watches:
            status = self.fail_watches.pop(0)
            reason = {410: "Expired"}.get(status, "InternalError")
            return web.json_response({"kind": "Status", "code": status, "reason": reason}, status=status)
        if not is_watch:
            if self.fail_lists:
                self.fail_lists -= 1
                return web.json_response({"reason": "InternalError"}, status=500)
            self.lists += 1
            body = {"metadata": {"resourceVersion": str(self.version)}, "items": list(self.objects.values())}
            return web.json_response(body)
        assert request.query["allowWatchBookmarks"] == "true"
        self.watch_versions.append(request.query["resourceVersion"])
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.watches.append(queue)
        self.watch_opened.set()
        response = web.StreamResponse()
        await response.prepare(request)
        while (item := await queue.get()) is not None:
            await response.write(json.dumps(item).encode() + b"\n")
        return response

    async def send(self, kind: str, obj: dict[str, Any]) -> None:
        await self.watches[-1].put({"type": kind, "object": obj})

    async def end_watch(self) -> None:
        self.watch_opened.clear()
        await self.watches[-1].put(None)


@pytest.fixture
async def api() -> AsyncIterator[tuple[FakeApi, KubeClient]]:
    fake = FakeApi()
    app = web.Application()
    app.router.add_get("/api/v1/pods", fake.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    config = kubernetes.client.Configuration(host=f"http://127.0.0.1:{port}")
    client = KubeClient(kubernetes.client.ApiClient(config))
    yield fake, client
    for queue in fake.watches:
        queue.put_nowait(None)
    client.close()
    await runner.cleanup()


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.changed = asyncio.Event()

    def __call__(self, batch: list[Event]) -> None:
        self.events.extend(batch)
        self.changed.set()

    async def wait_for(self, count: int) -> list[tuple[EventType, str, str]]:
        async with asyncio.timeout(10):
            while len(self.events) < count:
                self.changed.clear()
                await self.changed.wait()
        return [(e.type, e.key, e.obj["metadata"]["resourceVersion"]) for e in self.events]


async def test_list_then_watch_delivers_events_in_order(api: tuple[FakeApi, KubeClient]) -> None:
    fake, client = api
    fake.objects = {"a": pod("a", 1)}
    rec = Recorder()
    informer = Informer(client, PODS)
    synced: list[bool] = []
    informer.subscribe(rec)
    informer.subscribe(Callbacks(on_synced=lambda: synced.append(True)))
    async with informer:
        async with asyncio.timeout(10):
            await informer.wait_synced()
            await fake.watch_opened.wait()
        assert synced == [True]
        await fake.send("ADDED", pod("b", 2))
        await fake.send("MODIFIED", pod("a", 3))
        await fake.send("MODIFIED", pod("a", 3))  # same resourceVersion: no event
        await fake.send("DELETED", pod("b", 4))
        got = await rec.wait_for(4)
    assert got == [
        (EventType.ADDED, "default/a", "1"),
        (EventType.ADDED, "default/b", "2"),
        (EventType.UPDATED, "default/a", "3"),
        (EventType.DELETED, "default/b", "4"),
    ]
    assert rec.events[2].old == pod("a", 1)
    assert set(informer.store) == {"default/a"}


async def test_bookmark_and_clean_end_resume_from_latest_version(api: tuple[FakeApi, KubeClient]) -> None:
    fake, client = api
    informer = Informer(client, PODS)
    async with informer:
        async with asyncio.timeout(10):
            await fake.watch_opened.wait()
        await fake.send("BOOKMARK", {"metadata": {"resourceVersion": "42"}})
        await fake.end_watch()
        async with asyncio.timeout(10):
            await fake.watch_opened.wait()
    assert fake.watch_versions == ["1", "42"]
    assert fake.lists == 1


async def test_gone_relists_and_delivers_missed_changes(api: tuple[FakeApi, KubeClient]) -> None:
    fake, client = api
    fake.objects = {"a": pod("a", 1), "b": pod("b", 1)}
    rec = Recorder()
    informer = Informer(client, PODS)
    informer.subscribe(rec)
    async with informer:
        await rec.wait_for(2)
        async with asyncio.timeout(10):
            await fake.watch_opened.wait()
        # While "disconnected": a changed, b deleted, c added; the server says our version is too old.
        fake.objects = {"a": pod("a", 7), "c": pod("c", 8)}
        fake.version = 9
        fake.watch_opened.clear()
        await fake.send("ERROR", {"kind": "Status", "code": 410, "reason": "Expired"})
        got = await rec.wait_for(5)
        async with asyncio.timeout(10):
            await fake.watch_opened.wait()
    assert set(got[2:]) == {
        (EventType.UPDATED, "default/a", "7"),
        (EventType.ADDED, "default/c", "8"),
        (EventType.DELETED, "default/b", "1"),
    }
    assert fake.lists == 2
    assert fake.watch_versions[-1] == "9"


async def test_list_errors_back_off_then_sync(api: tuple[FakeApi, KubeClient]) -> None:
    fake, client = api
    fake.fail_lists = 2
    informer = Informer(client, PODS, max_backoff_s=0.2)
    async with informer:
        async with asyncio.timeout(10):
            await informer.wait_synced()
    assert fake.lists == 1


async def test_optional_kind_missing_counts_as_synced_empty(api: tuple[FakeApi, KubeClient]) -> None:
    from meshkit.k8s.resources import SERVICEENTRIES

    _fake, client = api
    missing = Informer(client, SERVICEENTRIES, optional=True, max_backoff_s=0.2)  # the fake serves only pods
    async with missing:
        async with asyncio.timeout(10):
            await missing.wait_synced()
    assert missing.store == {}


async def test_watch_http_410_relists(api: tuple[FakeApi, KubeClient]) -> None:
    """A 410 answer to the watch request itself (not an ERROR event) also means: relist, no back-off."""
    fake, client = api
    fake.objects = {"a": pod("a", 1)}
    fake.fail_watches = [410]
    informer = Informer(client, PODS)
    async with informer:
        async with asyncio.timeout(10):
            await fake.watch_opened.wait()
    assert [kind for kind, _ in fake.requests] == ["list", "watch", "list", "watch"]
    assert fake.lists == 2


async def test_watch_errors_back_off_doubling_and_reset_after_progress(
    api: tuple[FakeApi, KubeClient],
) -> None:
    fake, client = api
    fake.fail_watches = [500, 500]
    informer = Informer(client, PODS)
    rec = Recorder()
    informer.subscribe(rec)
    async with informer:
        async with asyncio.timeout(10):
            await fake.watch_opened.wait()
        watches = [t for kind, t in fake.requests if kind == "watch"]
        assert len(watches) == 3
        first, second = watches[1] - watches[0], watches[2] - watches[1]
        assert first >= 0.4  # 0.5 s ± 20 % jitter
        assert second >= 0.8  # doubled
        assert fake.lists == 1  # an error that is not 410 resumes from the last version: no relist
        # the watch now works (an event arrives), then fails: the back-off starts again from 0.5 s
        await fake.send("ADDED", pod("b", 2))
        await rec.wait_for(1)
        fake.watch_opened.clear()
        failed_at = time.monotonic()
        await fake.send("ERROR", {"kind": "Status", "code": 500, "reason": "InternalError"})
        async with asyncio.timeout(10):
            await fake.watch_opened.wait()
        assert time.monotonic() - failed_at < 1.5  # not the 2 s the streak would have reached
    assert fake.watch_versions[-1] == "2"
