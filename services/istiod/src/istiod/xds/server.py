"""The delta ADS gRPC handler and the push loop.

:class:`DiscoveryServer` owns the connected streams. For each stream it authenticates the caller (pluggable
:class:`Authenticator`: the ServiceAccount JWT in production, anything in tests), checks the node id, and
runs a :class:`~meshkit.xds.server_core.ServerStream` over the shared :class:`ResourceCache`. Index changes
arrive through :meth:`DiscoveryServer.notify`; they are debounced (``debounce_s`` quiet time, at most
``debounce_max_s`` after the first change), merged, and pushed to every stream as one response per type.

The handler yields pre-encoded response bytes (``response_serializer=None``): see :mod:`meshkit.xds.wire`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from meshkit.logs import kv
from meshkit.xds.server_core import Received, ServerStream
from meshkit.xds.types import DELTA_METHOD, InvalidNodeId, NodeId, short_type
from meshproto.envoy.service.discovery.v3 import discovery_pb2

from istiod.xds.cache import ResourceCache
from istiod.xds.metrics import XdsMetrics

__all__ = ["Authenticator", "Connection", "DiscoveryServer", "grpc_handler", "server_options"]

log = logging.getLogger("xds")
NOT_READY = "server is not ready to serve discovery information"  # upstream's words: clients retry on it


class Authenticator(Protocol):
    """``KubeJwtAuthenticator`` satisfies this; raise to refuse (``code``/``message`` attributes are used)."""

    async def authenticate(self, metadata: Any) -> Any: ...


def server_options(max_connection_age_s: float = 1800.0) -> list[tuple[str, Any]]:
    """gRPC server options: tolerate ztunnel's 30 s keepalive pings on idle streams (wire-contracts.md §3.1;
    pings no more often than 15 s, as istiod), and rotate connections with GOAWAY after a max age."""
    return [
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 15_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 15_000),
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.max_connection_age_ms", int(max_connection_age_s * 1000)),
        ("grpc.max_connection_age_grace_ms", 10_000),
        ("grpc.max_send_message_length", 200 * 1024 * 1024),
        ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ]


class StreamRefused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(eq=False)
class Connection:
    id: str
    peer: str
    caller: Any
    stream: ServerStream
    queue: asyncio.Queue[tuple[bytes, float] | StreamRefused | None] = field(default_factory=asyncio.Queue)
    node: NodeId | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    connected_at: float = field(default_factory=time.time)
    nacks: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        """The per-client debug view: who, and which resources (and versions) it holds per type."""
        return {
            "id": self.id, "peer": self.peer, "node": str(self.node) if self.node else "",
            "connected_at": self.connected_at, "recent_nacks": self.nacks[-10:],
            "types": {
                t: {"wildcard": st.wildcard, "names": sorted(st.names), "versions": _sorted(st.sent),
                    "unacked_nonces": sorted(st.pending)}
                for t, st in self.stream.types.items()
            },
        }  # fmt: skip


def _sorted(versions: dict[str, str]) -> dict[str, str]:
    return dict(sorted(versions.items()))


class DiscoveryServer:
    def __init__(
        self,
        cache: ResourceCache,
        metrics: XdsMetrics,
        *,
        authenticator: Authenticator | None = None,
        identity_check: bool = True,
        debounce_s: float = 0.1,
        debounce_max_s: float = 10.0,
        max_queued: int = 100,
    ) -> None:
        self.cache = cache
        self.metrics = metrics
        self.authenticator = authenticator
        self.identity_check = identity_check
        self.debounce_s = debounce_s
        self.debounce_max_s = debounce_max_s
        self.max_queued = max_queued  # responses waiting for one slow client before its stream is ended
        self.connections: dict[str, Connection] = {}
        self._ids = itertools.count(1)
        self._pending: dict[str, set[str]] = {}
        self._first_change: float | None = None
        self._last_change = 0.0
        self._wake = asyncio.Event()
        self.push_rounds = 0
        self._stream_tasks: set[asyncio.Task[Any]] = set()
        self.nacked = asyncio.Event()  # set on every NACK and refused stream (observable by tests and debug)
        self.refused = asyncio.Event()
        #: False until the inputs have synced: streams are refused (UNAVAILABLE) until then, as upstream does.
        #: Serving a half-built index would tell a (re)connecting ztunnel that live workloads are gone.
        self.ready: Callable[[], bool] = lambda: True
        self.refused_not_ready = asyncio.Event()  # set when a stream was refused for that (tests, debug)

    # ---- changes and pushes ----

    def notify(self, type_url: str, names: set[str]) -> None:
        """Called by the cache when encoded resources changed."""
        self._pending.setdefault(type_url, set()).update(names)
        now = time.monotonic()
        if self._first_change is None:
            self._first_change = now
        self._last_change = now
        self._wake.set()

    async def run_pushes(self) -> None:
        """The debounce loop; runs until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._first_change is not None:
                now = time.monotonic()
                quiet_at = self._last_change + self.debounce_s
                max_at = self._first_change + self.debounce_max_s
                if now >= quiet_at or now >= max_at:
                    break
                await asyncio.sleep(min(quiet_at, max_at) - now)
            self.push_now()

    def push_now(self) -> None:
        """Push what is pending to every stream at once (no debounce)."""
        pending, started = self._pending, self._first_change
        self._pending, self._first_change = {}, None
        if not pending:
            return
        self.push_rounds += 1
        for conn in list(self.connections.values()):
            for type_url, names in pending.items():
                self._send(conn, type_url, names, started)

    def _send(self, conn: Connection, type_url: str, names: Iterable[str], started: float | None) -> None:
        try:
            response = conn.stream.push(type_url, names)
        except Exception:
            self.metrics.push_errors.labels(type=short_type(type_url)).inc()
            log.exception("push failed", extra=kv(conn=conn.id, type_url=type_url))
            return
        if response is None:
            return
        if conn.queue.qsize() >= self.max_queued:
            # a client that stopped reading: end its stream (it reconnects and resumes) instead of buffering
            # without bound, as istiod does with its send timeout
            self.metrics.push_errors.labels(type=short_type(type_url)).inc()
            log.warning(
                "xds client too slow; closing its stream", extra=kv(conn=conn.id, node=str(conn.node))
            )
            conn.queue.put_nowait(
                StreamRefused(grpc.StatusCode.UNAVAILABLE, "client too slow to receive pushes")
            )
            return
        conn.queue.put_nowait((response.encode(), started or time.monotonic()))
        self.metrics.pushes.labels(type=short_type(type_url)).inc()

    # ---- streams ----

    async def stream(self, request_iterator: AsyncIterator[Any], context: Any) -> AsyncIterator[bytes]:
        """The DeltaAggregatedResources handler body (an async generator of encoded responses)."""
        task = asyncio.current_task()
        if task is not None:
            self._stream_tasks.add(task)
            task.add_done_callback(self._stream_tasks.discard)
        if not self.ready():
            self.refused_not_ready.set()
            log.info("xds client refused: not synced yet", extra=kv(peer=context.peer()))
            await context.abort(grpc.StatusCode.UNAVAILABLE, NOT_READY)
            return
        caller = await self._authenticate(context)
        conn = Connection(f"conn-{next(self._ids)}", str(context.peer()), caller, ServerStream(self.cache))
        reader = asyncio.get_running_loop().create_task(self._read(conn, request_iterator), name=conn.id)
        self.connections[conn.id] = conn
        self.metrics.connected.labels(version="").inc()
        log.info("xds client connected", extra=kv(conn=conn.id, peer=conn.peer))
        try:
            while (item := await conn.queue.get()) is not None:
                if isinstance(item, StreamRefused):
                    if item.code != grpc.StatusCode.UNAVAILABLE:
                        self.metrics.auth_failures.inc()
                        self.refused.set()
                    await context.abort(item.code, item.message)
                    return
                data, started = item
                yield data
                self.metrics.convergence.observe(max(0.0, time.monotonic() - started))
        finally:
            self.connections.pop(conn.id, None)
            self.metrics.connected.labels(version="").dec()
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            log.info("xds client disconnected", extra=kv(conn=conn.id, node=str(conn.node or "")))

    async def _authenticate(self, context: Any) -> Any:
        if self.authenticator is None:
            return None
        try:
            return await self.authenticator.authenticate(context.invocation_metadata() or ())
        except Exception as exc:
            self.metrics.auth_failures.inc()
            self.refused.set()
            code = getattr(exc, "code", grpc.StatusCode.UNAUTHENTICATED)
            message = getattr(exc, "message", str(exc))
            log.warning("xds client refused", extra=kv(peer=context.peer(), error=message))
            if not isinstance(code, grpc.StatusCode):
                code = grpc.StatusCode.UNAUTHENTICATED
            await context.abort(code, message)
            raise

    async def _read(self, conn: Connection, request_iterator: AsyncIterator[Any]) -> None:
        try:
            async for req in request_iterator:
                if conn.node is None:
                    self._identify(conn, req)
                self._deliver(conn, conn.stream.receive(req))
        except StreamRefused as refused:
            conn.queue.put_nowait(refused)
            return
        except Exception as exc:  # a broken stream: end it; the client reconnects
            reason = str(exc) or type(exc).__name__
            log.info("xds stream read ended", extra=kv(conn=conn.id, error=reason))
        conn.queue.put_nowait(None)

    def _identify(self, conn: Connection, req: discovery_pb2.DeltaDiscoveryRequest) -> None:
        if not req.HasField("node"):
            raise StreamRefused(grpc.StatusCode.INVALID_ARGUMENT, "the first request must carry a node")
        try:
            node = NodeId.parse(req.node.id)
        except InvalidNodeId as exc:
            raise StreamRefused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        fields = req.node.metadata.fields
        _check_node(node, fields["INSTANCE_IPS"].string_value if "INSTANCE_IPS" in fields else "")
        conn.node = node
        conn.metadata = {k: fields[k].string_value for k in ("NAME", "NAMESPACE", "NODE_NAME", "CLUSTER_ID")
                         if k in fields}  # fmt: skip
        # GetProxyConfigNamespace: metadata NAMESPACE, else the first label of the DNS domain (§3.3)
        domain = conn.node.domain.split(".")
        namespace = conn.metadata.get("NAMESPACE") or (domain[0] if len(domain) > 1 else "")
        caller_ns = getattr(conn.caller, "service_account_namespace", None)
        if self.identity_check and caller_ns is not None and caller_ns != namespace:
            # §3.3 XDS identity check: the token's namespace must be the proxy's namespace
            raise StreamRefused(
                grpc.StatusCode.PERMISSION_DENIED,
                f"authenticated namespace {caller_ns!r} does not match the proxy namespace {namespace!r}",
            )

    def _deliver(self, conn: Connection, received: Received) -> None:
        if received.nack is not None:
            nack = received.nack
            self.metrics.rejects.labels(type=short_type(nack.type_url)).inc()
            conn.nacks.append(nack.message)
            self.nacked.set()
            log.warning("xds NACK", extra=kv(conn=conn.id, node=str(conn.node), type_url=nack.type_url,
                                              nonce=nack.nonce, error=nack.message))  # fmt: skip
        for response in received.responses:
            conn.queue.put_nowait((response.encode(), time.monotonic()))
            self.metrics.pushes.labels(type=short_type(response.type_url)).inc()

    async def wait_streams_closed(self, timeout_s: float = 2.0) -> None:
        """After the gRPC server stopped: wait for the stream handlers to unwind (so nothing outlives us)."""
        for conn in list(self.connections.values()):
            conn.queue.put_nowait(None)
        pending = [t for t in self._stream_tasks if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)

    def debug_clients(self) -> list[dict[str, Any]]:
        return [c.describe() for c in self.connections.values()]


NODE_TYPES = ("sidecar", "router", "waypoint", "ztunnel")


def _check_node(node: NodeId, instance_ips: str) -> None:
    """Refuse what istiod's ParseServiceNodeWithMetadata refuses (§3.3): an unknown proxy type, or no valid
    IP (metadata ``INSTANCE_IPS`` wins; the id's IP part is only a fallback)."""
    if node.type not in NODE_TYPES:
        raise StreamRefused(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"invalid node type {node.type!r} (valid: {', '.join(NODE_TYPES)}) in node id {str(node)!r}",
        )
    ips = [ip for ip in instance_ips.split(",") if ip] or ([node.ip] if _valid_ip(node.ip) else [])
    if not ips:
        raise StreamRefused(
            grpc.StatusCode.INVALID_ARGUMENT, "no valid IP address in the node id or metadata"
        )


def _valid_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def grpc_handler(server: DiscoveryServer) -> grpc.GenericRpcHandler[Any, Any]:
    """A generic handler for the delta method (raw bytes out, requests parsed)."""
    service, method = DELTA_METHOD.lstrip("/").split("/")
    handler = grpc.stream_stream_rpc_method_handler(
        server.stream, request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString
    )
    return grpc.method_handlers_generic_handler(service, {method: handler})
