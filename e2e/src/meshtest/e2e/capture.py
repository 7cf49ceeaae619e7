"""Packet capture on a node's link, to prove what crossed the wire between nodes.

On the local cluster each node's link is the host end of its veth (``<node>-v`` on the bridge), so a
``tcpdump`` there sees every packet between that node and the others, pod addresses unencapsulated. The
pcap is parsed here (Ethernet/IPv4/TCP only) into per-flow payloads: a test then asserts that pod-to-pod bytes
went to port 15008 as TLS records and that an application marker never appears in clear.
"""

from __future__ import annotations

import contextlib
import signal
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

TLS_HANDSHAKE = 0x16
TLS_APPDATA = 0x17


@dataclass
class Flow:
    src: str
    sport: int
    dst: str
    dport: int
    payload: bytearray = field(default_factory=bytearray)


def tls_records(payload: bytes) -> bool:
    """Whether ``payload`` starts with a TLS record header (content type 20-23, version 3.1-3.3): a handshake
    on a new connection, application data on one ztunnel had pooled before the capture began."""
    return len(payload) >= 5 and 20 <= payload[0] <= 23 and payload[1] == 3 and payload[2] in (1, 3)


@dataclass
class Capture:
    path: Path
    flows: dict[tuple[str, int, str, int], Flow] = field(default_factory=dict)
    packets: int = 0

    def load(self) -> Capture:
        data = self.path.read_bytes()
        if len(data) < 24:
            return self
        magic = struct.unpack("<I", data[:4])[0]
        endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
        linktype = struct.unpack(endian + "I", data[20:24])[0]
        pos = 24
        while pos + 16 <= len(data):
            _, _, incl, _ = struct.unpack(endian + "IIII", data[pos : pos + 16])
            frame = data[pos + 16 : pos + 16 + incl]
            pos += 16 + incl
            self._packet(frame, linktype)
        return self

    def _packet(self, frame: bytes, linktype: int) -> None:
        if linktype == 1:  # Ethernet
            if len(frame) < 14 or frame[12:14] != b"\x08\x00":
                return
            ip = frame[14:]
        elif linktype == 113:  # Linux cooked (tcpdump -i any)
            if len(frame) < 16 or frame[14:16] != b"\x08\x00":
                return
            ip = frame[16:]
        else:
            return
        if len(ip) < 20 or ip[9] != 6:
            return
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack("!H", ip[2:4])[0]
        src, dst = ".".join(map(str, ip[12:16])), ".".join(map(str, ip[16:20]))
        tcp = ip[ihl:total]
        if len(tcp) < 20:
            return
        sport, dport = struct.unpack("!HH", tcp[:4])
        offset = (tcp[12] >> 4) * 4
        self.packets += 1
        key = (src, sport, dst, dport)
        flow = self.flows.setdefault(key, Flow(src, sport, dst, dport))
        flow.payload += tcp[offset:]

    def between(self, a: str, b: str) -> list[Flow]:
        return [f for f in self.flows.values() if {f.src, f.dst} == {a, b}]

    def contains(self, marker: bytes) -> bool:
        return any(marker in f.payload for f in self.flows.values())


@contextlib.contextmanager
def tcpdump(interface: str, bpf: str, netns: str | None = None) -> Iterator[Capture]:
    """Capture on ``interface`` while the block runs; the block starts only once tcpdump is listening."""
    tmp = Path(tempfile.mkdtemp(prefix="pk-capture-"))
    pcap = tmp / "link.pcap"
    argv = ["tcpdump", "-i", interface, "-U", "-s", "0", "-n", "-w", str(pcap), bpf]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    capture = Capture(pcap)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # "listening on <if>, link-type ..." once the socket is bound
        if "listening on" not in line:
            raise RuntimeError(f"tcpdump did not start on {interface}: {line.strip()}")
        yield capture
    finally:
        # let in-flight packets of the block's last exchange reach the ring before stopping
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and proc.poll() is None:
            if pcap.exists() and pcap.stat().st_size > 24:
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        if pcap.exists():
            capture.load()
        pcap.unlink(missing_ok=True)
        tmp.rmdir()
