"""A minimal HTTP/1.1 server for ztunnel's admin (15000), metrics (15020) and readiness (15021) ports, and the
readiness conditions.

Why not ``meshkit.admin``/aiohttp: importing aiohttp costs ztunnel about 8 MB of RSS (measured: 60.6 vs
52.4 MB for our import set), and ztunnel's budget with 1,000 workloads is 64 MB. These endpoints are tiny
(GET/POST, no bodies that matter, one response per connection), so a ~100-line server does.

Each connection carries one request and is closed after the response (``Connection: close``), which
Prometheus scrapers, kubelet probes and curl all accept.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from meshkit.drain import TaskOwner
from meshkit.logs import kv

__all__ = ["HttpServer", "Readiness", "Request", "Response", "start_http"]

log = logging.getLogger("http")

MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024
READ_TIMEOUT_S = 10.0
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"


Handler = Callable[[Request], Awaitable[Response]]


class Readiness:
    """Named conditions that must all be set before ``/healthz/ready`` answers 200 (same contract as
    ``meshkit.admin.Readiness``, without its aiohttp import)."""

    def __init__(self, *pending: str) -> None:
        self._conditions = dict.fromkeys(pending, False)
        self._event = asyncio.Event()
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
        return sorted(name for name, ok in self._conditions.items() if not ok)

    async def wait_ready(self) -> None:
        while not self.ready:
            await self._event.wait()

    def _update(self) -> None:
        if self.ready:
            self._event.set()
        else:
            self._event.clear()

    async def handle(self, _request: Request) -> Response:
        if self.ready:
            return Response(body=b"ready\n")
        return Response(503, f"not ready, pending: {', '.join(self.pending)}\n".encode())


@dataclass
class HttpServer:
    host: str
    port: int
    server: asyncio.Server
    tasks: TaskOwner

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def close(self) -> None:
        self.server.close()
        await self.tasks.close()
        await self.server.wait_closed()


def _encode(resp: Response) -> bytes:
    head = (
        f"HTTP/1.1 {resp.status} {REASONS.get(resp.status, 'Status')}\r\n"
        f"Content-Type: {resp.content_type}\r\nContent-Length: {len(resp.body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + resp.body


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        return None
    method, target, _version = parts
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value.strip() or 0)
    if length > MAX_BODY:
        return None
    if length:
        await reader.readexactly(length)
    url = urlsplit(target)
    return Request(method.upper(), url.path, dict(parse_qsl(url.query)))


async def start_http(host: str, port: int, routes: dict[tuple[str, str], Handler]) -> HttpServer:
    """Serve ``routes`` ({(method, path): handler}) on ``host:port`` (0 = any free port)."""
    tasks = TaskOwner(f"http-{port}")

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(_read_request(reader), READ_TIMEOUT_S)
            if request is None:
                response = Response(400, b"bad request\n")
            else:
                handler = routes.get((request.method, request.path))
                if handler is None:
                    known = any(path == request.path for _, path in routes)
                    response = Response(405 if known else 404, b"not found\n" if not known else b"method\n")
                else:
                    response = await handler(request)
            writer.write(_encode(response))
            await writer.drain()
        except (
            OSError,
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ValueError,
        ) as exc:
            log.debug("http request failed", extra=kv(error=repr(exc)))
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks.spawn(serve(reader, writer), name="request")

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = await asyncio.start_server(
        on_connect, host, port, family=family, limit=MAX_HEAD, reuse_address=True
    )
    bound = server.sockets[0].getsockname()[1]
    return HttpServer(host, int(bound), server, tasks)
