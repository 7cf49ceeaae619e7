"""PROXY protocol v2 headers for application tunnels (behaviour.md §2.7, wire-contracts.md §1.4).

When the destination workload has ``ApplicationTunnel{protocol: PROXY, port}``, inbound ztunnel connects to
that port on the pod's loopback and first writes a v2 header: command PROXY, TCP over the family of the
addresses, source = the client, destination = the original target, and one TLV of type 0xD0 carrying the
client's SPIFFE identity (the only TLV upstream writes).
"""

from __future__ import annotations

import ipaddress
import struct

__all__ = ["SIGNATURE", "TLV_PEER_IDENTITY", "header"]

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
TLV_PEER_IDENTITY = 0xD0
_V2_PROXY = 0x21
_TCP4, _TCP6 = 0x11, 0x21


def header(src: tuple[str, int], dst: tuple[str, int], identity: str | None) -> bytes:
    s, d = ipaddress.ip_address(src[0]), ipaddress.ip_address(dst[0])
    if s.version != d.version:  # mixed families: use the v6 forms, as a dual-stack peer would
        s = s if s.version == 6 else ipaddress.IPv6Address(f"::ffff:{s}")
        d = d if d.version == 6 else ipaddress.IPv6Address(f"::ffff:{d}")
    family = _TCP6 if s.version == 6 else _TCP4
    body = s.packed + d.packed + struct.pack("!HH", src[1], dst[1])
    if identity:
        value = identity.encode()
        body += struct.pack("!BH", TLV_PEER_IDENTITY, len(value)) + value
    return SIGNATURE + struct.pack("!BBH", _V2_PROXY, family, len(body)) + body
