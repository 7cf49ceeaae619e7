"""Container probes (httpGet, tcpSocket, exec), run from the node agent like the kubelet's prober.

HTTP and TCP probes connect to the pod IP (the node namespace routes to it); exec probes run the command
with ``nsenter`` in the container's network, mount and UTS namespaces. A probe passes on HTTP 200 to 399, a
completed TCP connect, or exit status 0 within ``timeoutSeconds``. gRPC probes are not implemented: they pass
with a warning.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp

log = logging.getLogger("meshtest.cluster.probes")
Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    container: Obj  # the container spec (named ports)
    pod_ip: str
    pid: int | None  # the container process, for exec probes


async def probe_once(probe: Obj, target: ProbeTarget, http: aiohttp.ClientSession) -> bool:
    timeout = float(probe.get("timeoutSeconds", 1))
    try:
        if "httpGet" in probe:
            return await asyncio.wait_for(_http(probe["httpGet"], target, http), timeout)
        if "tcpSocket" in probe:
            port = named_port(target.container, probe["tcpSocket"]["port"])
            host = probe["tcpSocket"].get("host") or target.pod_ip
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
            writer.close()
            return True
        if "exec" in probe:
            if target.pid is None:
                return False
            # -r/-w: the container's own root (chroot) and working directory, not just its mount namespace
            argv = [
                "nsenter",
                "-t",
                str(target.pid),
                "-n",
                "-m",
                "-u",
                "-r",
                "-w",
                "--",
                *probe["exec"]["command"],
            ]
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
            )
            return await asyncio.wait_for(proc.wait(), timeout) == 0
        log.warning("unsupported probe %s; treated as passing", sorted(probe))
        return True
    except (TimeoutError, OSError, aiohttp.ClientError):
        return False


async def run_hook(hook: Obj, target: ProbeTarget, http: aiohttp.ClientSession, budget: float) -> None:
    """A lifecycle handler (``preStop``): exec, httpGet or sleep, bounded by ``budget`` seconds."""
    if "sleep" in hook:
        await asyncio.sleep(min(float(hook["sleep"].get("seconds", 0)), budget))
        return
    if not await probe_once({**hook, "timeoutSeconds": budget}, target, http):
        log.warning("lifecycle hook %s failed", sorted(hook))


async def _http(get: Obj, target: ProbeTarget, http: aiohttp.ClientSession) -> bool:
    scheme = str(get.get("scheme", "HTTP")).lower()
    host = get.get("host") or target.pod_ip
    url = f"{scheme}://{host}:{named_port(target.container, get['port'])}{get.get('path', '/')}"
    headers = {h["name"]: h["value"] for h in get.get("httpHeaders", [])}
    ctx: ssl.SSLContext | bool = scheme != "https"  # HTTPS probes skip verification, as the kubelet's do
    async with http.get(url, headers=headers, ssl=ctx, allow_redirects=False) as resp:
        return 200 <= resp.status < 400


def named_port(container: Obj, port: int | str) -> int:
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for item in container.get("ports", []):
        if item.get("name") == port:
            return int(item["containerPort"])
    raise OSError(f"named port {port!r} not found")
