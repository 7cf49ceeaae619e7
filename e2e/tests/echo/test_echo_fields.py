"""Echo response format and gRPC wire helpers."""

from __future__ import annotations

from meshtest.echo import grpcwire
from meshtest.echo.fields import parse_responses, render


def test_parse_prefixed_responses() -> None:
    text = (
        "[0] StatusCode=200\n[0] IP=10.0.0.1\n[0] RequestHeader=X-A:b\n[1] StatusCode=503\n[1] IP=10.0.0.2\n"
    )
    first, second = parse_responses(text)
    assert (first.code, first.ip, first.request_headers) == ("200", "10.0.0.1", {"x-a": ["b"]})
    assert (second.code, second.ip) == ("503", "10.0.0.2")


def test_parse_plain_response() -> None:
    (only,) = parse_responses(render([("Hostname", "p"), ("ServiceVersion", "v2")]))
    assert (only.hostname, only.version) == ("p", "v2")


def test_protobuf_string_roundtrip() -> None:
    for text in ("", "hello", "x" * 300):
        assert grpcwire.decode_message(grpcwire.encode_message(text)) == text
    assert grpcwire.unframe(grpcwire.frame(b"ab") + grpcwire.frame(b"c")) == [b"ab", b"c"]
