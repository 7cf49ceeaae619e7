"""A small gRPC client over our own h2 (HTTP/2) stack, for ztunnel's two control-plane calls: the delta xDS
stream and the CA's CreateCertificate.

Why: a grpcio channel costs ztunnel ~6 MB of RSS and 7 threads at run time (measured), and the budget with
1,000 workloads is 64 MB. gRPC over HTTP/2 is simple for our needs: one TLS connection (ALPN ``h2``, verified
against the mesh root, SNI = the target host), requests as HEADERS (``:method POST``, ``content-type:
application/grpc``, ``te: trailers``) plus length-prefixed messages (1 byte compressed flag, 4 bytes length),
the status in the trailers (``grpc-status``, ``grpc-message``). No compression, no retries; callers reconnect.

:class:`Channel` is one connection (``await Channel.open(address, root_pem)``); :meth:`Channel.unary` does one
call; :meth:`Channel.stream` opens a bidirectional :class:`Call` (``send``, ``recv`` -> message bytes or None
at a clean end). Errors: :class:`GrpcError` with ``code`` (gRPC status number; 14 UNAVAILABLE for transport
failures).

TLS or not comes from the address scheme only (wire-contracts §3.1): ``https://host:port`` and a bare
``host:port`` are TLS, verified against the root (:func:`read_root`: a PEM file, inline PEM, or ``SYSTEM``
for the OS trust store; an empty root is a :class:`ConfigError`, never a silent downgrade); ``http://`` is
plaintext, for tests and istiod's 15010 only. Over plaintext a channel never sends an ``authorization``
header (the bearer token is what lets a node proxy obtain any local workload's certificate; upstream is
TLS-only and has no such case), so a plaintext istiod sees an anonymous client.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

__all__ = [
    "SYSTEM_ROOTS",
    "UNAVAILABLE",
    "Call",
    "Channel",
    "ConfigError",
    "GrpcError",
    "parse_address",
    "read_root",
    "require_root",
]

UNAVAILABLE = 14
MAX_MESSAGE = 200 * 1024 * 1024
WINDOW = 16 * 1024 * 1024
#: HTTP/2 PING keepalive, as grpcio's channel options of meshkit.xds (30 s, dropped after 10 s unanswered).
KEEPALIVE_S = 30.0
KEEPALIVE_TIMEOUT_S = 10.0


#: A root setting naming the OS trust store instead of a mesh root (as upstream's ``XDS_ROOT_CA=SYSTEM``).
SYSTEM_ROOTS = "SYSTEM"


class ConfigError(ValueError):
    """An address/root combination we refuse to connect with (the message names the variables to fix)."""


def parse_address(address: str) -> tuple[str, bool]:
    """``(host:port, tls)``: ``http://`` is plaintext; ``https://`` and no scheme (https is prepended, as
    upstream does) are TLS. Any other scheme is a :class:`ConfigError`."""
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "https", address
    if scheme not in ("http", "https"):
        raise ConfigError(f"address {address!r}: scheme must be https:// (or http:// for plaintext)")
    return rest.rstrip("/"), scheme == "https"


def require_root(value: str, variable: str, address: str) -> None:
    """A :class:`ConfigError` when the root setting for a TLS address is empty (checked at start-up)."""
    if not value:
        raise ConfigError(
            f"{variable} is empty but {address!r} is TLS: set {variable} to the root certificate "
            f"(file, inline PEM or {SYSTEM_ROOTS}), or use an http:// address for plaintext"
        )


def read_root(value: str, variable: str, address: str) -> bytes | None:
    """The root verifying a TLS server, from a setting such as ``XDS_ROOT_CA``: inline PEM, a PEM file, or
    :data:`SYSTEM_ROOTS` (returns None: the OS trust store). Empty or a missing file is a :class:`ConfigError`
    (an https address with no usable root must fail, not fall back to plaintext)."""
    require_root(value, variable, address)
    if value == SYSTEM_ROOTS:
        return None
    if "-----BEGIN" in value:
        return value.encode()
    try:
        return Path(value).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{variable}={value}: cannot read the root certificate: {exc.strerror}") from None


class GrpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"gRPC status {code}: {message}")
        self.code = code
        self.message = message


class Call:
    """One gRPC call on a :class:`Channel`: messages in, messages out, trailers at the end."""

    def __init__(self, channel: Channel, stream_id: int) -> None:
        self.channel = channel
        self.stream_id = stream_id
        self._buf = bytearray()
        self._messages: asyncio.Queue[bytes | GrpcError | None] = asyncio.Queue()
        self._send_ready = asyncio.Event()
        self.done = False

    def _data(self, data: bytes) -> None:
        self._buf += data
        while len(self._buf) >= 5:
            flag, length = struct.unpack_from("!BI", self._buf)
            if length > MAX_MESSAGE:
                self._end(GrpcError(8, f"message of {length} bytes is too large"))
                return
            if len(self._buf) < 5 + length:
                return
            if flag:
                self._end(GrpcError(12, "compressed messages are not supported"))
                return
            self._messages.put_nowait(bytes(self._buf[5 : 5 + length]))
            del self._buf[: 5 + length]

    def _end(self, outcome: GrpcError | None) -> None:
        if not self.done:
            self.done = True
            self._messages.put_nowait(outcome)
            self._send_ready.set()

    async def send(self, message: bytes, end: bool = False) -> None:
        await self.channel._send(self, struct.pack("!BI", 0, len(message)) + message, end)

    async def recv(self) -> bytes | None:
        """The next message; None when the server ended the call with status OK; raises :class:`GrpcError`."""
        item = await self._messages.get()
        if isinstance(item, GrpcError):
            self._messages.put_nowait(item)  # later calls see the same error
            raise item
        if item is None:
            self._messages.put_nowait(None)
        return item

    def cancel(self) -> None:
        self.channel._reset(self)


class Channel(asyncio.Protocol):
    """One HTTP/2 connection to a gRPC server."""

    def __init__(self, authority: str, tls: bool = True) -> None:
        self.authority = authority
        self.tls = tls
        self.scheme = "https" if tls else "http"
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.calls: dict[int, Call] = {}
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.Event()
        self.error: GrpcError | None = None
        self._ping_timer: asyncio.TimerHandle | None = None
        self._ping_deadline: asyncio.TimerHandle | None = None

    @classmethod
    async def open(
        cls, address: str, root_pem: bytes | None = None, server_name: str = "", timeout_s: float = 10.0
    ) -> Channel:
        """Connect to ``address`` (see :func:`parse_address`). TLS is verified by ``root_pem``, or by the OS
        trust store when it is None; only an ``http://`` address is plaintext (``root_pem`` unused)."""
        target, tls = parse_address(address)
        host, _, port = target.rpartition(":")
        host = host.strip("[]")
        ctx = None
        if tls:
            ctx = ssl.create_default_context(cadata=root_pem.decode() if root_pem is not None else None)
            # the server name must be in a SAN: no fall-back to the subject CN (RFC 6125; upstream's rustls
            # never looks at the CN either)
            ctx.hostname_checks_common_name = False
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3  # wire-contracts §3.1: TLS 1.3 only
            ctx.set_alpn_protocols(["h2"])
        loop = asyncio.get_running_loop()
        _, channel = await asyncio.wait_for(
            loop.create_connection(
                lambda: cls(target, tls=ctx is not None),
                host,
                int(port),
                ssl=ctx,
                server_hostname=(server_name or host) if ctx else None,
            ),
            timeout_s,
        )
        return channel

    # -- transport callbacks ----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a cast, not an isinstance check: uvloop's transports (python -m ztunnel runs on uvloop) are not
        # asyncio.Transport subclasses, so such an assert fails whenever asserts are on
        self.transport = cast(asyncio.Transport, transport)
        self.h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
            },
        )
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(WINDOW - 65535)
        self._flush()
        self._schedule_ping()

    def _schedule_ping(self) -> None:
        self._ping_timer = asyncio.get_running_loop().call_later(KEEPALIVE_S, self._ping)

    def _ping(self) -> None:
        if self.error is not None:
            return
        self.h2.ping(b"ztunnel!")
        self._flush()
        self._ping_deadline = asyncio.get_running_loop().call_later(
            KEEPALIVE_TIMEOUT_S, self._fail, GrpcError(UNAVAILABLE, "keepalive ping not answered")
        )

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._fail(GrpcError(UNAVAILABLE, f"HTTP/2 protocol error: {exc}"))
            return
        for event in events:
            self._event(event)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(GrpcError(UNAVAILABLE, f"connection lost: {exc or 'EOF'}"))

    # -- events -------------------------------------------------------------------------------------------
    def _event(self, event: h2.events.Event) -> None:
        call = self.calls.get(getattr(event, "stream_id", 0) or 0)
        if isinstance(event, h2.events.DataReceived):
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if call is not None:
                call._data(event.data)
        elif isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived) and call is not None:
            self._headers(call, dict(event.headers))  # type: ignore[arg-type]
        elif isinstance(event, h2.events.StreamEnded) and call is not None:
            self._finish(call, None)
        elif isinstance(event, h2.events.StreamReset) and call is not None:
            self._finish(call, GrpcError(UNAVAILABLE, f"stream reset (HTTP/2 code {event.error_code})"))
        elif isinstance(event, h2.events.WindowUpdated):
            for c in self.calls.values():
                c._send_ready.set()
        elif isinstance(event, h2.events.PingAckReceived):
            if self._ping_deadline is not None:
                self._ping_deadline.cancel()
                self._ping_deadline = None
                self._schedule_ping()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._fail(GrpcError(UNAVAILABLE, f"GOAWAY (HTTP/2 code {event.error_code})"))

    def _headers(self, call: Call, headers: dict[str, str]) -> None:
        status = headers.get(":status")
        if status is not None and status != "200":
            self._finish(call, GrpcError(UNAVAILABLE, f"HTTP status {status}"))
        elif "grpc-status" in headers:
            code = int(headers["grpc-status"])
            self._finish(call, GrpcError(code, headers.get("grpc-message", "")) if code else None)

    def _finish(self, call: Call, outcome: GrpcError | None) -> None:
        call._end(outcome)
        self.calls.pop(call.stream_id, None)

    def _fail(self, error: GrpcError) -> None:
        self.error = self.error or error
        for timer in (self._ping_timer, self._ping_deadline):
            if timer is not None:
                timer.cancel()
        for call in list(self.calls.values()):
            self._finish(call, error)
        self.closed.set()
        if self.transport is not None:
            self.transport.abort()

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    # -- calls --------------------------------------------------------------------------------------------
    def stream(self, path: str, metadata: Sequence[tuple[str, str]] = ()) -> Call:
        if self.error is not None:
            raise self.error
        if not self.tls:  # never a bearer token in the clear (module docstring)
            metadata = [(k, v) for k, v in metadata if k.lower() != "authorization"]
        stream_id = self.h2.get_next_available_stream_id()
        headers = [
            (":method", "POST"), (":scheme", self.scheme), (":path", path), (":authority", self.authority),
            ("content-type", "application/grpc"), ("te", "trailers"), *metadata,
        ]  # fmt: skip
        self.h2.send_headers(stream_id, headers)
        self._flush()
        call = Call(self, stream_id)
        self.calls[stream_id] = call
        return call

    async def unary(
        self, path: str, request: bytes, metadata: Sequence[tuple[str, str]] = (), timeout_s: float = 10.0
    ) -> bytes:
        call = self.stream(path, metadata)
        try:
            async with asyncio.timeout(timeout_s):
                await call.send(request, end=True)
                reply = await call.recv()
                if reply is None:
                    raise GrpcError(13, "no response message")
                await call.recv()  # the trailers: raises on a non-OK status
                return reply
        except TimeoutError:
            call.cancel()
            raise GrpcError(4, f"deadline of {timeout_s}s exceeded") from None

    async def _send(self, call: Call, data: bytes, end: bool) -> None:
        view = memoryview(data)
        while True:
            if call.done:
                raise self.error or GrpcError(UNAVAILABLE, "call already ended")
            window = min(self.h2.local_flow_control_window(call.stream_id), self.h2.max_outbound_frame_size)
            n = min(window, len(view))
            if n or not view:
                self.h2.send_data(call.stream_id, bytes(view[:n]), end_stream=end and n == len(view))
                self._flush()
                view = view[n:]
                if not view:
                    return
            call._send_ready.clear()
            await call._send_ready.wait()

    def _reset(self, call: Call) -> None:
        if call.stream_id in self.calls:
            with contextlib.suppress(h2.exceptions.ProtocolError, KeyError):
                self.h2.reset_stream(call.stream_id)
                self._flush()
            self._finish(call, GrpcError(1, "cancelled"))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.close_connection()
                self._flush()
            self.transport.close()
        self._fail(GrpcError(UNAVAILABLE, "channel closed"))
