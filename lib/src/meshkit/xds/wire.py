"""Hand-framed ``DeltaDiscoveryResponse`` bytes from pre-serialized ``Resource`` entries.

A full-state response for a large mesh holds ~10^4 resources. Building it as protobuf objects copies every
resource into a new message per client; instead each resource is serialized once (when it changes) and a
response is the concatenation of length-delimited field entries, which is exactly the protobuf encoding of
the repeated field. The result parses as a normal ``DeltaDiscoveryResponse`` (tests check this).
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import any_pb2
from meshproto.envoy.service.discovery.v3 import discovery_pb2

# field numbers of DeltaDiscoveryResponse (wire-contracts.md §3.6)
_RESOURCES, _TYPE_URL, _NONCE, _REMOVED, _SYSTEM_VERSION = 2, 4, 5, 6, 1
# field numbers of Resource
_R_VERSION, _R_RESOURCE, _R_NAME, _R_ALIASES = 1, 2, 3, 4


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


def _field(number: int, payload: bytes) -> bytes:
    return _varint((number << 3) | 2) + _varint(len(payload)) + payload


def resource_entry(name: str, version: str, any_bytes: bytes, aliases: Iterable[str] = ()) -> bytes:
    """A serialized ``Resource`` (what :func:`response_bytes` concatenates)."""
    out = _field(_R_VERSION, version.encode()) if version else b""
    out += _field(_R_RESOURCE, any_bytes) + _field(_R_NAME, name.encode())
    for alias in aliases:
        out += _field(_R_ALIASES, alias.encode())
    return out


def response_bytes(
    type_url: str, nonce: str, resources: Iterable[bytes], removed: Iterable[str], system_version: str = ""
) -> bytes:
    parts = [_field(_SYSTEM_VERSION, system_version.encode())] if system_version else []
    parts.extend(_field(_RESOURCES, entry) for entry in resources)
    parts.append(_field(_TYPE_URL, type_url.encode()))
    parts.append(_field(_NONCE, nonce.encode()))
    parts.extend(_field(_REMOVED, name.encode()) for name in removed)
    return b"".join(parts)


def any_bytes(type_url: str, message_bytes: bytes) -> bytes:
    return any_pb2.Any(type_url=type_url, value=message_bytes).SerializeToString()


def parse_response(data: bytes) -> discovery_pb2.DeltaDiscoveryResponse:
    return discovery_pb2.DeltaDiscoveryResponse.FromString(data)
