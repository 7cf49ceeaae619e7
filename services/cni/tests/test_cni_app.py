"""The whole node agent in-process (``build(settings)``) with a fake Kubernetes side, real netns, iptables and
ZDS: live namespace labelling enrols a running pod and unlabelling removes every rule, the plugin path enrols
a new pod, a restarted agent reconciles, and uninstall cleans the node.
"""

# Small temp files in test bodies; blocking reads there are fine.

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from istio_cni.app import App, build
from istio_cni.controller import PodController
from istio_cni.netns import run_command
from istio_cni.plugin.__main__ import run as run_plugin
from istio_cni.settings import Settings
from meshkit.settings import load
from meshkit.zds import WorkloadAdded, WorkloadDeleted

pytestmark = pytest.mark.root
WAIT_S = 10
AMBIENT = {"istio.io/dataplane-mode": "ambient"}


class FakeKube:
    """In-memory pods and namespaces (``KubeView``) that also records annotations (``Annotator``)."""

    def __init__(self) -> None:
        self.pods: dict[str, dict[str, Any]] = {}
        self.namespaces: dict[str, dict[str, Any]] = {}
        self.controller: PodController | None = None
        self.changed = asyncio.Condition()

    def pod(self, key: str) -> dict[str, Any] | None:
        return self.pods.get(key)

    def namespace(self, name: str) -> dict[str, Any] | None:
        return self.namespaces.get(name)

    def node_pods(self) -> list[dict[str, Any]]:
        return list(self.pods.values())

    async def fetch_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.pods.get(f"{namespace}/{name}")

    async def fetch_namespace(self, name: str) -> dict[str, Any] | None:
        return self.namespaces.get(name)

    async def set_redirection(self, namespace: str, name: str, value: str | None) -> None:
        async with self.changed:
            ann = self.pods[f"{namespace}/{name}"]["metadata"].setdefault("annotations", {})
            if value is None:
                ann.pop("ambient.istio.io/redirection", None)
            else:
                ann["ambient.istio.io/redirection"] = value
            self.changed.notify_all()

    def redirection(self, key: str) -> str | None:
        return self.pods[key]["metadata"].get("annotations", {}).get("ambient.istio.io/redirection")

    async def wait_redirection(self, key: str, value: str | None) -> None:
        async with asyncio.timeout(WAIT_S), self.changed:
            await self.changed.wait_for(lambda: self.redirection(key) == value)

    def set_namespace(self, name: str, labels: dict[str, str]) -> None:
        self.namespaces[name] = {"metadata": {"name": name, "labels": dict(labels)}}
        if self.controller is not None:
            self.controller.namespace_changed(self.namespaces[name])

    def add_pod(self, ns: str, name: str, uid: str, ip: str) -> None:
        self.pods[f"{ns}/{name}"] = {
            "metadata": {"name": name, "namespace": ns, "uid": uid},
            "spec": {"serviceAccountName": name},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
        }


@pytest.fixture
def running_pod(make_netns: Callable[[], Any], subnet: str) -> Any:
    """A pod netns with an address and a process living in it (so /proc shows the netns)."""
    ns = make_netns()
    ns.sh("ip", "link", "add", "cni-d0", "type", "veth", "peer", "name", "cni-d1")
    ns.sh("ip", "addr", "add", f"{subnet}.9/24", "dev", "cni-d0")
    ns.sh("ip", "link", "set", "cni-d0", "up")
    proc = subprocess.Popen(["ip", "netns", "exec", ns.name, "sleep", "300"])
    yield ns, f"{subnet}.9"
    proc.kill()
    proc.wait()


@pytest.fixture
def agent_settings(tmp_path: Path, make_netns: Callable[[], Any]) -> Settings:
    conf_dir = tmp_path / "net.d"
    conf_dir.mkdir()
    primary = {"cniVersion": "1.0.0", "name": "k8s", "plugins": [{"type": "bridge", "bridge": "cni-none"}]}
    (conf_dir / "10-k8s.conflist").write_text(json.dumps(primary))
    node = make_netns()
    return load(
        Settings,
        {
            "NODE_NAME": "node-a",
            "CNI_BIN_DIR": str(tmp_path / "bin"),
            "CNI_CONF_DIR": str(conf_dir),
            "CNI_AGENT_RUN_DIR": str(tmp_path / "run"),
            "ZTUNNEL_UDS_ADDRESS": str(tmp_path / "ztunnel.sock"),
            "HOST_PROC_DIR": "/proc",
            "HOST_NETNS_PATH": node.path,
            "READINESS_PORT": "0",
            "MONITORING_PORT": "0",
            "LISTEN_ADDRESS": "127.0.0.1",
            "ZDS_RETRY_INTERVAL": "200ms",
        },
    )


@pytest.fixture
async def start_agent(agent_settings: Settings) -> AsyncIterator[Callable[[FakeKube], Any]]:
    apps: list[App] = []

    async def start(kube: FakeKube) -> App:
        app = await build(agent_settings, view=kube, annotator=kube)
        kube.controller = app.controller
        apps.append(app)
        await asyncio.wait_for(app.readiness.wait_ready(), WAIT_S)
        return app

    yield start
    for app in apps:
        with contextlib.suppress(Exception):
            await app.close()


class Ztunnel:
    """Minimal ztunnel on meshkit.zds: acks everything, remembers adds and dels."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.events: list[Any] = []
        self.changed = asyncio.Condition()
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        import os

        from meshkit.zds import ZdsClientConnection, ZdsClosed

        conn = await ZdsClientConnection.connect(self.path)
        try:
            while True:
                event = await conn.next_event()
                if isinstance(event, WorkloadAdded):
                    os.close(event.netns_fd)
                await conn.ack()
                async with self.changed:
                    self.events.append(event)
                    self.changed.notify_all()
        except ZdsClosed:
            pass
        finally:
            conn.close()

    async def wait(self, pred: Callable[[list[Any]], bool]) -> None:
        async with asyncio.timeout(WAIT_S), self.changed:
            await self.changed.wait_for(lambda: pred(self.events))


@pytest.fixture
async def ztunnel(agent_settings: Settings) -> AsyncIterator[Ztunnel]:
    zt = Ztunnel(agent_settings.ztunnel_uds)
    yield zt
    if zt.task is not None:
        zt.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await zt.task


async def node_cmd(netns_path: str, *argv: str) -> str:
    result = await run_command(["nsenter", f"--net={netns_path}", *argv])
    assert result.returncode == 0, result.stderr
    return result.stdout


def rules_in(ns: Any) -> bool:
    return "ISTIO_" in ns.sh("iptables-save") + ns.sh("ip6tables-save")


async def test_label_unlabel_running_pod(start_agent, ztunnel, running_pod) -> None:  # type: ignore[no-untyped-def]
    ns, ip = running_pod
    kube = FakeKube()
    kube.set_namespace("demo", {})
    kube.add_pod("demo", "web", "uid-web", ip)
    app = await start_agent(kube)
    async with aiohttp.ClientSession() as http, http.get(app.url("readiness") + "/readyz") as resp:
        assert resp.status == 200
    ztunnel.task = asyncio.create_task(ztunnel.run())
    await app.hub.wait_connected()
    assert not rules_in(ns)

    kube.set_namespace("demo", AMBIENT)  # label while the pod runs: enrolled without restart
    await kube.wait_redirection("demo/web", "enabled")
    assert rules_in(ns)
    await ztunnel.wait(lambda ev: any(isinstance(e, WorkloadAdded) and e.uid == "uid-web" for e in ev))
    node_sets = await node_cmd(app.settings.host_netns, "ipset", "list", "istio-inpod-probes-v4")
    assert ip in node_sets

    # the pod opts out while its namespace stays labelled, then opts back in
    kube.pods["demo/web"]["metadata"]["labels"] = {"istio.io/dataplane-mode": "none"}
    app.controller.pod_changed(kube.pods["demo/web"])
    await kube.wait_redirection("demo/web", None)
    assert not rules_in(ns)
    kube.pods["demo/web"]["metadata"]["labels"] = {}
    app.controller.pod_changed(kube.pods["demo/web"])
    await kube.wait_redirection("demo/web", "enabled")
    assert rules_in(ns)

    kube.set_namespace("demo", {})  # unlabel: every rule goes away
    await kube.wait_redirection("demo/web", None)
    assert not rules_in(ns)
    await ztunnel.wait(lambda ev: any(isinstance(e, WorkloadDeleted) and e.uid == "uid-web" for e in ev))

    async with aiohttp.ClientSession() as http, http.get(app.url("metrics") + "/metrics") as resp:
        text = await resp.text()
    assert "istio_cni_ambient_pods_enrolled 0.0" in text
    assert 'istio_cni_ambient_enrolments_total{op="unenrol",result="ok"} 2.0' in text
    assert "ztunnel_connected 1.0" in text
    assert "istio_cni_install_ready 1.0" in text
    assert 'istio_cni_installs_total{result="success"} 1.0' in text


async def test_plugin_add_and_restart_reconcile(start_agent, running_pod, agent_settings) -> None:  # type: ignore[no-untyped-def]
    ns, ip = running_pod
    kube = FakeKube()
    kube.set_namespace("demo", AMBIENT)
    kube.add_pod("demo", "api", "uid-api", ip)
    kube.pods["demo/api"]["status"] = {"phase": "Pending"}  # sandbox being created: no IP yet
    app = await start_agent(kube)
    env = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "c9",
        "CNI_NETNS": ns.path,
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": "K8S_POD_NAMESPACE=demo;K8S_POD_NAME=api;K8S_POD_UID=uid-api",
    }
    conf = {
        "cniVersion": "1.0.0",
        "name": "k8s",
        "type": "istio-cni",
        "cni_agent_run_dir": agent_settings.run_dir,
        "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": f"{ip}/24"}]},
    }
    out, code = await asyncio.to_thread(run_plugin, env, json.dumps(conf).encode())
    assert code == 0, out
    assert kube.redirection("demo/api") == "pending"  # no ztunnel yet: rules in, annotation says so
    assert rules_in(ns)

    await app.close()  # agent restarts; the pod keeps its rules
    kube.pods["demo/api"]["status"] = {"phase": "Running", "podIP": ip}
    app2 = await start_agent(kube)
    zt = Ztunnel(agent_settings.ztunnel_uds)
    zt.task = asyncio.create_task(zt.run())
    try:
        await kube.wait_redirection("demo/api", "enabled")
        await zt.wait(lambda ev: any(isinstance(e, WorkloadAdded) and e.uid == "uid-api" for e in ev))
        assert rules_in(ns)
        kube.pods.pop("demo/api")
        app2.controller.pod_changed({"metadata": {"namespace": "demo", "name": "api"}})  # pod deleted
        await zt.wait(lambda ev: any(isinstance(e, WorkloadDeleted) and e.uid == "uid-api" for e in ev))
        assert not app2.dataplane.pods
    finally:
        zt.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await zt.task


async def test_uninstall_cleans_node(start_agent, agent_settings) -> None:  # type: ignore[no-untyped-def]
    app = await start_agent(FakeKube())
    conf_file = Path(agent_settings.cni_conf_dir) / "10-k8s.conflist"
    assert [p["type"] for p in json.loads(conf_file.read_text())["plugins"]] == ["bridge", "istio-cni"]
    launcher = Path(agent_settings.cni_bin_dir) / "istio-cni"
    assert "-m istio_cni.plugin" in launcher.read_text()
    await app.uninstall()
    assert [p["type"] for p in json.loads(conf_file.read_text())["plugins"]] == ["bridge"]
    assert not launcher.exists()
    saved = await node_cmd(agent_settings.host_netns, "iptables-save", "-t", "nat")
    assert "ISTIO_POSTRT" not in saved


async def test_uninstall_command_cleans_node(start_agent, agent_settings) -> None:  # type: ignore[no-untyped-def]
    app = await start_agent(FakeKube())
    await app.close()  # an agent stopped for an upgrade leaves everything in place
    conf_file = Path(agent_settings.cni_conf_dir) / "10-k8s.conflist"
    assert "istio-cni" in conf_file.read_text()
    env = {
        "PATH": os.environ["PATH"],
        "CNI_BIN_DIR": agent_settings.cni_bin_dir,
        "CNI_CONF_DIR": agent_settings.cni_conf_dir,
        "CNI_AGENT_RUN_DIR": agent_settings.run_dir,
        "HOST_NETNS_PATH": agent_settings.host_netns,
    }
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "istio_cni", "uninstall", env=env)
    assert await proc.wait() == 0
    assert "istio-cni" not in conf_file.read_text()
    assert not (Path(agent_settings.cni_bin_dir) / "istio-cni").exists()
    assert "ISTIO_POSTRT" not in await node_cmd(agent_settings.host_netns, "iptables-save", "-t", "nat")
