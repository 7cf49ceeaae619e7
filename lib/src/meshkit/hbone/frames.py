"""HTTP/2 wire details the HBONE core handles itself: frame headers, and request header validation.

The core parses and writes DATA frame headers by hand (see core.py) and validates requests itself so that a
malformed request is a stream error (RFC 9113 §8.1.1) rather than h2's connection error.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence

__all__ = [
    "FRAME_HEADER_SIZE",
    "HDR",
    "PREFACE",
    "frame_header",
    "malformed_request",
    "status_of",
    "str_headers",
]

HDR = struct.Struct(">BHBBL")  # 24-bit length as (high byte, low 16 bits), type, flags, stream id
FRAME_HEADER_SIZE = 9
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DEFAULT_WINDOW = 65535

T_DATA, T_HEADERS, T_PUSH_PROMISE, T_CONTINUATION = 0x0, 0x1, 0x5, 0x9
F_END_STREAM, F_END_HEADERS, F_PADDED = 0x1, 0x4, 0x8


def frame_header(length: int, ftype: int, flags: int, stream_id: int) -> bytes:
    return HDR.pack(length >> 16, length & 0xFFFF, ftype, flags, stream_id)


_REQUEST_PSEUDO = frozenset({":method", ":scheme", ":authority", ":path", ":protocol"})
_CONNECTION_SPECIFIC = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade"}
)
_BAD_VALUE = re.compile(r"[\x00\r\n]|^[ \t]|[ \t]$")


def malformed_request(headers: Sequence[tuple[str, str]]) -> str | None:
    """Why a request header list is malformed under RFC 9113 §8.2-§8.3, or None."""
    pseudo: dict[str, str] = {}
    regular = False
    for name, value in headers:
        if not name or name != name.lower() or _BAD_VALUE.search(value):
            return f"bad field {name!r}"
        if name.startswith(":"):
            if regular or name not in _REQUEST_PSEUDO or name in pseudo:
                return f"bad pseudo-header {name!r}"
            pseudo[name] = value
            continue
        regular = True
        if name in _CONNECTION_SPECIFIC or (name == "te" and value != "trailers"):
            return f"connection-specific field {name!r}"
    method = pseudo.get(":method")
    if not method:
        return "no :method"
    if ":protocol" in pseudo:
        # extended CONNECT (RFC 8441) needs SETTINGS_ENABLE_CONNECT_PROTOCOL, which we never send
        return "extended CONNECT (:protocol) is not enabled"
    if method == "CONNECT":
        # A missing :authority is not malformed here: upstream's HTTP/2 layer passes such a request on and
        # ztunnel answers 400 when it cannot parse the authority (behaviour.md §2.7); an empty one is.
        if pseudo.get(":authority") == "" or ":scheme" in pseudo or ":path" in pseudo:
            return "CONNECT needs a non-empty :authority and no :scheme or :path"
        return None
    if not pseudo.get(":scheme") or not pseudo.get(":path"):
        return "missing :scheme or :path"
    return None


def str_headers(headers: Sequence[tuple[str | bytes, str | bytes]] | None) -> tuple[tuple[str, str], ...]:
    out = []
    for name, value in headers or ():
        n = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
        v = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
        out.append((n, v))
    return tuple(out)


def status_of(headers: Sequence[tuple[str | bytes, str | bytes]] | None) -> int:
    for name, value in str_headers(headers):
        if name == ":status":
            return int(value) if value.isdigit() else 0
    return 0
