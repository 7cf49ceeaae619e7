"""Echo client: send N requests (``http://``, ``h2c://`` or ``--http2``, ``grpc://``, ``tcp://``) or hold one
connection open, and report every result as ``[n] Key=Value`` lines (``[n] Error=...`` on failure).

Used three ways: the ``client`` command of the echo image, the server's ``/_forward`` endpoint (the pod itself
makes the calls), and directly from tests via :func:`call`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import h2.config
import h2.connection
import h2.events

from meshtest.echo import grpcwire


@dataclass(frozen=True, slots=True)
class CallResult:
    index: int
    ok: bool
    text: str  # the Key=Value reply, or the error message

    def lines(self) -> str:
        if not self.ok:
            return f"[{self.index}] Error={self.text}\n"
        return "".join(f"[{self.index}] {line}\n" for line in self.text.splitlines())


class Conn:
    """One connection to the target; :meth:`request` sends one request on it."""

    def __init__(self, url: str, headers: Sequence[tuple[str, str]], http2: bool, message: str) -> None:
        parts = urlsplit(url)
        self.scheme = parts.scheme
        self.http2 = http2 or self.scheme in ("h2c", "grpc")
        self.host = parts.hostname or ""
        default_port = {"http": 80, "h2c": 80, "https": 443, "grpc": 7070, "tcp": 9090}.get(self.scheme, 80)
        self.port = parts.port or default_port
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.authority = parts.netloc
        self.headers = list(headers)
        self.message = message
        self.sni = ""
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.h2: h2.connection.H2Connection | None = None

    async def open(self) -> None:
        tls: ssl.SSLContext | None = None
        if self.scheme == "https":  # test traffic: no verification, ALPN as asked
            tls = ssl.create_default_context()
            tls.check_hostname = False
            tls.verify_mode = ssl.CERT_NONE
            tls.set_alpn_protocols(["h2"] if self.http2 else ["http/1.1"])
        self.reader, self.writer = await asyncio.open_connection(
            self.host, self.port, ssl=tls, server_hostname=(self.sni or self.host) if tls else None
        )
        if self.http2:
            self.h2 = h2.connection.H2Connection(
                h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
            )
            self.h2.initiate_connection()
            self.writer.write(self.h2.data_to_send())

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    async def request(self) -> str:
        if self.reader is None:
            await self.open()
        if self.scheme == "tcp":
            return await self._tcp()
        if self.http2:
            return await self._h2()
        return await self._http1()

    async def _tcp(self) -> str:
        assert self.reader is not None
        assert self.writer is not None
        payload = (self.message or "hello") + "\n"
        self.writer.write(payload.encode())
        await self.writer.drain()
        data = b""
        while b"Hostname=" not in data or not data.endswith(b"\n"):
            chunk = await self.reader.read(65536)
            if not chunk:
                raise ConnectionError("connection closed by peer")
            data += chunk
        text = data.decode(errors="replace")
        return text[len(payload) :] if text.startswith(payload) else text

    async def _http1(self) -> str:
        assert self.reader is not None
        assert self.writer is not None
        lines = [f"GET {self.path} HTTP/1.1", f"Host: {self.authority}", "User-Agent: meshtest-echo"]
        lines += [f"{k}: {v}" for k, v in self.headers]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        length = 0
        for line in header_lines:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        body = await self.reader.readexactly(length)
        code = status_line.split(" ")[1] if " " in status_line else "0"
        text = body.decode(errors="replace")
        return text if "StatusCode=" in text else f"StatusCode={code}\n{text}"

    async def _h2(self) -> str:
        assert self.reader is not None
        assert self.writer is not None
        assert self.h2 is not None
        conn = self.h2
        stream = conn.get_next_available_stream_id()
        grpc = self.scheme == "grpc"
        path = grpcwire.ECHO_METHOD if grpc else self.path
        headers = [
            (":method", "POST" if grpc else "GET"),
            (":scheme", "http"),
            (":authority", self.authority),
            (":path", path),
            ("user-agent", "meshtest-echo"),
            *self.headers,
        ]
        if grpc:
            headers += [("content-type", "application/grpc"), ("te", "trailers")]
            conn.send_headers(stream, headers)
            conn.send_data(stream, grpcwire.frame(grpcwire.encode_message(self.message)), end_stream=True)
        else:
            conn.send_headers(stream, headers, end_stream=True)
        self.writer.write(conn.data_to_send())
        status, body, trailers = "", bytearray(), {}
        done = False
        while not done:
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("connection closed by peer")
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream:
                    status = dict((str(k), str(v)) for k, v in event.headers or []).get(":status", "")
                elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream:
                    body.extend(event.data or b"")
                    conn.acknowledge_received_data(event.flow_controlled_length, stream)
                elif isinstance(event, h2.events.TrailersReceived) and event.stream_id == stream:
                    trailers = {str(k): str(v) for k, v in event.headers or []}
                elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
                    done = True
                elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream:
                    raise ConnectionError(f"stream reset, error code {event.error_code}")
            self.writer.write(conn.data_to_send())
        if grpc:
            if trailers.get("grpc-status", "0") != "0":
                raise ConnectionError(
                    f"grpc-status {trailers.get('grpc-status')}: {trailers.get('grpc-message')}"
                )
            messages = grpcwire.unframe(bytes(body))
            return grpcwire.decode_message(messages[0]) if messages else ""
        text = body.decode(errors="replace")
        return text if "StatusCode=" in text else f"StatusCode={status}\n{text}"


async def call(
    url: str,
    *,
    count: int = 1,
    headers: Sequence[tuple[str, str]] = (),
    http2: bool = False,
    request_timeout: float = 5.0,
    message: str = "",
    new_connection: bool = False,
    qps: float = 0.0,
    hold: float = 0.0,
) -> list[CallResult]:
    """Send ``count`` requests (reusing one connection unless ``new_connection``); with ``hold`` keep sending
    one request per second on the same connection for that many seconds instead."""
    results: list[CallResult] = []
    conn: Conn | None = None
    deadline = time.monotonic() + hold
    index = 0
    try:
        while index < count or (hold and time.monotonic() < deadline):
            if conn is None or new_connection:
                if conn is not None:
                    conn.close()
                conn = Conn(url, headers, http2, message)
            try:
                text = await asyncio.wait_for(conn.request(), request_timeout)
                results.append(CallResult(index, True, text))
            except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as err:
                results.append(CallResult(index, False, f"{type(err).__name__}: {err}"))
                conn.close()
                conn = None
            index += 1
            if hold:
                await asyncio.sleep(1.0)
            elif qps:
                await asyncio.sleep(1.0 / qps)
    finally:
        if conn is not None:
            conn.close()
    return results


async def forward_text(query: Mapping[str, list[str]]) -> str:
    """The server's ``/_forward`` endpoint: the query names the call (url, count, headers=k:v,..., http2)."""
    headers = []
    for item in ",".join(query.get("headers", [])).split(","):
        name, sep, value = item.partition(":")
        if sep:
            headers.append((name, value))
    results = await call(
        query["url"][0],
        count=int(query.get("count", ["1"])[0]),
        headers=headers,
        http2=query.get("http2", ["false"])[0] == "true",
        request_timeout=float(query.get("timeout", ["5"])[0]),
        message=query.get("message", [""])[0],
        new_connection=query.get("newConnection", ["false"])[0] == "true",
    )
    return "".join(r.lines() for r in results)


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(prog="meshtest.echo client")
    p.add_argument("url")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--header", "-H", action="append", default=[], help="name:value")
    p.add_argument("--http2", action="store_true")
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--message", default="")
    p.add_argument("--new-connection", action="store_true")
    p.add_argument("--qps", type=float, default=0.0)
    p.add_argument("--hold", type=float, default=0.0, help="keep one connection open this many seconds")
    p.add_argument("--forever", action="store_true", help="after the calls, stay running (a client pod)")
    args = p.parse_args(argv)
    headers = [(h.split(":", 1)[0], h.split(":", 1)[1]) for h in args.header if ":" in h]

    async def run() -> int:
        results = await call(
            args.url,
            count=args.count,
            headers=headers,
            http2=args.http2,
            request_timeout=args.timeout,
            message=args.message,
            new_connection=args.new_connection,
            qps=args.qps,
            hold=args.hold,
        )
        for result in results:
            sys.stdout.write(result.lines())
        sys.stdout.flush()
        if args.forever:
            await asyncio.Event().wait()
        return 0 if results and all(r.ok for r in results) else 1

    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(asyncio.run(run()))
