"""meshkit.admin: readiness conditions and the HTTP server helper, over real loopback HTTP."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest
from aiohttp import web
from meshkit.admin import READY_PATH, Readiness, start_http
from meshkit.drain import TaskOwner
from meshkit.metrics import add_metrics_routes, new_registry
from meshkit.sockets import HostSocketFactory

WAIT = 5.0


async def _get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.text()


def test_readiness_conditions() -> None:
    readiness = Readiness("xds", "certificate")
    assert (readiness.ready, readiness.pending) == (False, ["certificate", "xds"])
    readiness.set("xds")
    readiness.set("certificate")
    assert readiness.ready
    readiness.register("proxy", "xds")  # re-registering a met condition keeps it met
    assert readiness.pending == ["proxy"]
    readiness.set("proxy")
    readiness.clear("xds")
    assert readiness.pending == ["xds"]
    readiness.set("adhoc")  # unknown name: registered as met
    readiness.set("xds")
    assert readiness.ready


def test_readiness_without_conditions_is_ready() -> None:
    assert Readiness().ready


async def test_ready_endpoint_reports_pending_conditions() -> None:
    readiness = Readiness("xds", "certificate")
    app = web.Application()
    readiness.add_routes(app)
    server = await start_http(app, "127.0.0.1", 0)
    try:
        assert server.port != 0
        status, body = await _get(server.url + READY_PATH)
        assert (status, body) == (503, "not ready, pending: certificate, xds\n")
        readiness.set("certificate")
        assert await _get(server.url + READY_PATH) == (503, "not ready, pending: xds\n")
        readiness.set("xds")
        assert await _get(server.url + READY_PATH) == (200, "ready\n")
    finally:
        await server.close()


async def test_wait_ready() -> None:
    readiness = Readiness("a", "b")
    async with TaskOwner("test") as owner:
        waiter = owner.spawn(readiness.wait_ready())
        readiness.set("a")
        await asyncio.sleep(0)  # one loop turn: the waiter runs and must still be blocked
        assert not waiter.done()
        readiness.set("b")
        await asyncio.wait_for(waiter, WAIT)


async def test_start_http_with_factory_and_close_releases_port() -> None:
    registry = new_registry()
    app = web.Application()
    add_metrics_routes(app, registry)
    Readiness().add_routes(app, paths=("/ready", "/readyz"))
    server = await start_http(app, "127.0.0.1", 0, HostSocketFactory())
    port = server.port
    try:
        assert (await _get(f"{server.url}/ready"))[0] == 200
        assert (await _get(f"{server.url}/readyz"))[0] == 200
        assert (await _get(f"{server.url}/metrics"))[0] == 200
    finally:
        await server.close()
    with pytest.raises(aiohttp.ClientConnectorError):
        await _get(f"http://127.0.0.1:{port}/ready")
    # the port is free again: we can bind it ourselves
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))


async def test_start_http_on_ipv6_loopback() -> None:
    app = web.Application()
    Readiness().add_routes(app)
    try:
        server = await start_http(app, "::1", 0)
    except OSError as exc:  # pragma: no cover - host without IPv6 loopback
        pytest.skip(f"no IPv6 loopback: {exc}")
    try:
        assert server.url.startswith("http://[::1]:")
        assert await _get(server.url + READY_PATH) == (200, "ready\n")
    finally:
        await server.close()


async def test_start_http_bind_conflict_raises_and_cleans_up() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            await start_http(web.Application(), "127.0.0.1", port)
