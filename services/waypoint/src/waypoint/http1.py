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
import re
from typing import Any

import httptools

__all__ = [
    "BadMessage",
    "Request",
    "RequestParser",
    "Response",
    "ResponseParser",
    "normalize_path",
    "serialize_request",
    "serialize_response",
    "simple_response",
    "split_target",
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
    101: "Switching Protocols",
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
    431: "Request Header Fields Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
DEFAULT_MAX_BODY = 16 * 1024 * 1024
# Envoy's defaults (max_request_headers_kb 60, max_headers_count 100): llhttp itself has no limit, so without
# these a peer could grow one request head without bound.
MAX_HEAD_BYTES = 60 * 1024
MAX_HEADERS = 100
BODYLESS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


_PCT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _unreserved(m: re.Match[str]) -> str:
    char = chr(int(m.group(1), 16))
    return char if char in _UNRESERVED else m.group(0)


def normalize_path(path: str) -> str:
    """RFC 3986 §5.2.4 dot-segment removal (Istio's default ``BASE`` path normalization in Envoy).

    Percent-encoded unreserved characters are decoded first (RFC 3986 §6.2.2.2). Authorization and routing
    look at the normalized path and it is what the app receives, so ``/./admin``, ``/x/../admin``,
    ``/%2e%2e/admin`` or ``/%61dmin`` cannot slip past a policy on ``/admin``. Slashes are not merged and
    ``%2F`` stays encoded (as upstream's defaults). Paths not starting with ``/`` (``*``) are left alone.
    """
    if not path.startswith("/") or ("." not in path and "%" not in path):
        return path
    if "%" in path:
        path = _PCT.sub(_unreserved, path)
    out: list[str] = []
    segments = path[1:].split("/")
    for i, seg in enumerate(segments):
        dots = seg
        last = i == len(segments) - 1
        if dots == ".":
            if last:
                out.append("")
        elif dots == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(seg)
    return "/" + "/".join(out)


def split_target(target: str) -> tuple[str, str, str | None]:
    """(path, query, authority or None) of a request target; :class:`BadMessage` for forms we refuse.

    Origin form (``/p?q``) and ``*`` pass. An absolute form (``http://host/p``) is split and its authority
    replaces ``Host`` (RFC 9112 §3.2.2), as Envoy does: left as is, a policy on ``/admin`` would look at
    ``http://x/admin`` while the app serves ``/admin``. A fragment is refused (Envoy's default), so
    ``/admin#x`` cannot dodge an exact path match; anything else (authority form, relative) is refused too.
    """
    if "#" in target:
        raise BadMessage("fragment in request target")
    authority: str | None = None
    if not target.startswith("/") and target != "*":
        scheme, sep, rest = target.partition("://")
        if not sep or scheme.lower() not in {"http", "https"}:
            raise BadMessage("invalid request target")
        cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
        authority, target = rest[:cut], rest[cut:]
        if not authority:
            raise BadMessage("invalid request target")
        if not target.startswith("/"):
            target = "/" + target
    path, _, query = target.partition("?")
    return path, query, authority


class BadMessage(Exception):
    """The peer sent something that is not HTTP/1.1 we accept; ``status`` is what we answer."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status


class Request:
    """One HTTP request (mutable while the proxy rewrites it)."""

    __slots__ = (
        "_map",
        "authority",
        "body",
        "headers",
        "http2",
        "keep_alive",
        "method",
        "path",
        "query",
        "upgrade",
    )

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
        self.http2 = False  # arrived over h2c: forwarded upstream over h2c too (gRPC needs it)
        self.upgrade = False  # an HTTP/1.1 Upgrade (WebSocket): after 101 the connection carries raw bytes

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
    __slots__ = ("body", "headers", "keep_alive", "local", "status", "trailers", "upgraded")

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
        self.trailers: list[tuple[str, str]] = []  # h2c/gRPC only
        self.local = False  # generated by the waypoint, not a backend
        self.upgraded: Any = (
            None  # 101 to an Upgrade: (upstream stream, bytes it already sent after the head)
        )

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
        self.head_bytes = 0  # parsed head size of the current message (URL + header lines)

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.body = bytearray()
        self.head_bytes = 0

    def _grow_head(self, n: int) -> None:
        self.head_bytes += n
        if self.head_bytes > MAX_HEAD_BYTES or len(self.headers) > MAX_HEADERS:
            raise BadMessage("headers too large", 431)

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._grow_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))
        self._grow_head(len(name) + len(value) + 4)

    def on_body(self, body: bytes) -> None:
        self.body += body
        if len(self.body) > self.max_body:
            raise BadMessage("body too large", 413)


class _RequestCollector(_Collector):
    def __init__(self, max_body: int) -> None:
        super().__init__(max_body)
        self.parser: Any = None
        self.expect_continue = False
        self.in_head = True  # between messages or inside a head (not in a body)
        self.unparsed = 0  # bytes fed while in a head: httptools buffers a partial header without callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.in_head = True

    def on_headers_complete(self) -> None:
        self.in_head = False
        self.unparsed = 0
        if sum(1 for k, _ in self.headers if k == "host") > 1:
            # RFC 9112 §3.2: two Hosts are ambiguous (authz could see one, the app the other)
            raise BadMessage("duplicate host header")
        if any(k == "expect" and v.lower() == "100-continue" for k, v in self.headers):
            self.expect_continue = True

    def on_message_complete(self) -> None:
        path, query, authority = split_target(self.url.decode("latin-1"))
        if authority is not None:
            self.headers = [("host", authority), *((k, v) for k, v in self.headers if k != "host")]
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
        self.in_head = True


class RequestParser:
    """Feed bytes from the client, get complete :class:`Request` objects (pipelining works)."""

    def __init__(self, max_body: int = DEFAULT_MAX_BODY) -> None:
        self._c = _RequestCollector(max_body)
        self._p = httptools.HttpRequestParser(self._c)
        self._c.parser = self._p
        self.leftover = b""  # bytes after an Upgrade request's head (already the new protocol)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Request]:
        """Complete requests; an Upgrade request comes last (``upgrade`` set; the rest is in ``leftover``)."""
        c = self._c
        if c.in_head:
            c.unparsed += len(data)
        try:
            self._p.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            out, self._c.done = self._c.done, []
            if not out:
                raise BadMessage("malformed upgrade request", 400) from None
            out[-1].upgrade = True
            self.leftover = bytes(data[int(exc.args[0]) :])
            return out
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, BadMessage):
                raise cause from None
            raise BadMessage(f"malformed HTTP/1.1 request: {exc}") from None
        if c.in_head and c.unparsed > MAX_HEAD_BYTES + len(data):
            raise BadMessage("headers too large", 431)
        out, self._c.done = self._c.done, []
        return out

    def take_continue(self) -> bool:
        """True once per request that sent ``Expect: 100-continue`` (answer ``CONTINUE`` before its body)."""
        flag, self._c.expect_continue = self._c.expect_continue, False
        return flag


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
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            return  # informational (100 Continue, 103): the final response follows
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
        self.leftover = b""

    def feed(self, data: bytes | bytearray | memoryview) -> list[Response]:
        try:
            self._p.feed_data(data)
        except httptools.HttpParserUpgrade as exc:  # 101 Switching Protocols: the rest is the new protocol
            self.leftover = bytes(data[int(exc.args[0]) :])
        except httptools.HttpParserError as exc:
            if self._c.done:  # trailing bytes after a HEAD response: the message we need is complete
                out, self._c.done = self._c.done, []
                return out
            cause = exc.__context__
            if isinstance(cause, BadMessage):
                if cause.status == 431:  # an oversized response head is the backend's fault
                    cause.status = 502
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


def _head_lines(
    first: str, headers: list[tuple[str, str]], body_len: int | None, keep_alive: bool, upgrade: bool = False
) -> bytes:
    parts = [first]
    for k, v in headers:
        if upgrade and k in ("connection", "upgrade"):
            parts.append(f"{k}: {v}")  # an Upgrade handshake keeps them end to end
        elif k not in HOP_BY_HOP and k != "expect":  # bodies are buffered: nobody upstream waits for 100
            parts.append(f"{k}: {v}")
    if body_len is not None:
        parts.append(f"content-length: {body_len}")
    if not keep_alive:
        parts.append("connection: close")
    parts.append("\r\n")
    return "\r\n".join(parts).encode("latin-1")


def serialize_request(req: Request) -> bytes:
    length = len(req.body) if req.body or req.method not in BODYLESS else None
    head = _head_lines(f"{req.method} {req.target} HTTP/1.1", req.headers, length, True, req.upgrade)
    return head + req.body if req.body else head


def serialize_response(resp: Response, *, keep_alive: bool = True, head: bool = False) -> bytes:
    reason = REASONS.get(resp.status, "Unknown")
    length = None if resp.status in (204, 304) or resp.status < 200 else len(resp.body)
    data = _head_lines(
        f"HTTP/1.1 {resp.status} {reason}", resp.headers, length, keep_alive, resp.status == 101
    )
    return data if head or not resp.body else data + resp.body


def simple_response(status: int, body: str, headers: list[tuple[str, str]] | None = None) -> Response:
    """A locally generated reply (403 ``RBAC: access denied``, 503 ``no healthy upstream``, ...)."""
    resp = Response(status, [("content-type", "text/plain"), *(headers or [])], body.encode())
    resp.local = True
    return resp
