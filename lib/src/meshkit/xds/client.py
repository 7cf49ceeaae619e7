"""Asyncio shell of the delta xDS client: one long-lived stream to istiod, reconnecting forever.

Around :class:`~meshkit.xds.client_core.ClientCore` it adds the I/O: a gRPC channel (TLS verified against
the mesh root; plaintext only for an explicit ``http://`` address), per-connection metadata
(``authorization: Bearer <token>`` re-read from the token file on every connect, ``clusterid``, extra
``XDS_HEADER_*`` headers), and the reconnect policy of ztunnel (wire-contracts.md §3.1): a clean end
reconnects at once; Unknown/Cancelled/DeadlineExceeded and a GOAWAY-style Unavailable after 10 ms; other
failures back off doubling from 10 ms to 15 s (reset once a response arrives). The stores behind the
updater are never cleared on disconnect, so the last good state keeps serving while istiod is unreachable;
the next stream resumes with ``initial_resource_versions``.

Transport security comes from the address scheme, as upstream (wire-contracts.md §3.1): ``https://host:port``
and a bare ``host:port`` are TLS and need ``root_cert_pem`` (:class:`XdsClient` raises ``ValueError`` without
one: a missing root never silently means plaintext); ``http://host:port`` is plaintext (tests, istiod's
15010). The bearer token is sent only over TLS unless ``plaintext_token=True`` (a loopback test against 15010
that needs the caller's identity): on the wire in the clear it would let anyone replay it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from meshproto.envoy.service.discovery.v3 import discovery_pb2

from meshkit.logs import kv
from meshkit.xds.client_core import ClientCore
from meshkit.xds.metrics import XdsClientMetrics
from meshkit.xds.types import DELTA_METHOD, short_type

__all__ = ["XdsClient", "XdsClientConfig", "XdsClientMetrics"]

log = logging.getLogger("xds")
_MAX_MESSAGE = 200 * 1024 * 1024
_FAST_RETRY_CODES = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED}


@dataclass(frozen=True, slots=True)
class XdsClientConfig:
    """Where and how to connect: ``address`` is ``[https://]host:port`` (TLS, ``root_cert_pem`` required) or
    ``http://host:port`` (plaintext: tests and 15010 only); see the module docstring."""

    address: str
    root_cert_pem: bytes | None = None
    server_name: str = ""  # TLS name to verify when it differs from the host in ``address``
    token: str = ""  # literal token, or a path (re-read on every connect)
    cluster_id: str = "Kubernetes"
    headers: Mapping[str, str] = field(default_factory=dict)
    keepalive_s: float = 30.0
    keepalive_timeout_s: float = 10.0
    initial_backoff_s: float = 0.01
    max_backoff_s: float = 15.0
    plaintext_token: bool = False  # send the token over an http:// address too (loopback tests only)

    @property
    def target(self) -> str:
        """The gRPC target ``host:port`` (the address without its scheme)."""
        return self.address.partition("://")[2].rstrip("/") if "://" in self.address else self.address

    @property
    def tls(self) -> bool:
        scheme = self.address.partition("://")[0] if "://" in self.address else "https"
        if scheme not in ("http", "https"):
            raise ValueError(f"xDS address {self.address!r}: scheme must be https:// or http://")
        return scheme == "https"


def _read_token(token: str) -> str:
    if not token:
        return ""
    path = Path(token)
    with contextlib.suppress(OSError, ValueError):
        if path.is_file():
            return path.read_text().strip()
    return token


def _grpc_call_tasks() -> set[asyncio.Task[Any]]:
    """grpc.aio's per-call helper tasks (e.g. the one that receives the status)."""
    return {t for t in asyncio.all_tasks() if not t.done() and _qualname(t).startswith("_AioCall.")}


def _qualname(task: asyncio.Task[Any]) -> str:
    return str(getattr(task.get_coro(), "__qualname__", ""))


async def _finish(call: Any, before: set[asyncio.Task[Any]]) -> None:
    """Cancel the call if still open and wait until gRPC has settled it, including its internal helper tasks,
    so nothing of this stream outlives it (even while we are being cancelled ourselves)."""
    if not call.done():
        call.cancel()
    with contextlib.suppress(Exception):
        await call.code()
    helpers = _grpc_call_tasks() - before
    if helpers:
        await asyncio.wait(helpers, timeout=1.0)


class XdsClient:
    """Keeps one delta ADS stream open and feeds :class:`ClientCore`; see the module docstring."""

    def __init__(
        self, config: XdsClientConfig, core: ClientCore, metrics: XdsClientMetrics | None = None
    ) -> None:
        if config.tls and config.root_cert_pem is None:
            raise ValueError(
                f"xDS address {config.address!r} is TLS but no root certificate was given: pass "
                "root_cert_pem (the mesh root), or use an http:// address for plaintext"
            )
        self.config = config
        self.core = core
        self.metrics = metrics
        self.synced = asyncio.Event()
        self.connected = asyncio.Event()
        self.ended = asyncio.Event()  # set each time a stream (or connection attempt) ends
        self.last_error = ""
        self.connections = 0
        self._call: Any = None
        self._write_lock = asyncio.Lock()

    def metadata(self) -> list[tuple[str, str]]:
        token = _read_token(self.config.token or os.environ.get("AUTH_TOKEN", ""))
        out = [(k.lower(), v) for k, v in self.config.headers.items()]
        if token and (self.config.tls or self.config.plaintext_token):
            out += [("authorization", f"Bearer {token}"), ("clusterid", self.config.cluster_id)]
        return out

    def _channel(self) -> grpc.aio.Channel:
        options: list[tuple[str, Any]] = [
            ("grpc.keepalive_time_ms", int(self.config.keepalive_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(self.config.keepalive_timeout_s * 1000)),
            ("grpc.http2.max_pings_without_data", 0),  # keep pinging an idle stream, as ztunnel does
            ("grpc.max_receive_message_length", _MAX_MESSAGE),
            ("grpc.enable_retries", 0),
        ]
        if not self.config.tls:  # an explicit http:// address, nothing else (module docstring)
            return grpc.aio.insecure_channel(self.config.target, options=options)
        if self.config.server_name:
            options.append(("grpc.ssl_target_name_override", self.config.server_name))
        creds = grpc.ssl_channel_credentials(root_certificates=self.config.root_cert_pem)
        return grpc.aio.secure_channel(self.config.target, creds, options=options)

    async def run(self) -> None:
        """Connect, stream, reconnect; returns only when cancelled."""
        backoff = self.config.initial_backoff_s
        while True:
            delay, got_response = await self._connect_once(backoff)
            backoff = (
                self.config.initial_backoff_s if got_response else min(backoff * 2, self.config.max_backoff_s)
            )
            if delay:
                await asyncio.sleep(delay)

    async def _connect_once(self, backoff: float) -> tuple[float, bool]:
        state = {"responses": 0}
        reason, delay = "clean end", 0.0
        async with self._channel() as channel:
            try:
                await self._stream(channel, state)
            except grpc.aio.AioRpcError as exc:
                reason, delay = self._classify(exc, backoff)
            except (OSError, ConnectionError) as exc:
                reason, delay = f"{type(exc).__name__}: {exc}", backoff
            finally:
                self._call = None
                self.connected.clear()
        if self.metrics:
            self.metrics.terminations.labels(reason=reason.split(":")[0]).inc()
        self.last_error = reason
        self.ended.set()
        log.info("xds stream ended; reconnecting", extra=kv(reason=reason, retry_in_s=round(delay, 3)))
        return delay, state["responses"] > 0

    def _classify(self, exc: grpc.aio.AioRpcError, backoff: float) -> tuple[str, float]:
        code, details = exc.code(), exc.details() or ""
        reason = f"{code.name}: {details}"
        goaway = code == grpc.StatusCode.UNAVAILABLE and (
            "goaway" in details or "transport is closing" in details
        )
        if code in _FAST_RETRY_CODES or goaway:
            return reason, 0.01
        return reason, backoff

    async def _stream(self, channel: grpc.aio.Channel, state: dict[str, int]) -> None:
        method = channel.stream_stream(
            DELTA_METHOD,
            request_serializer=discovery_pb2.DeltaDiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DeltaDiscoveryResponse.FromString,
        )
        before = _grpc_call_tasks()
        call = method(metadata=self.metadata())  # type: ignore[call-arg]  # grpc-stubs lack the aio form
        self._call = call
        self.connections += 1
        try:
            await self._pump(call, state)
        finally:
            await _finish(call, before)

    async def _pump(self, call: Any, state: dict[str, int]) -> None:
        for req in self.core.initial_requests():
            await self._write(req)
        self.connected.set()
        while True:
            item = await call.read()
            if item is grpc.aio.EOF:  # type: ignore[attr-defined]
                return
            assert isinstance(item, discovery_pb2.DeltaDiscoveryResponse)
            resp = item
            state["responses"] += 1
            self._observe(resp)
            ack = self.core.handle(resp)
            if ack.HasField("error_detail"):
                log.warning("xds NACK", extra=kv(type_url=resp.type_url, nonce=resp.nonce,
                                                  error=ack.error_detail.message))  # fmt: skip
            await self._write(ack)
            if self.core.synced and not self.synced.is_set():
                self.synced.set()

    def _observe(self, resp: discovery_pb2.DeltaDiscoveryResponse) -> None:
        if self.metrics:
            url = short_type(resp.type_url)
            self.metrics.messages.labels(url=url).inc()
            self.metrics.message_bytes.labels(url=url).inc(resp.ByteSize())

    async def _write(self, req: discovery_pb2.DeltaDiscoveryRequest) -> None:
        async with self._write_lock:
            await self._call.write(req)

    async def request(self, key: str) -> bool:
        """Ask for one Address on demand (``<network>/<ip>``, a uid or ``ns/hostname``); False if offline."""
        req = self.core.on_demand_request(key)
        if self._call is None:
            return False
        await self._write(req)
        return True
