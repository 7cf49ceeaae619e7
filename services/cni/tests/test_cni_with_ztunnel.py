"""The agent against our ztunnel's in-pod side (``ztunnel.inpod``: the ZDS client loop and the workload proxy
manager), in a real kernel. The pod proxies here open only ztunnel's three capture listeners (mark 1337) in
the pod netns from the fd received over ZDS, so what is checked is the hand-over: once the agent says
"enabled", an app connection from the pod lands on that ztunnel's 15001 with its original destination; after
ztunnel or agent restarts it still does; after unenrol the pod talks directly again.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from istio_cni.dataplane import DataplaneConfig, MeshDataplane
from istio_cni.metrics import CniMetrics
from istio_cni.netns import Netns
from istio_cni.zdshub import ZtunnelHub
from meshkit.metrics import new_registry
from meshkit.netns import run_in_netns
from meshkit.zds import WorkloadInfo
from ztunnel.inpod.client import run_zds_client
from ztunnel.inpod.manager import WorkloadProxyManager

pytestmark = pytest.mark.root
WAIT_S = 10
MARK = 1337
SO_ORIGINAL_DST = 80


def _listener(port: int) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, MARK)
    s.bind(("0.0.0.0", port))
    s.listen(8)
    s.settimeout(5)
    return s


def _in(target: Netns | str, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a fresh thread inside the netns (sockets created there stay there)."""
    return run_in_netns(target.fd if isinstance(target, Netns) else target, fn)


@dataclass
class CaptureProxy:
    """ztunnel's listeners for one pod, opened inside the pod netns from the ZDS fd."""

    sockets: dict[int, socket.socket] = field(default_factory=dict)

    async def stop(self) -> None:
        for s in self.sockets.values():
            s.close()


class Ztunnel:
    def __init__(self, path: str) -> None:
        self.proxies: dict[str, CaptureProxy] = {}
        self.manager = WorkloadProxyManager(self._factory)
        self.task = asyncio.create_task(run_zds_client(path, self.manager))

    async def _factory(self, uid: str, _info: WorkloadInfo, netns_fd: int) -> CaptureProxy:
        netns = Netns(netns_fd, f"zds:{uid}")  # borrowed: the manager owns and closes the fd
        proxy = CaptureProxy(
            {p: await asyncio.to_thread(_in, netns, lambda p=p: _listener(p)) for p in (15001, 15006, 15008)}
        )
        self.proxies[uid] = proxy
        return proxy

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.manager.close()


class Agent:
    def __init__(self, path: str, snapshots_open: bool = True) -> None:
        self.annotations: dict[str, str | None] = {}
        metrics = CniMetrics(new_registry())
        self.dataplane = MeshDataplane(DataplaneConfig(), self, metrics)
        self.hub = ZtunnelHub(
            path,
            self.dataplane.snapshot,
            self.dataplane.on_snapshot_acked,
            metrics,
            snapshots_open=snapshots_open,
        )
        self.dataplane.hub = self.hub

    async def set_redirection(self, namespace: str, name: str, value: str | None) -> None:
        self.annotations[f"{namespace}/{name}"] = value

    async def stop(self) -> None:
        await self.hub.close()
        self.dataplane.close()


@pytest.fixture
def sock_path(tmp_path: Path) -> str:
    return str(tmp_path / "ztunnel.sock")


def pod_obj() -> dict[str, Any]:
    return {"metadata": {"uid": "uid-1", "name": "web", "namespace": "demo"}, "spec": {}, "status": {}}


def outbound_lands_on_ztunnel(zt: Ztunnel, pod_path: str, dst: tuple[str, int]) -> None:
    client = _in(pod_path, lambda: socket.create_connection(dst, timeout=5))
    try:
        conn, _ = zt.proxies["uid-1"].sockets[15001].accept()
        with conn:
            raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port, addr = struct.unpack("!2xH4s8x", raw)
            assert (socket.inet_ntoa(addr), port) == dst
    finally:
        client.close()


async def test_handover_to_ztunnel_and_restarts(sock_path: str, pod_and_peer: Any) -> None:
    pod, peer, _pod_ip, peer_ip = pod_and_peer
    agent = Agent(sock_path)
    await agent.hub.start()
    zt = Ztunnel(sock_path)
    stopped: list[Any] = [zt]
    try:
        async with asyncio.timeout(WAIT_S):
            await agent.hub.wait_connected()
        assert await agent.dataplane.enrol(pod_obj(), Netns.open(pod.path), ("10.78.0.0",))
        assert agent.annotations["demo/web"] == "enabled"
        await asyncio.to_thread(outbound_lands_on_ztunnel, zt, pod.path, (peer_ip, 9090))

        # ztunnel restarts: the new one gets the pod in its snapshot and captures again
        await zt.stop()
        zt = Ztunnel(sock_path)
        stopped.append(zt)
        async with asyncio.timeout(WAIT_S), agent.hub.changed:
            await agent.hub.changed.wait_for(lambda: agent.hub.connected == 1 and zt.manager.snapshot_done)
        await asyncio.to_thread(outbound_lands_on_ztunnel, zt, pod.path, (peer_ip, 9091))

        # the agent restarts: ztunnel reconnects at once but gets its snapshot only after the reconcile,
        # so its proxy for the pod (same netns) keeps running throughout
        proxy = zt.proxies["uid-1"]
        await agent.stop()
        agent = Agent(sock_path, snapshots_open=False)
        await agent.hub.start()
        assert not await agent.dataplane.enrol(pod_obj(), Netns.open(pod.path), ("10.78.0.0",))  # reconcile
        agent.hub.open_snapshots()
        async with asyncio.timeout(WAIT_S):
            await agent.hub.wait_connected()
        assert agent.annotations["demo/web"] == "enabled"
        assert zt.proxies["uid-1"] is proxy
        await asyncio.to_thread(outbound_lands_on_ztunnel, zt, pod.path, (peer_ip, 9092))

        # unenrol: rules gone, proxy stopped, the pod reaches the peer directly
        await agent.dataplane.unenrol("uid-1", deleted=False)
        peer_app = await asyncio.to_thread(_in, peer.path, lambda: _listener(9093))
        with peer_app:
            client = await asyncio.to_thread(
                _in, pod.path, lambda: socket.create_connection((peer_ip, 9093), 5)
            )
            with client:
                conn, _ = await asyncio.to_thread(peer_app.accept)
                conn.close()
        assert "uid-1" not in zt.manager.pods
    finally:
        for z in stopped:
            await z.stop()
        await agent.stop()
