"""The echo server and client in process, on loopback: every protocol answers with the Key=Value fields."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from meshtest.echo.client import call
from meshtest.echo.fields import parse
from meshtest.echo.server import EchoServer, ServerConfig, tls_context


@pytest.fixture
async def echo() -> AsyncIterator[dict[str, int]]:
    server = EchoServer(ServerConfig(version="v7", namespace="ns1", hostname="echo-0"))
    ports = {
        "http": await server.listen(0, "http", "127.0.0.1"),
        "tcp": await server.listen(0, "tcp", "127.0.0.1"),
        "first": await server.listen(0, "tcp-server-first", "127.0.0.1"),
        "tls": await server.listen(0, "http", "127.0.0.1", tls=tls_context(None, None, "echo-0")),
    }
    yield ports
    await server.close()


@pytest.mark.parametrize(
    "case",
    [
        ("http", "http", False, "HTTP/1.1", ""),
        ("h2c", "http", False, "HTTP/2.0", ""),
        ("grpc", "http", False, "GRPC", ""),
        ("https", "tls", False, "HTTP/1.1", "http/1.1"),
        ("https", "tls", True, "HTTP/2.0", "h2"),
    ],
)
async def test_http_family(echo: dict[str, int], case: tuple[str, str, bool, str, str]) -> None:
    scheme, port, http2, proto, alpn = case
    results = await call(
        f"{scheme}://127.0.0.1:{echo[port]}/path?x=1",
        count=3,
        http2=http2,
        headers=[("x-test", "yes")],
        message="hi",
    )
    assert [r.ok for r in results] == [True, True, True], results
    reply = parse(results[0].text)
    assert reply.code == "200"
    assert reply.get("Proto") == proto
    assert reply.get("Alpn") == alpn
    assert reply.ip == "127.0.0.1"
    assert reply.version == "v7"
    assert reply.hostname == "echo-0"
    assert reply.get("Namespace") == "ns1"
    assert reply.request_headers["x-test"] == ["yes"]
    if scheme == "grpc":
        assert reply.get("Echo") == "hi"


async def test_tcp_echo_and_server_first(echo: dict[str, int]) -> None:
    (result,) = await call(f"tcp://127.0.0.1:{echo['tcp']}", message="ping")
    reply = parse(result.text)
    assert (reply.code, reply.get("Proto"), reply.ip) == ("200", "TCP", "127.0.0.1")
    (first,) = await call(f"tcp://127.0.0.1:{echo['first']}", message="ping")
    assert first.text.startswith("server-first-protocol\n")


async def test_codes_headers_and_forward(echo: dict[str, int]) -> None:
    base = f"http://127.0.0.1:{echo['http']}"
    (failing,) = await call(f"{base}/?codes=503:1")
    assert parse(failing.text).code == "503"
    (forwarded,) = await call(f"{base}/_forward?url=tcp://127.0.0.1:{echo['tcp']}&count=2")
    assert "[0] Proto=TCP" in forwarded.text
    assert "[1] Proto=TCP" in forwarded.text


async def test_connection_failure_is_reported_per_request() -> None:
    results = await call("http://127.0.0.1:1/", count=2, request_timeout=2)
    assert [r.ok for r in results] == [False, False]
    assert "Error=" in results[0].lines()
