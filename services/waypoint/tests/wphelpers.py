"""Test harness for the waypoint: a test CA, backend "pods" behind HBONE, an HBONE client playing ztunnel.

Backends are HBONE servers on loopback that terminate the CONNECT and answer HTTP/1.1 themselves (an echo
app), so a whole request path runs in one process on 127.0.0.1 with real TLS 1.3 and HTTP/2. A connector
maps the endpoint address in the config (``10.79.x.y:15008``) to the backend's real loopback port, the
way the connector is the only thing that differs between a test and a pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
from meshkit.hbone.errors import HboneError
from meshkit.hbone.pool import ConnectionPool, PoolKey, host_connector
from meshkit.hbone.request import SourceMetadata, connect_headers
from meshkit.hbone.server import Accept, HboneServer, InboundPeer
from meshkit.hbone.stream import HboneStream
from meshkit.hbone.testing import TestCA
from meshkit.identity.certs import WorkloadCertificate
from meshkit.identity.spiffe import Identity
from meshkit.sockets import HostSocketFactory
from waypoint.http1 import (
    BadMessage,
    Request,
    RequestParser,
    Response,
    ResponseParser,
    serialize_request,
    serialize_response,
)
from waypoint.tlsstream import TlsStream

TD = "cluster.local"
CLIENT_ID = Identity(TD, "default", "sleep")
WAYPOINT_ID = Identity(TD, "default", "waypoint")


class Fetcher:
    """CertificateFetcher backed by a TestCA."""

    def __init__(self, ca: TestCA) -> None:
        self.ca = ca

    async def fetch(self, identity: Identity) -> WorkloadCertificate:
        return self.ca.issue(identity)


@dataclass
class Backend:
    """An echo app behind its own HBONE server; ``status`` lets a test make it fail."""

    name: str
    identity: Identity
    status: int = 200
    requests: list[Request] = field(default_factory=list)
    server: HboneServer | None = None
    _seen: dict[str, asyncio.Event] = field(default_factory=dict)

    async def arrived(self, path: str) -> None:
        """Return once a request for ``path`` has reached this backend."""
        await self._seen.setdefault(path, asyncio.Event()).wait()

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.address[1]

    tls: ssl.SSLContext | None = None  # the app itself speaks TLS (inside the tunnel)

    async def serve(self, stream: HboneStream) -> None:
        with contextlib.suppress(HboneError, BadMessage, ssl.SSLError):
            if self.tls is not None:
                wrapped = TlsStream(stream, self.tls, server_side=True)
                await wrapped.handshake()
                await self._serve(wrapped)  # type: ignore[arg-type]
                return
            await self._serve(stream)

    async def _serve(self, stream: HboneStream) -> None:
        parser = RequestParser()
        first = await stream.read()
        if first.startswith(b"PRI"):
            await self._serve_h2(stream, first)
            return
        data = first
        while data:
            if not data[:1].isupper():  # not HTTP: a TCP echo
                stream.write(f"{self.name}:".encode() + data)
                data = await stream.read()
                continue
            for req in parser.feed(data):
                self.requests.append(req)
                self._seen.setdefault(req.path, asyncio.Event()).set()
                if req.upgrade:  # a WebSocket-style upgrade: 101, a greeting, then echo raw bytes
                    stream.write(
                        b"HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\n"
                        b"upgrade: websocket\r\n\r\nhello;"
                    )
                    if parser.leftover:
                        stream.write(b"echo:" + parser.leftover)
                    while chunk := await stream.read():
                        stream.write(b"echo:" + chunk)
                    stream.write_eof()
                    return
                if "delay" in req.query:
                    await asyncio.sleep(2)
                if self.name == "authz":  # an ext_authz server: allow only with x-allow: yes
                    ok = req.header("x-allow") == "yes"
                    body = b"" if ok else b"denied by ext authz"
                    stream.write(serialize_response(Response(200 if ok else 403, [("x-ext", "1")], body)))
                    continue
                body = f"backend={self.name} path={req.target}\n".encode()
                headers = [("x-backend", self.name)]
                for name in ("traceparent", "x-request-id", "x-added"):
                    if (value := req.header(name)) is not None:
                        headers.append((f"echo-{name}", value))
                stream.write(serialize_response(Response(self.status, headers, body)))
            data = await stream.read()
        stream.write_eof()

    async def _serve_h2(self, stream: HboneStream, first: bytes) -> None:
        """A gRPC-ish echo over h2c: echoes the body, answers grpc-status 0 in trailers."""
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        conn.initiate_connection()
        bodies: dict[int, bytes] = {}
        paths: dict[int, str] = {}
        data = first
        while data:
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.RequestReceived):
                    paths[ev.stream_id] = dict(ev.headers)[":path"]
                    bodies[ev.stream_id] = b""
                elif isinstance(ev, h2.events.DataReceived):
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    bodies[ev.stream_id] += ev.data
                elif isinstance(ev, h2.events.StreamEnded):
                    self.requests.append(Request("POST", paths[ev.stream_id], "", [], bodies[ev.stream_id]))
                    conn.send_headers(
                        ev.stream_id,
                        [(":status", "200"), ("content-type", "application/grpc"), ("x-backend", self.name)],
                    )
                    conn.send_data(ev.stream_id, bodies[ev.stream_id])
                    conn.send_headers(ev.stream_id, [("grpc-status", "0")], end_stream=True)
            stream.write(conn.data_to_send())
            data = await stream.read()
        stream.write_eof()


async def start_backend(ca: TestCA, name: str, identity: Identity, status: int = 200) -> Backend:
    backend = Backend(name, identity, status)
    cert = ca.issue(identity)

    async def handler(_peer: InboundPeer, _req: object) -> Accept:
        return Accept(backend.serve)

    sock = HostSocketFactory().listen_tcp("127.0.0.1", 0)
    backend.server = HboneServer(sock, lambda: cert, handler, name=f"backend-{name}")  # type: ignore[arg-type]
    await backend.server.start()
    return backend


def mapping_connector(ports: Callable[[], dict[str, int]]):  # type: ignore[no-untyped-def]
    """Dial 127.0.0.1:<port of the backend whose config address is key.dst[0]>."""

    async def connect(key: PoolKey) -> socket.socket:
        port = ports().get(key.dst[0])
        if port is None:
            raise ConnectionRefusedError(f"no backend at {key.dst[0]}")
        return await host_connector()(
            PoolKey(key.src_identity, key.src_ip, key.dst_identities, ("127.0.0.1", port))
        )

    return connect


class MeshClient:
    """Plays the source ztunnel: HBONE to the waypoint with the client's identity, HTTP/1.1 inside."""

    def __init__(self, ca: TestCA, waypoint: tuple[str, int]) -> None:
        cert = ca.issue(CLIENT_ID)
        self.waypoint = waypoint
        self.pool = ConnectionPool(lambda _i: cert, name="test-client")

    async def open(self, authority: str) -> HboneStream:
        key = PoolKey.of(CLIENT_ID, "127.0.0.1", [WAYPOINT_ID], self.waypoint)
        meta = SourceMetadata(
            namespace="default",
            workload_name="sleep",
            canonical_name="sleep",
            canonical_revision="v1",
            cluster_id="Kubernetes",
        )
        return await self.pool.connect(key, authority, connect_headers(meta, ("10.79.0.5", 40000)))

    async def request(self, stream: HboneStream, req: Request) -> Response:
        stream.write(serialize_request(req))
        parser = ResponseParser(head_only=req.method == "HEAD")
        while True:
            data = await asyncio.wait_for(stream.read(), 10)
            if not data:
                raise EOFError("waypoint closed the tunnel")
            done = parser.feed(data)
            if done:
                return done[0]

    async def close(self) -> None:
        await self.pool.close()


def get(
    path: str, host: str = "reviews", headers: list[tuple[str, str]] | None = None, method: str = "GET"
) -> Request:
    p, _, q = path.partition("?")
    return Request(method, p, q, [("host", host), *(headers or [])])


async def h2c_call(
    stream: HboneStream, path: str, body: bytes, headers: list[tuple[str, str]] | None = None
) -> tuple[dict[str, str], bytes, dict[str, str]]:
    """One gRPC-style call over h2c on ``stream``: (response headers, body, trailers)."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(
        sid,
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "reviews"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *(headers or []),
        ],
    )
    conn.send_data(sid, body, end_stream=True)
    stream.write(conn.data_to_send())
    resp: dict[str, str] = {}
    trailers: dict[str, str] = {}
    out = b""
    while True:
        data = await asyncio.wait_for(stream.read(), 10)
        if not data:
            raise EOFError("h2c tunnel closed")
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                resp = dict(ev.headers)
            elif isinstance(ev, h2.events.DataReceived):
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                out += ev.data
            elif isinstance(ev, h2.events.TrailersReceived):
                trailers = dict(ev.headers)
            elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
                stream.write(conn.data_to_send())
                return resp, out, trailers
        stream.write(conn.data_to_send())


def server_tls(ca: TestCA, identity: Identity) -> ssl.SSLContext:
    """A TLS server context with a leaf from ``ca`` (for an app that terminates TLS itself)."""
    cert = ca.issue(identity)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.NamedTemporaryFile() as chain, tempfile.NamedTemporaryFile() as key:
        chain.write(cert.chain_pem)
        key.write(cert.private_key_pem)
        chain.flush()
        key.flush()
        ctx.load_cert_chain(chain.name, key.name)
    return ctx
