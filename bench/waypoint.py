"""Waypoint benchmark: L4-only mesh vs mesh + waypoint, HTTP/1.1 with 1 KiB bodies, in one run.

Three processes on loopback (2 cores):

* ``dest``: the destination side of the mesh, an HBONE server (playing the destination ztunnel) on
  127.0.79.2:15008 that forwards each tunnel to a small HTTP/1.1 server (1 KiB request body in, 1 KiB out);
* ``waypoint``: the real ``python -m waypoint`` with a static WaypointConfig (one Service, VIP
  10.79.255.1:80, one endpoint 127.0.79.2:8080) and certificates from files;
* the load generator (this process), playing the source ztunnel: HBONE with the client's identity, either
  straight to ``dest`` (**L4 only**) or to the waypoint with ``:authority`` = the VIP (**+ waypoint**).

Figures:

* ``waypoint.rps_per_core``: closed loop with 16 concurrent tunnels for ``SATURATION_S`` seconds; requests
  completed divided by the waypoint process's CPU seconds (utime + stime from /proc) over the same window;
* ``l4.rr_p50_us`` / ``l4.rr_p99_us`` and ``waypoint.rr_p50_us`` / ``waypoint.rr_p99_us``: open loop at 500
  req/s on one tunnel, latency of each request (send → full response), ``RR_S`` seconds each;
* ``waypoint.added_p50_us``: the difference of the two p50s.

Targets (issue #9): ``rps_per_core`` ≥ 3000, ``added_p50_us`` ≤ 1000.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SATURATION_S = float(os.environ.get("WAYPOINT_BENCH_SATURATION_S", "8"))
RR_S = float(os.environ.get("WAYPOINT_BENCH_RR_S", "6"))
CONCURRENCY = 16
BODY = b"x" * 1024
DEST_IP, DEST_PORT, APP_PORT = "127.0.79.2", 15008, 8080
WAYPOINT_IP = "127.0.79.1"
VIP = "10.79.255.1"
HOST = "bench.default.svc.cluster.local"


# -- dest role ------------------------------------------------------------------------------------------


async def _dest(cert_dir: Path) -> None:
    import socket

    import httptools
    from meshkit.hbone.server import Forward, HboneServer
    from meshkit.sockets import HostSocketFactory

    response = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 1024\r\n\r\n" + BODY

    class App(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.t = transport
            self.p = httptools.HttpRequestParser(self)

        def data_received(self, data: bytes) -> None:
            self.p.feed_data(data)

        def on_message_complete(self) -> None:
            self.t.write(response)  # type: ignore[attr-defined]

    loop = asyncio.get_running_loop()
    app_server = await loop.create_server(App, "127.0.0.1", 0)
    app_port = app_server.sockets[0].getsockname()[1]
    cert = _load_cert(cert_dir / "reviews", "reviews")

    async def connect() -> socket.socket:
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", app_port))
        return sock

    async def handler(_peer: object, _req: object) -> Forward:
        return Forward(connect)

    sock = HostSocketFactory().listen_tcp(DEST_IP, DEST_PORT)
    server = HboneServer(sock, lambda: cert, handler)  # type: ignore[arg-type]
    await server.start()
    print("READY", flush=True)
    await asyncio.Event().wait()


# -- setup ----------------------------------------------------------------------------------------------


def _write_certs(tmp: Path) -> None:
    from meshkit.hbone.testing import TestCA
    from meshkit.identity.spiffe import Identity

    ca = TestCA()
    for name, sa in (("waypoint", "waypoint"), ("reviews", "reviews"), ("client", "sleep")):
        cert = ca.issue(Identity("cluster.local", "default", sa))
        d = tmp / name
        d.mkdir()
        (d / "cert-chain.pem").write_bytes(cert.chain_pem)
        (d / "key.pem").write_bytes(cert.private_key_pem)
        (d / "root-cert.pem").write_bytes(cert.roots_pem)


def _write_config(tmp: Path) -> Path:
    from google.protobuf import json_format
    from meshproto.ambient.waypoint.v1 import waypoint_pb2 as pb

    cluster = f"inbound-vip|80|http|{HOST}"
    cfg = pb.WaypointConfig(
        name="waypoint",
        namespace="default",
        services=[
            pb.Service(
                hostname=HOST,
                name="bench",
                namespace="default",
                vips=[VIP],
                ports=[pb.ServicePort(port=80, target_port=APP_PORT, protocol=pb.HTTP)],
            )
        ],
        clusters=[
            pb.Cluster(
                name=cluster,
                hostname=HOST,
                port=80,
                endpoints=[
                    pb.Endpoint(
                        address=DEST_IP,
                        port=APP_PORT,
                        healthy=True,
                        workload="bench",
                        namespace="default",
                        identity="spiffe://cluster.local/ns/default/sa/reviews",
                    )
                ],
            )
        ],
    )
    path = tmp / "waypoint.json"
    path.write_text(json_format.MessageToJson(cfg))
    return path


def _load_cert(directory: Path, sa: str):  # type: ignore[no-untyped-def]
    """A WorkloadCertificate from PEM files (this file is waypoint.py: the package is not importable here)."""
    from datetime import UTC, datetime, timedelta

    from meshkit.identity.certs import WorkloadCertificate
    from meshkit.identity.spiffe import Identity

    now = datetime.now(UTC)
    return WorkloadCertificate(
        Identity("cluster.local", "default", sa),
        (directory / "cert-chain.pem").read_bytes(),
        (directory / "key.pem").read_bytes(),
        (directory / "root-cert.pem").read_bytes(),
        now - timedelta(hours=1),
        now + timedelta(days=1),
    )


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- load generator -------------------------------------------------------------------------------------


class Client:
    def __init__(self, cert_dir: Path) -> None:
        from meshkit.hbone.pool import ConnectionPool

        self.cert_dir = cert_dir / "client"
        self.cert = None
        self.pool: ConnectionPool | None = None

    async def start(self) -> None:
        from meshkit.hbone.pool import ConnectionPool

        self.cert = _load_cert(self.cert_dir, "sleep")
        self.pool = ConnectionPool(lambda _i: self.cert)  # type: ignore[arg-type,return-value]

    async def tunnel(self, via_waypoint: bool, port: int) -> object:
        from meshkit.hbone.pool import PoolKey
        from meshkit.identity.spiffe import Identity

        src = Identity("cluster.local", "default", "sleep")
        if via_waypoint:
            key = PoolKey.of(
                src, "127.0.0.1", [Identity("cluster.local", "default", "waypoint")], (WAYPOINT_IP, port)
            )
            authority = f"{VIP}:80"
        else:
            key = PoolKey.of(
                src, "127.0.0.1", [Identity("cluster.local", "default", "reviews")], (DEST_IP, DEST_PORT)
            )
            authority = f"{DEST_IP}:{APP_PORT}"
        assert self.pool is not None
        return await self.pool.connect(key, authority, [])


REQUEST = (
    f"POST /bench HTTP/1.1\r\nhost: {HOST}\r\ncontent-type: text/plain\r\n".encode()
    + b"content-length: 1024\r\n\r\n"
    + BODY
)


async def _roundtrip(stream: object, parser_state: dict[str, object]) -> None:
    import httptools

    done = asyncio.get_running_loop().create_future()

    class P:
        def on_message_complete(self) -> None:
            if not done.done():
                done.set_result(None)

    parser = httptools.HttpResponseParser(P())
    stream.write(REQUEST)  # type: ignore[attr-defined]
    while not done.done():
        data = await stream.read()  # type: ignore[attr-defined]
        if not data:
            raise EOFError("tunnel closed")
        parser.feed_data(data)


async def _saturate(client: Client, via: bool, port: int, seconds: float) -> int:
    streams = [await client.tunnel(via, port) for _ in range(CONCURRENCY)]
    for s in streams:
        await _roundtrip(s, {})
    count = 0
    deadline = time.monotonic() + seconds

    async def worker(s: object) -> None:
        nonlocal count
        while time.monotonic() < deadline:
            await _roundtrip(s, {})
            count += 1

    await asyncio.gather(*(worker(s) for s in streams))
    return count


async def _rr(client: Client, via: bool, port: int, seconds: float, rate: float = 500.0) -> list[float]:
    stream = await client.tunnel(via, port)
    for _ in range(200):
        await _roundtrip(stream, {})
    lat: list[float] = []
    interval = 1.0 / rate
    start = time.monotonic()
    n = 0
    while (now := time.monotonic()) - start < seconds:
        target = start + n * interval
        if target > now:
            await asyncio.sleep(target - now)
        t0 = time.perf_counter()
        await _roundtrip(stream, {})
        lat.append((time.perf_counter() - t0) * 1e6)
        n += 1
    return lat


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def _measure(cert_dir: Path, waypoint_pid: int, port: int) -> dict[str, float | int | str]:
    client = Client(cert_dir)
    await client.start()
    l4 = await _rr(client, False, port, RR_S)
    wp = await _rr(client, True, port, RR_S)
    cpu0 = _cpu_s(waypoint_pid)
    t0 = time.monotonic()
    count = await _saturate(client, True, port, SATURATION_S)
    elapsed = time.monotonic() - t0
    cpu = _cpu_s(waypoint_pid) - cpu0
    figures: dict[str, float | int | str] = {
        "waypoint.rps_per_core": count / cpu if cpu else 0.0,
        "waypoint.saturation_rps": count / elapsed,
        "waypoint.saturation_cpu_cores": cpu / elapsed,
        "l4.rr_p50_us": statistics.median(l4),
        "l4.rr_p99_us": _pct(l4, 0.99),
        "waypoint.rr_p50_us": statistics.median(wp),
        "waypoint.rr_p99_us": _pct(wp, 0.99),
        "waypoint.added_p50_us": statistics.median(wp) - statistics.median(l4),
        "rr_rate_per_s": 500,
        "concurrency": CONCURRENCY,
    }
    assert client.pool is not None
    await client.pool.close()
    return figures


def main() -> None:
    import uvloop
    from _results import write_results

    if len(sys.argv) > 2 and sys.argv[1] == "--dest":
        uvloop.run(_dest(Path(sys.argv[2])))
        return
    with tempfile.TemporaryDirectory(prefix="wp-bench-") as tmpdir:
        tmp = Path(tmpdir)
        _write_certs(tmp)
        config = _write_config(tmp)
        procs = []
        try:
            procs.append(_spawn([sys.executable, __file__, "--dest", str(tmp)], {}))
            wp_env = {
                "WAYPOINT_NAME": "waypoint",
                "POD_NAMESPACE": "default",
                "SERVICE_ACCOUNT": "waypoint",
                "WAYPOINT_CONFIG_FILE": str(config),
                "WAYPOINT_CERT_DIR": str(tmp / "waypoint"),
                "HBONE_ADDR": f"{WAYPOINT_IP}:0",
                "ADMIN_ADDR": "127.0.0.1:0",
                "STATS_ADDR": "127.0.0.1:0",
                "READINESS_ADDR": "127.0.0.1:0",
                "LOG_LEVEL": "info",
                "POD_IP": WAYPOINT_IP,
                "MALLOC_MMAP_THRESHOLD_": "33554432",
                "MALLOC_TRIM_THRESHOLD_": "268435456",
            }
            wp = _spawn([sys.executable, "-m", "waypoint"], wp_env)
            procs.append(wp)
            port = _READY_PORTS[wp.pid]
            figures = uvloop.run(_measure(tmp, wp.pid, port))
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
    write_results("waypoint", figures)


_READY_PORTS: dict[int, int] = {}


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    """Start a role and wait for its ``READY [port]`` line (the port is remembered by pid)."""
    # stderr (logs, incl. one access-log line per request) is formatted but discarded.
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, **env}
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        proc.kill()
        raise RuntimeError(f"{args} did not start: {line!r}")
    parts = line.split()
    if len(parts) > 1:
        _READY_PORTS[proc.pid] = int(parts[1])
    return proc


if __name__ == "__main__":
    main()
