"""Small aiohttp helpers shared by the admin, metrics and readiness servers of every service.

:class:`Readiness` is a set of named start-up conditions (``"xds"``, ``"workload certificate"``, ...). The
readiness endpoint answers 200 only once every registered condition is set, and 503 naming the pending ones
otherwise, so an operator reading a failed probe sees what the process still waits for.

:func:`start_http` serves an ``aiohttp`` application on a socket from a
:class:`~meshkit.sockets.SocketFactory` (port 0 picks a free port; tests read it back from the result).

Example::

    readiness = Readiness("xds", "certificate")
    app = web.Application()
    readiness.add_routes(app)                       # GET /healthz/ready
    server = await start_http(app, "0.0.0.0", 15021)
    ...
    readiness.set("xds")
    ...
    await server.close()
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp import web

from meshkit.sockets import HostSocketFactory, SocketFactory

__all__ = ["READY_PATH", "HttpServer", "Readiness", "start_http"]

#: ztunnel's and the waypoint's readiness path on 15021 (behaviour.md §1).
READY_PATH = "/healthz/ready"


class Readiness:
    """Named conditions that must all be set before the process reports ready.

    A condition can be cleared again (e.g. a lost xDS stream); the process is then not ready until it is set
    once more. Setting an unknown name registers it as already set.
    """

    def __init__(self, *pending: str) -> None:
        self._conditions: dict[str, bool] = dict.fromkeys(pending, False)
        self._ready = asyncio.Event()
        self._update()

    def register(self, *names: str) -> None:
        """Add conditions that are not yet met (names already known keep their state)."""
        for name in names:
            self._conditions.setdefault(name, False)
        self._update()

    def set(self, name: str) -> None:
        self._conditions[name] = True
        self._update()

    def clear(self, name: str) -> None:
        self._conditions[name] = False
        self._update()

    @property
    def ready(self) -> bool:
        return all(self._conditions.values())

    @property
    def pending(self) -> list[str]:
        """The conditions not yet met, sorted."""
        return sorted(name for name, ok in self._conditions.items() if not ok)

    async def wait_ready(self) -> None:
        """Return once every condition is set."""
        while not self.ready:
            await self._ready.wait()

    def _update(self) -> None:
        if self.ready:
            self._ready.set()
        else:
            self._ready.clear()

    async def handle(self, _request: web.Request) -> web.Response:
        """GET handler: 200 ``ready`` or 503 ``not ready, pending: a, b``."""
        pending = self.pending
        if not pending:
            return web.Response(text="ready\n")
        return web.Response(status=503, text=f"not ready, pending: {', '.join(pending)}\n")

    def add_routes(self, app: web.Application, paths: Iterable[str] = (READY_PATH,)) -> None:
        for path in paths:
            app.router.add_get(path, self.handle)


@dataclass(frozen=True, slots=True)
class HttpServer:
    """A running aiohttp server from :func:`start_http`."""

    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def close(self) -> None:
        """Stop listening, finish or cancel in-flight requests, release the socket."""
        await self.runner.cleanup()


async def start_http(
    app: web.Application,
    host: str,
    port: int,
    factory: SocketFactory | None = None,
    *,
    shutdown_timeout_s: float = 1.0,
) -> HttpServer:
    """Serve ``app`` on ``host:port`` (0 for any free port) using a listening socket from ``factory``."""
    sock = (factory or HostSocketFactory()).listen_tcp(host, port)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=shutdown_timeout_s)
    try:
        await runner.setup()
        await web.SockSite(runner, sock).start()
    except BaseException:
        sock.close()
        await runner.cleanup()
        raise
    return HttpServer(runner, host, int(sock.getsockname()[1]))
