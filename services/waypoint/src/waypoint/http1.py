"""Sans-IO HTTP/1.1 messages for the waypoint: parse with ``httptools`` (llhttp), serialize by hand.

Why httptools rather than h11: the waypoint's budget is about 300 µs of CPU per proxied request (3,000 req/s
per core) and every request is parsed twice (request from the client, response from the backend); llhttp
costs a few µs per message where h11 costs tens. httptools is used strictly sans-IO: ``feed(bytes)`` in,
complete messages out; no sockets.

Bodies are buffered whole (up to ``max_body``): it makes retries and mirroring trivial and our messages are
small; a larger body is a :class:`BadMessage` with status 413. Chunked bodies are de-chunked and re-sent
with ``content-length``. Hop-by-hop headers are dropped on the way through (RFC 9110 §7.6.1).

Invariants: header names are lower-cased; ``Request.path`` never contains the query; a parser that raised
:class:`BadMessage` must not be fed again (the connection is answered and closed).
"""

from __future__ import annotations

import contextlib
from typing import Any

import httptools

__all__ = [
    "BadMessage",
    "Request",
    "RequestParser",
    "Response",
    "ResponseParser",
    "serialize_request",
    "serialize_response",
    "simple_response",
]

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "te",
        "trailer",
        "upgrade",
        "content-length",
    }
)
REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    301: "Moved Permanently",
    302: "Found",
    303: "See Other",
    304: "Not Modified",
    307: "Temporary Redirect",
    308: "Permanent Redirect",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
DEFAULT_MAX_BODY = 16 * 1024 * 1024


class BadMessage(Exception):
    """The peer sent something that is not HTTP/1.1 we accept; ``status`` is what we answer."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status


class Request:
    """One HTTP request (mutable while the proxy rewrites it)."""

    __slots__ = ("_map", "authority", "body", "headers", "keep_alive", "method", "path", "query")

    def __init__(
        self,
        method: str,
        path: str,
        query: str = "",
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        *,
        keep_alive: bool = True,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers if headers is not None else []
        self.body = body
        self.keep_alive = keep_alive
        self._map: dict[str, str] | None = None
        self.authority = self.header("host") or ""

    @property
    def target(self) -> str:
        return f"{self.path}?{self.query}" if self.query else self.path

    def header_map(self) -> dict[str, str]:
        """First-wins view of the headers, repeated headers joined with ``,`` (as Envoy's matching)."""
        if self._map is None:
            out: dict[str, str] = {}
            for k, v in self.headers:
                out[k] = f"{out[k]},{v}" if k in out else v
            self._map = out
        return self._map

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def set_headers(self, headers: list[tuple[str, str]]) -> None:
        self.headers = headers
        self._map = None
        self.authority = self.header("host") or self.authority

    def set_header(self, name: str, value: str) -> None:
        self.set_headers([*((k, v) for k, v in self.headers if k != name), (name, value)])


class Response:
    __slots__ = ("body", "headers", "keep_alive", "status")

    def __init__(
        self,
        status: int,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        keep_alive: bool = True,
    ) -> None:
        self.status = status
        self.headers = headers if headers is not None else []
        self.body = body
        self.keep_alive = keep_alive

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None


class _Collector:
    """httptools callbacks shared by both directions: collect headers and body of the current message."""

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.body = bytearray()
        self.done: list[Any] = []

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.body = bytearray()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self.body += body
        if len(self.body) > self.max_body:
            raise BadMessage("body too large", 413)


class _RequestCollector(_Collector):
    def __init__(self, max_body: int) -> None:
        super().__init__(max_body)
        self.parser: Any = None

    def on_message_complete(self) -> None:
        url = self.url.decode("latin-1")
        path, _, query = url.partition("?")
        self.done.append(
            Request(
                self.parser.get_method().decode("ascii"),
                path,
                query,
                self.headers,
                bytes(self.body),
                keep_alive=self.parser.should_keep_alive(),
            )
        )


class RequestParser:
    """Feed bytes from the client, get complete :class:`Request` objects (pipelining works)."""

    def __init__(self, max_body: int = DEFAULT_MAX_BODY) -> None:
        self._c = _RequestCollector(max_body)
        self._p = httptools.HttpRequestParser(self._c)
        self._c.parser = self._p

    def feed(self, data: bytes | bytearray | memoryview) -> list[Request]:
        try:
            self._p.feed_data(data)
        except httptools.HttpParserUpgrade:
            raise BadMessage("protocol upgrade is not supported through the waypoint", 400) from None
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, BadMessage):
                raise cause from None
            raise BadMessage(f"malformed HTTP/1.1 request: {exc}") from None
        out, self._c.done = self._c.done, []
        return out


class _ResponseCollector(_Collector):
    def __init__(self, max_body: int) -> None:
        super().__init__(max_body)
        self.parser: Any = None
        self.head_only = False

    def on_headers_complete(self) -> None:
        if self.head_only:
            self._finish()

    def on_message_complete(self) -> None:
        if not self.head_only:
            self._finish()

    def _finish(self) -> None:
        self.done.append(
            Response(
                self.parser.get_status_code(), self.headers, bytes(self.body), self.parser.should_keep_alive()
            )
        )


class ResponseParser:
    """Feed bytes from the backend, get complete :class:`Response` objects.

    ``head_only``: the request was HEAD, so the response ends after its headers; the connection is then not
    reused (llhttp cannot be told to expect no body).
    """

    def __init__(self, max_body: int = DEFAULT_MAX_BODY, *, head_only: bool = False) -> None:
        self._c = _ResponseCollector(max_body)
        self._c.head_only = head_only
        self._p = httptools.HttpResponseParser(self._c)
        self._c.parser = self._p

    def feed(self, data: bytes | bytearray | memoryview) -> list[Response]:
        try:
            self._p.feed_data(data)
        except httptools.HttpParserError as exc:
            if self._c.done:  # trailing bytes after a HEAD response: the message we need is complete
                out, self._c.done = self._c.done, []
                return out
            cause = exc.__context__
            if isinstance(cause, BadMessage):
                raise cause from None
            raise BadMessage(f"malformed HTTP/1.1 response: {exc}", 502) from None
        out, self._c.done = self._c.done, []
        return out

    def feed_eof(self) -> list[Response]:
        """The backend closed: a read-until-close body is complete now."""
        if self._c.url or self._c.headers:
            with contextlib.suppress(httptools.HttpParserError):
                self._p.feed_data(b"")
        out, self._c.done = self._c.done, []
        return out


def _head_lines(first: str, headers: list[tuple[str, str]], body_len: int, keep_alive: bool) -> bytes:
    parts = [first]
    for k, v in headers:
        if k not in HOP_BY_HOP:
            parts.append(f"{k}: {v}")
    parts.append(f"content-length: {body_len}")
    if not keep_alive:
        parts.append("connection: close")
    parts.append("\r\n")
    return "\r\n".join(parts).encode("latin-1")


def serialize_request(req: Request) -> bytes:
    head = _head_lines(f"{req.method} {req.target} HTTP/1.1", req.headers, len(req.body), True)
    return head + req.body if req.body else head


def serialize_response(resp: Response, *, keep_alive: bool = True, head: bool = False) -> bytes:
    reason = REASONS.get(resp.status, "Unknown")
    data = _head_lines(f"HTTP/1.1 {resp.status} {reason}", resp.headers, len(resp.body), keep_alive)
    return data if head or not resp.body else data + resp.body


def simple_response(status: int, body: str, headers: list[tuple[str, str]] | None = None) -> Response:
    """A locally generated reply (403 ``RBAC: access denied``, 503 ``no healthy upstream``, ...)."""
    return Response(status, [("content-type", "text/plain"), *(headers or [])], body.encode())
