"""``python -m ztunnel`` as a process: starts from the environment, turns ready, drains, exits on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_sigterm_drains_and_exits(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"workloads": [], "services": [], "policies": []}))
    ready_port = free_port()
    env = {
        "INPOD_ENABLED": "false",
        "LOCAL_XDS_PATH": str(config),
        "ADMIN_ADDR": f"127.0.0.1:{free_port()}",
        "STATS_ADDR": f"127.0.0.1:{free_port()}",
        "READINESS_ADDR": f"127.0.0.1:{ready_port}",
        "CA_ADDRESS": "127.0.0.1:1",
        "CA_ROOT_CA": str(config),
        "CONNECTION_TERMINATION_DEADLINE": "1s",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ztunnel",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(30), aiohttp.ClientSession() as session:
            while True:  # the process offers no other signal than its readiness endpoint
                try:
                    async with session.get(f"http://127.0.0.1:{ready_port}/healthz/ready") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.05)
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")  # noqa: ASYNC240
        assert b"-OO" in cmdline  # re-executed itself optimized, same pid
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 15)
        assert proc.returncode == 0, stderr.decode()[-2000:]
        assert b"draining" in stderr
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_help_lists_the_settings() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ztunnel", "--help", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    for var in ("INPOD_UDS", "XDS_ADDRESS", "CA_ADDRESS", "CONNECTION_TERMINATION_DEADLINE", "ZTUNNEL_GRPC"):
        assert var.encode() in out
