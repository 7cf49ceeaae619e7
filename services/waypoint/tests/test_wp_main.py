"""``python -m waypoint`` as a process: starts from its environment (static config, certificate files),
answers on its ports, and exits cleanly on SIGTERM (drain)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from google.protobuf import json_format
from meshkit.hbone.testing import TestCA
from meshkit.identity.spiffe import Identity
from meshproto.ambient.waypoint.v1 import waypoint_pb2 as pb


async def test_main_serves_and_drains_on_sigterm(tmp_path: Path) -> None:
    ca = TestCA()
    cert = ca.issue(Identity("cluster.local", "default", "waypoint"))
    (tmp_path / "cert-chain.pem").write_bytes(cert.chain_pem)
    (tmp_path / "key.pem").write_bytes(cert.private_key_pem)
    (tmp_path / "root-cert.pem").write_bytes(cert.roots_pem)
    cfg = pb.WaypointConfig(name="waypoint", namespace="default")
    (tmp_path / "config.json").write_text(json_format.MessageToJson(cfg))
    env = {
        **os.environ,
        "WAYPOINT_CONFIG_FILE": str(tmp_path / "config.json"),
        "WAYPOINT_CERT_DIR": str(tmp_path),
        "HBONE_ADDR": "127.0.0.1:0",
        "ADMIN_ADDR": "127.0.0.1:0",
        "STATS_ADDR": "127.0.0.1:0",
        "READINESS_ADDR": "127.0.0.1:0",
        "TERMINATION_DRAIN_DURATION": "1s",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "waypoint",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.startswith(b"READY "), line
        port = int(line.split()[1])
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)  # the HBONE listener accepts
        writer.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.stderr is not None
    logs = (await proc.stderr.read()).decode()
    assert "waypoint started" in logs
    assert "draining" in logs
