"""h2c (HTTP/2 over cleartext, inside the HBONE tunnel) and gRPC at L7, on the ``h2`` sans-IO library.

Downstream (:func:`serve_h2c`): one ``H2Connection`` (server side) per tunnel; each request stream is
collected whole (headers, DATA, trailers ignored), turned into a :class:`~waypoint.http1.Request` with
``http2=True`` and run through the same pipeline as HTTP/1.1 (:meth:`WaypointProxy.process`); streams of one
connection are processed concurrently. Upstream (:class:`H2UpstreamPool`): one h2c connection per endpoint
over one HBONE tunnel, multiplexing the requests that arrived over h2c (gRPC needs HTTP/2 end to end).

gRPC: a local reply (RBAC deny, JWT failure, fault abort, no upstream) to a gRPC request is sent the way
Envoy does, as a "trailers-only" response: HTTP 200 with ``grpc-status`` / ``grpc-message`` (mapping of
HTTP status to gRPC code as Envoy's); a fault's ``abort_grpc_status`` is used as is. Response trailers from
the backend (``grpc-status``) are passed through.

Flow control: received DATA is acknowledged as it is consumed (bodies are buffered whole, like HTTP/1.1);
sending waits for the peer's window (``WindowUpdated``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from h2.errors import ErrorCodes
from meshkit.hbone.errors import HboneError
from meshkit.hbone.stream import HboneStream

from waypoint.http1 import BadMessage, Request, Response, simple_response, split_target
from waypoint.upstream import StreamOpener, UpstreamError

if TYPE_CHECKING:
    from waypoint.proxy import Downstream, WaypointProxy

__all__ = ["H2UpstreamPool", "grpc_status_for", "serve_h2c"]

log = logging.getLogger("waypoint.h2c")
HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "host"}
)
MAX_BODY = 16 * 1024 * 1024


def grpc_status_for(http_status: int) -> int:
    """Envoy's HTTP → gRPC status mapping for local replies."""
    return {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}.get(http_status, 2)


class _H2Conn:
    """An ``H2Connection`` bound to an HBONE stream: a reader task feeds it; writes flush at once."""

    def __init__(self, stream: HboneStream, client_side: bool) -> None:
        config = h2.config.H2Configuration(
            client_side=client_side, header_encoding="utf-8", validate_inbound_headers=False
        )
        self.h2 = h2.connection.H2Connection(config)
        self.stream = stream
        self.window_open = asyncio.Event()
        self.closed = False

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.closed:
            try:
                self.stream.write(data)
            except HboneError:
                self.closed = True

    async def send_body(self, stream_id: int, body: bytes, end_stream: bool) -> None:
        view = memoryview(body)
        while view:
            window = min(self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size)
            if window <= 0:
                self.window_open.clear()
                await self.window_open.wait()
                if self.closed:
                    raise ConnectionError("h2c connection closed while sending")
                continue
            chunk, view = view[:window], view[window:]
            self.h2.send_data(stream_id, bytes(chunk), end_stream=end_stream and not view)
            self.flush()
        if not body and end_stream:
            self.h2.end_stream(stream_id)
            self.flush()


class _Pending:
    __slots__ = ("body", "done", "headers", "trailers")

    def __init__(self, headers: list[tuple[str, str]]) -> None:
        self.headers = headers
        self.body = bytearray()
        self.trailers: list[tuple[str, str]] = []
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()


_FORBIDDEN = frozenset("\r\n\x00")
_NO_SPACE = frozenset([":method", ":path", ":authority", ":scheme"])


def _check_headers(headers: list[tuple[str, str]]) -> None:
    """Refuse what HTTP/2 forbids in fields (RFC 9113 §8.2.1) before it can reach an HTTP/1.1 upstream.

    Inbound validation in ``h2`` is off (it would tear down the whole connection); without this check a
    CR/LF in a header value or ``:path`` would be written verbatim into the HTTP/1.1 request to the app,
    letting a client smuggle headers or a second request past authorization.
    """
    for k, v in headers:
        if not k or _FORBIDDEN.intersection(k) or _FORBIDDEN.intersection(v):
            raise BadMessage("invalid character in header")
        if k in _NO_SPACE and (not v or any(c in v for c in " \t")):
            raise BadMessage(f"invalid {k}")
        if k != k.lower() or any(c in k for c in " \t"):
            raise BadMessage("invalid header name")
    names = [k for k, _ in headers if k.startswith(":")]
    if len(names) != len(set(names)):
        raise BadMessage("duplicate pseudo-header")


def _request_from(headers: list[tuple[str, str]], body: bytes) -> Request:
    """The request of one stream; raises :class:`BadMessage` (answered with 400) for invalid fields."""
    _check_headers(headers)
    pseudo = {k: v for k, v in headers if k.startswith(":")}
    path, query, in_path = split_target(pseudo.get(":path", "/"))
    if in_path is not None:
        raise BadMessage("invalid :path")  # RFC 9113 §8.3.1: origin form (or "*") only
    plain = [(k.lower(), v) for k, v in headers if not k.startswith(":") and k.lower() not in HOP]
    authority = pseudo.get(":authority", "")
    req = Request(pseudo.get(":method", "GET"), path, query, [("host", authority), *plain], body)
    req.http2 = True
    return req


def _is_grpc(req: Request) -> bool:
    return (req.header("content-type") or "").startswith("application/grpc")


def _response_headers(
    req: Request, resp: Response
) -> tuple[list[tuple[str, str]], list[tuple[str, str]], bytes]:
    """(headers, trailers, body) to send; gRPC local replies become trailers-only responses."""
    if _is_grpc(req) and resp.local and resp.status != 200:
        code = next((v for k, v in resp.headers if k == "grpc-status"), None) or str(
            grpc_status_for(resp.status)
        )
        message = resp.body.decode("utf-8", "replace")
        return (
            [
                (":status", "200"),
                ("content-type", "application/grpc"),
                ("grpc-status", code),
                ("grpc-message", message),
            ],
            [],
            b"",
        )
    headers = [(":status", str(resp.status))]
    headers += [(k, v) for k, v in resp.headers if k not in HOP and k != "content-length"]
    return headers, list(resp.trailers), resp.body


async def serve_h2c(proxy: WaypointProxy, stream: HboneStream, down: Downstream, first: bytes) -> None:
    """Serve one h2c connection inside a tunnel until the client closes it."""
    conn = _H2Conn(stream, client_side=False)
    conn.h2.initiate_connection()
    conn.flush()
    pending: dict[int, _Pending] = {}
    async with asyncio.TaskGroup() as group:
        data: bytes = first
        while data:
            try:
                events = conn.h2.receive_data(data)
            except h2.exceptions.ProtocolError as exc:
                log.info("h2c protocol error", extra={"kv": {"error": str(exc)}})
                conn.flush()
                break
            for event in events:
                _server_event(proxy, conn, down, pending, group, event)
            conn.flush()
            try:
                data = await stream.read()
            except HboneError:
                break
        conn.closed = True
        conn.window_open.set()
    with contextlib.suppress(HboneError):
        stream.write_eof()


def _server_event(  # noqa: PLR0917
    proxy: WaypointProxy,
    conn: _H2Conn,
    down: Downstream,
    pending: dict[int, _Pending],
    group: asyncio.TaskGroup,
    event: h2.events.Event,
) -> None:
    if isinstance(event, h2.events.RequestReceived):
        pending[event.stream_id] = _Pending([(str(k), str(v)) for k, v in event.headers or []])
        if event.stream_ended is not None:
            group.create_task(_answer(proxy, conn, down, event.stream_id, pending.pop(event.stream_id)))
    elif isinstance(event, h2.events.DataReceived):
        conn.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        item = pending.get(event.stream_id)
        if item is not None:
            item.body += event.data or b""
            # the cap is per connection, not per stream: up to 100 concurrent streams each buffering a whole
            # body would otherwise hold 100 x MAX_BODY for one client
            if sum(len(p.body) for p in pending.values()) > MAX_BODY:
                conn.h2.reset_stream(event.stream_id, ErrorCodes.REFUSED_STREAM)
                pending.pop(event.stream_id, None)
    elif isinstance(event, h2.events.StreamEnded):
        item = pending.pop(event.stream_id, None)
        if item is not None:
            group.create_task(_answer(proxy, conn, down, event.stream_id, item))
    elif isinstance(event, h2.events.StreamReset):
        pending.pop(event.stream_id, None)
    elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
        conn.window_open.set()
    elif isinstance(event, h2.events.ConnectionTerminated):
        conn.closed = True
        conn.window_open.set()


async def _answer(
    proxy: WaypointProxy, conn: _H2Conn, down: Downstream, stream_id: int, item: _Pending
) -> None:
    try:
        req = _request_from(item.headers, bytes(item.body))
    except BadMessage as exc:
        req, resp = Request("GET", "/", "", []), simple_response(exc.status, str(exc))
    else:
        resp = await proxy.process(req, down)
    if conn.closed:
        return
    headers, trailers, body = _response_headers(req, resp)
    try:
        conn.h2.send_headers(stream_id, headers, end_stream=not body and not trailers)
        conn.flush()
        if body:
            await conn.send_body(stream_id, body, end_stream=not trailers)
        if trailers:
            conn.h2.send_headers(stream_id, trailers, end_stream=True)
            conn.flush()
    except (h2.exceptions.H2Error, ConnectionError) as exc:
        log.debug("h2c response not sent", extra={"kv": {"stream": stream_id, "error": str(exc)}})


# -- upstream ---------------------------------------------------------------------------------------------


class _H2Client:
    """One h2c connection to an endpoint over one HBONE tunnel; requests are multiplexed on it."""

    def __init__(self, stream: HboneStream, spawn: Callable[[Coroutine[Any, Any, None]], object]) -> None:
        self.conn = _H2Conn(stream, client_side=True)
        self.conn.h2.initiate_connection()
        self.conn.flush()
        self.pending: dict[int, _Pending] = {}
        self.statuses: dict[int, int] = {}
        spawn(self._read())

    @property
    def usable(self) -> bool:
        return not self.conn.closed and self.conn.h2.open_outbound_streams < 100

    async def _read(self) -> None:
        try:
            while data := await self.conn.stream.read():
                for event in self.conn.h2.receive_data(data):
                    self._event(event)
                self.conn.flush()
        except (HboneError, h2.exceptions.ProtocolError) as exc:
            log.debug("upstream h2c connection ended", extra={"kv": {"error": str(exc)}})
        finally:
            self.conn.closed = True
            self.conn.window_open.set()
            for item in self.pending.values():
                if not item.done.done():
                    item.done.set_exception(UpstreamError("reset", "upstream h2c connection closed"))
            self.pending.clear()

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            item = self.pending.get(event.stream_id)
            if item is not None:
                item.headers = [(str(k), str(v)) for k, v in event.headers or []]
        elif isinstance(event, h2.events.DataReceived):
            self.conn.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            item = self.pending.get(event.stream_id)
            if item is not None:
                item.body += event.data or b""
        elif isinstance(event, h2.events.TrailersReceived):
            item = self.pending.get(event.stream_id)
            if item is not None:
                item.trailers = [(str(k), str(v)) for k, v in event.headers or []]
        elif isinstance(event, h2.events.StreamEnded):
            item = self.pending.pop(event.stream_id, None)
            if item is not None and not item.done.done():
                item.done.set_result(None)
        elif isinstance(event, h2.events.StreamReset):
            item = self.pending.pop(event.stream_id, None)
            if item is not None and not item.done.done():
                item.done.set_exception(UpstreamError("reset", f"upstream reset stream ({event.error_code})"))
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self.conn.window_open.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.conn.closed = True

    async def request(self, req: Request) -> Response:
        if self.conn.closed:
            raise UpstreamError("reset", "upstream h2c connection closed")
        stream_id = self.conn.h2.get_next_available_stream_id()
        headers = [
            (":method", req.method),
            (":scheme", "http"),
            (":path", req.target),
            (":authority", req.authority),
        ]
        headers += [(k, v) for k, v in req.headers if k not in HOP]
        item = self.pending[stream_id] = _Pending([])
        try:
            self.conn.h2.send_headers(stream_id, headers, end_stream=not req.body)
            self.conn.flush()
            if req.body:
                await self.conn.send_body(stream_id, req.body, end_stream=True)
            await item.done
        except asyncio.CancelledError:
            with contextlib.suppress(h2.exceptions.H2Error):
                self.conn.h2.reset_stream(stream_id, ErrorCodes.CANCEL)
                self.conn.flush()
            raise
        except (h2.exceptions.H2Error, ConnectionError) as exc:
            raise UpstreamError("reset", f"upstream h2c: {exc}") from exc
        finally:
            self.pending.pop(stream_id, None)
        status = int(next((v for k, v in item.headers if k == ":status"), "502"))
        resp = Response(status, [(k, v) for k, v in item.headers if not k.startswith(":")], bytes(item.body))
        resp.trailers = item.trailers
        return resp

    def close(self) -> None:
        self.conn.closed = True
        self.conn.stream.abort()


class H2UpstreamPool:
    """One multiplexed h2c connection per endpoint (a new one when it dies or fills up)."""

    def __init__(self, opener: StreamOpener, spawn: Callable[[Coroutine[Any, Any, None]], object]) -> None:
        self._open = opener
        self._spawn = spawn
        self._clients: dict[tuple[str, int], _H2Client] = {}
        self._dialing: dict[tuple[str, int], asyncio.Future[_H2Client]] = {}

    async def request(self, address: str, port: int, req: Request) -> Response:
        client = await self._client((address, port))
        return await client.request(req)

    async def _client(self, key: tuple[str, int]) -> _H2Client:
        client = self._clients.get(key)
        if client is not None and client.usable:
            return client
        dialing = self._dialing.get(key)
        if dialing is not None:
            return await asyncio.shield(dialing)
        fut: asyncio.Future[_H2Client] = asyncio.get_running_loop().create_future()
        self._dialing[key] = fut
        try:
            stream = await self._open(*key)
            client = _H2Client(stream, self._spawn)
            self._clients[key] = client
            fut.set_result(client)
            return client
        except Exception as exc:
            err = UpstreamError("connect-failure", str(exc) or type(exc).__name__)
            fut.set_exception(err)
            fut.exception()
            raise err from exc
        except BaseException:
            fut.cancel()
            raise
        finally:
            self._dialing.pop(key, None)

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
