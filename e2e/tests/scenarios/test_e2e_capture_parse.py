"""The pcap reader behind the mTLS-on-the-wire check, on a capture file built here (no tcpdump needed)."""

from __future__ import annotations

import struct
from pathlib import Path

from meshtest.e2e.capture import Capture, tls_records


def frame(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x18, 65535, 0, 0) + payload
    total = 20 + len(tcp)
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        total,
        0,
        0,
        64,
        6,
        0,
        bytes(map(int, src.split("."))),
        bytes(map(int, dst.split("."))),
    )
    return b"\x00" * 12 + b"\x08\x00" + ip + tcp


def pcap(frames: list[bytes]) -> bytes:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for f in frames:
        out += struct.pack("<IIII", 0, 0, len(f), len(f)) + f
    return out


def test_flows_payloads_and_markers(tmp_path: Path) -> None:
    path = tmp_path / "t.pcap"
    hello = bytes([0x16, 3, 1, 0, 4]) + b"abcd"
    path.write_bytes(
        pcap(
            [
                frame("10.244.1.5", "10.244.2.7", 40000, 15008, hello),
                frame("10.244.2.7", "10.244.1.5", 15008, 40000, bytes([0x16, 3, 3, 0, 1, 0])),
                frame(
                    "10.244.1.9",
                    "10.244.2.8",
                    40001,
                    8080,
                    b"GET / HTTP/1.1\r\nX-Marker: pk-marker-1\r\n\r\n",
                ),
            ]
        )
    )
    cap = Capture(path).load()
    assert cap.packets == 3
    mesh = cap.between("10.244.1.5", "10.244.2.7")
    assert sorted(f.dport for f in mesh) == [15008, 40000]
    assert tls_records(bytes(next(f for f in mesh if f.dport == 15008).payload))
    assert not tls_records(bytes(cap.between("10.244.1.9", "10.244.2.8")[0].payload))
    assert cap.contains(b"pk-marker-1")
    assert not any(b"pk-marker-1" in f.payload for f in mesh)
