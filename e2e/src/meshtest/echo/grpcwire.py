"""Just enough protobuf and gRPC framing for the echo service (``proto.EchoTestService/Echo``), so the server
and client need no generated code: ``EchoRequest``/``EchoResponse`` are both ``{string message = 1}``."""

from __future__ import annotations

import struct

ECHO_METHOD = "/proto.EchoTestService/Echo"


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_message(text: str) -> bytes:
    data = text.encode()
    return b"\x0a" + _varint(len(data)) + data if data else b""


def decode_message(payload: bytes) -> str:
    """Field 1 (string) of the message; other fields are skipped."""
    pos, result = 0, ""
    while pos < len(payload):
        key, pos = _read_varint(payload, pos)
        wire = key & 7
        if wire == 2:
            length, pos = _read_varint(payload, pos)
            if key >> 3 == 1:
                result = payload[pos : pos + length].decode(errors="replace")
            pos += length
        elif wire == 0:
            _, pos = _read_varint(payload, pos)
        elif wire == 5:
            pos += 4
        elif wire == 1:
            pos += 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
    return result


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def frame(message: bytes) -> bytes:
    return struct.pack(">BI", 0, len(message)) + message


def unframe(data: bytes) -> list[bytes]:
    messages = []
    while len(data) >= 5:
        _, length = struct.unpack(">BI", data[:5])
        messages.append(data[5 : 5 + length])
        data = data[5 + length :]
    return messages
