"""Echo server. Each ``--port`` speaks HTTP/1.1 and h2c (prior knowledge, sniffed from the client preface)
with
gRPC on the same HTTP/2 connection; ``--grpc`` ports are the same handler; ``--tcp`` ports echo raw bytes and
append the ``Key=Value`` fields; ``--server-first`` TCP ports greet first.

HTTP replies carry ``StatusCode``, ``ServiceVersion``, ``ServicePort``, ``Host``, ``URL``, ``Cluster``,
``IstioVersion``, ``Namespace``, ``Method``, ``Proto``, ``IP`` (the peer address as the server saw it),
``Alpn``, one ``RequestHeader`` per header and ``Hostname``. Query parameters: ``delay=1s``,
``headers=name:value,...`` (added to the response), ``codes=500:90,200:10`` (weighted status codes).
``GET /_forward?url=...&count=N`` makes this pod the client (upstream's ForwardEcho) and returns the
``[n] Key=Value`` lines, so a test can drive traffic *from* a pod.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import datetime
import logging
import os
import random
import socket
import ssl
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import h2.config
import h2.connection
import h2.events

from meshtest.echo import grpcwire
from meshtest.echo.fields import render

log = logging.getLogger("meshtest.echo.server")
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: (ALPN, SNI) of the TLS connection the current handler serves; set per connection task
_TLS_INFO: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar("tls_info", default=("", ""))
_NS_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


@dataclass(frozen=True, slots=True)
class ServerConfig:
    version: str = "v1"
    cluster: str = ""
    istio_version: str = ""
    namespace: str = ""
    hostname: str = ""


def _namespace() -> str:
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    with contextlib.suppress(OSError):
        return _NS_FILE.read_text().strip()
    return ""


def _duration(text: str) -> float:
    text = text.strip()
    for suffix, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * scale
    return float(text)


def _choose_code(spec: str) -> int:
    choices, weights = [], []
    for part in spec.split(","):
        code, _, weight = part.partition(":")
        choices.append(int(code))
        weights.append(int(weight or "1"))
    return random.choices(choices, weights)[0]


class EchoServer:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.servers: list[asyncio.Server] = []

    def fields(
        self,
        port: int,
        peer: str,
        *,
        method: str,
        url: str,
        host: str,
        proto: str,
        headers: Iterable[tuple[str, str]],
        code: int,
        alpn: str = "",
    ) -> list[tuple[str, str]]:
        out = [
            ("StatusCode", str(code)),
            ("ServiceVersion", self.config.version),
            ("ServicePort", str(port)),
            ("Host", host),
            ("URL", url),
            ("Cluster", self.config.cluster),
            ("IstioVersion", self.config.istio_version),
            ("Namespace", self.config.namespace),
            ("Method", method),
            ("Proto", proto),
            ("Alpn", alpn),
            ("IP", peer),
        ]
        out += [("RequestHeader", f"{name}:{value}") for name, value in headers]
        out.append(("Hostname", self.config.hostname))
        return out

    # -- HTTP semantics shared by HTTP/1.1 and HTTP/2
    # ---------------------------------------------------------
    async def http_reply(
        self, port: int, peer: str, *, method: str, target: str, headers: list[tuple[str, str]], proto: str
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        parts = urlsplit(target)
        query = parse_qs(parts.query)
        if parts.path == "/_forward":
            from meshtest.echo.client import forward_text

            text = await forward_text(query)
            return 200, [("content-type", "application/text")], text.encode()
        if "delay" in query:
            await asyncio.sleep(_duration(query["delay"][0]))
        code = _choose_code(query["codes"][0]) if "codes" in query else 200
        extra = []
        for item in ",".join(query.get("headers", [])).split(","):
            name, sep, value = item.partition(":")
            if sep:
                extra.append((unquote(name), unquote(value)))
        host = next((v for k, v in headers if k.lower() in ("host", ":authority")), "")
        visible = [(k, v) for k, v in headers if not k.startswith(":")]
        alpn, sni = _TLS_INFO.get()
        fields = self.fields(
            port,
            peer,
            method=method,
            url=target,
            host=host,
            proto=proto,
            headers=visible,
            code=code,
            alpn=alpn,
        )
        if sni:
            fields.insert(-1, ("Sni", sni))
        body = render(fields)
        return code, [("content-type", "application/text"), *extra], body.encode()

    # -- listeners -------------------------------------------------------------------------------------------
    async def listen(
        self, port: int, kind: str, bind: str = "0.0.0.0", tls: ssl.SSLContext | None = None
    ) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            tls_object = writer.get_extra_info("ssl_object")
            if tls_object is not None:
                _TLS_INFO.set((tls_object.selected_alpn_protocol() or "", _SNI.pop(id(tls_object), "")))
            try:
                if kind in {"tcp", "tcp-server-first"}:
                    await self._tcp(port, reader, writer, server_first=kind == "tcp-server-first")
                else:
                    await self._http(port, reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            except Exception:
                log.exception("connection on port %d failed", port)
            finally:
                writer.close()

        family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        server = await asyncio.start_server(handle, bind, port, family=family, reuse_address=True, ssl=tls)
        self.servers.append(server)
        bound = int(server.sockets[0].getsockname()[1])
        log.info("listening %s on %s:%d", kind, bind, bound)
        return bound

    async def _tcp(
        self, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, server_first: bool
    ) -> None:
        peer = writer.get_extra_info("peername")[0]
        if server_first:
            writer.write(b"server-first-protocol\n")
            await writer.drain()
        while data := await reader.read(65536):
            fields = [
                ("StatusCode", "200"),
                ("ServiceVersion", self.config.version),
                ("ServicePort", str(port)),
                ("Cluster", self.config.cluster),
                ("IstioVersion", self.config.istio_version),
                ("Namespace", self.config.namespace),
                ("IP", peer),
                ("Proto", "TCP"),
                ("Hostname", self.config.hostname),
            ]
            writer.write(data + render(fields).encode())
            await writer.drain()

    async def _http(self, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")[0]
        head = await reader.read(len(H2_PREFACE))
        while head and H2_PREFACE.startswith(head) and len(head) < len(H2_PREFACE):
            more = await reader.read(len(H2_PREFACE) - len(head))
            if not more:
                return
            head += more
        if head == H2_PREFACE:
            await H2Session(self, port, peer, reader, writer).run(head)
        elif head:
            await self._http1(port, peer, head, reader, writer)

    async def _http1(
        self, port: int, peer: str, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        buffer = head
        while True:
            while b"\r\n\r\n" not in buffer:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                buffer += chunk
            raw, _, buffer = buffer.partition(b"\r\n\r\n")
            lines = raw.decode("latin-1").split("\r\n")
            method, target, version = ([*lines[0].split(" ", 2), "", ""])[:3]
            headers = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:]) if k]
            length = int(next((v for k, v in headers if k.lower() == "content-length"), "0") or 0)
            while len(buffer) < length:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                buffer += chunk
            buffer = buffer[length:]
            code, out_headers, body = await self.http_reply(
                port, peer, method=method, target=target, headers=headers, proto=version or "HTTP/1.1"
            )
            response = [f"HTTP/1.1 {code} {_REASONS.get(code, 'Status')}", f"Content-Length: {len(body)}"]
            response += [f"{k}: {v}" for k, v in out_headers]
            writer.write(("\r\n".join(response) + "\r\n\r\n").encode() + body)
            await writer.drain()
            if any(k.lower() == "connection" and v.lower() == "close" for k, v in headers):
                return

    async def close(self) -> None:
        for server in self.servers:
            server.close()
        for server in self.servers:
            await server.wait_closed()


_REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


_SNI: dict[int, str] = {}


def tls_context(cert: str | None, key: str | None, hostname: str) -> ssl.SSLContext:
    """Server TLS: the given certificate, or a fresh self-signed one for ``hostname``; ALPN h2, http/1.1."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    if cert and key:
        ctx.load_cert_chain(cert, key)
    else:
        # ssl loads chains from files only: write them where nothing outlives the load
        cert_pem, key_pem = _self_signed(hostname)
        with tempfile.TemporaryDirectory(prefix="echo-tls-") as directory:
            (Path(directory) / "tls.crt").write_bytes(cert_pem)
            (Path(directory) / "tls.key").write_bytes(key_pem)
            ctx.load_cert_chain(Path(directory) / "tls.crt", Path(directory) / "tls.key")
    ctx.set_alpn_protocols(["h2", "http/1.1"])

    def remember_sni(tls_object: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        _SNI[id(tls_object)] = name or ""

    ctx.sni_callback = remember_sni
    return ctx


def _self_signed(hostname: str) -> tuple[bytes, bytes]:
    """(certificate, key) in PEM for ``hostname``, valid for 30 days."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname or "echo")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname or "echo")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


class H2Session:
    """One HTTP/2 connection (h2c prior knowledge): plain requests and gRPC Echo."""

    def __init__(
        self,
        server: EchoServer,
        port: int,
        peer: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.server, self.port, self.peer = server, port, peer
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        )
        self.requests: dict[int, tuple[list[tuple[str, str]], bytearray]] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self, first: bytes) -> None:
        self.conn.initiate_connection()
        data = first
        try:
            while data:
                for event in self.conn.receive_data(data):
                    self._event(event)
                self.writer.write(self.conn.data_to_send())
                await self.writer.drain()
                data = await self.reader.read(65536)
        finally:
            for task in self.tasks:
                task.cancel()

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            # a request without a body also yields StreamEnded, which dispatches it
            self.requests[event.stream_id] = ([(str(k), str(v)) for k, v in event.headers or []], bytearray())
        elif isinstance(event, h2.events.DataReceived):
            self.requests[event.stream_id][1].extend(event.data or b"")
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self._dispatch(event.stream_id)

    def _dispatch(self, stream_id: int) -> None:
        task = asyncio.get_running_loop().create_task(self._respond(stream_id))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _respond(self, stream_id: int) -> None:
        headers, body = self.requests.pop(stream_id)
        pseudo = dict(h for h in headers if h[0].startswith(":"))
        content_type = next((v for k, v in headers if k == "content-type"), "")
        if content_type.startswith("application/grpc"):
            await self._grpc(stream_id, pseudo.get(":path", ""), headers, bytes(body))
            return
        code, out_headers, payload = await self.server.http_reply(
            self.port,
            self.peer,
            method=pseudo.get(":method", ""),
            target=pseudo.get(":path", ""),
            headers=headers,
            proto="HTTP/2.0",
        )
        self.conn.send_headers(
            stream_id, [(":status", str(code)), ("content-length", str(len(payload))), *out_headers]
        )
        self.conn.send_data(stream_id, payload, end_stream=True)
        self.writer.write(self.conn.data_to_send())

    async def _grpc(self, stream_id: int, path: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.conn.send_headers(stream_id, [(":status", "200"), ("content-type", "application/grpc")])
        if path != grpcwire.ECHO_METHOD:
            trailers = [("grpc-status", "12"), ("grpc-message", f"unknown method {path}")]
        else:
            request = grpcwire.unframe(body)
            message = grpcwire.decode_message(request[0]) if request else ""
            host = next((v for k, v in headers if k == ":authority"), "")
            visible = [(k, v) for k, v in headers if not k.startswith(":")]
            fields = self.server.fields(
                self.port,
                self.peer,
                method="POST",
                url=path,
                host=host,
                proto="GRPC",
                headers=visible,
                code=200,
            )
            text = (f"Echo={message}\n" if message else "") + render(fields)
            self.conn.send_data(stream_id, grpcwire.frame(grpcwire.encode_message(text)))
            trailers = [("grpc-status", "0")]
        self.conn.send_headers(stream_id, trailers, end_stream=True)
        self.writer.write(self.conn.data_to_send())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="meshtest.echo server")
    p.add_argument("--port", type=int, action="append", default=[], help="HTTP/1.1 + h2c + gRPC port")
    p.add_argument("--grpc", type=int, action="append", default=[], help="gRPC (HTTP/2) port")
    p.add_argument("--tcp", type=int, action="append", default=[], help="raw TCP echo port")
    p.add_argument("--server-first", type=int, action="append", default=[], help="TCP port that greets first")
    p.add_argument("--tls", type=int, action="append", default=[], help="HTTPS port (ALPN h2 or http/1.1)")
    p.add_argument("--crt", default="", help="TLS certificate (default: self-signed for the hostname)")
    p.add_argument("--key", default="", help="TLS key")
    p.add_argument("--version", default=os.environ.get("SERVICE_VERSION", "v1"))
    p.add_argument("--cluster", default="")
    p.add_argument("--istio-version", default="")
    p.add_argument("--bind-ip", default="0.0.0.0")
    p.add_argument("--bind-localhost", action="store_true")
    return p


async def serve(args: argparse.Namespace, ready: asyncio.Event | None = None) -> EchoServer:
    config = ServerConfig(
        version=args.version,
        cluster=args.cluster,
        istio_version=args.istio_version,
        namespace=_namespace(),
        hostname=socket.gethostname(),
    )
    server = EchoServer(config)
    bind = "127.0.0.1" if args.bind_localhost else args.bind_ip
    ports = [(p, "http") for p in args.port or ([] if args.grpc or args.tcp or args.tls else [8080])]
    ports += [(p, "grpc") for p in args.grpc] + [(p, "tcp") for p in args.tcp]
    ports += [(p, "tcp-server-first") for p in args.server_first]
    for port, kind in ports:
        await server.listen(port, kind, bind)
    if args.tls:
        context = tls_context(args.crt, args.key, config.hostname)
        for port in args.tls:
            await server.listen(port, "http", bind, tls=context)
    if ready is not None:
        ready.set()
    return server


def main(argv: list[str]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args = parser().parse_args(argv)

    async def run() -> None:
        server = await serve(args)
        try:
            await asyncio.Event().wait()
        finally:
            await server.close()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())
