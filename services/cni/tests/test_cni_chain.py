"""The plugin in a real CNI chain: Debian's bridge + host-local, then ``istio-cni`` (installed by the agent's
installer into a temp bin dir, chained into a temp conflist). A tiny runtime here invokes each plugin per the
CNI spec (env + stdin, prevResult threaded through), inside a throw-away "node" netns.
"""

# Small temp files in test bodies; blocking reads there are fine.
# ruff: noqa: ASYNC240

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from istio_cni.conflist import plugin_entry
from istio_cni.events import AddOutcome, PluginAddEvent, PluginEventServer
from istio_cni.install import Installer

pytestmark = pytest.mark.root
DEBIAN_CNI = "/usr/lib/cni"


async def invoke(
    node_ns: str,
    bin_path: str,
    plugin: dict[str, Any],
    *,
    net: dict[str, Any],
    env: dict[str, str],
    prev: Any,
) -> tuple[int, dict[str, Any] | None]:
    conf = dict(plugin, cniVersion=net["cniVersion"], name=net["name"])
    if prev is not None:
        conf["prevResult"] = prev
    exe = next(
        os.path.join(d, plugin["type"])
        for d in bin_path.split(":")
        if os.path.exists(os.path.join(d, plugin["type"]))
    )
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", node_ns, exe,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**env, "CNI_PATH": bin_path, "PATH": os.environ["PATH"]},
    )  # fmt: skip
    out, err = await proc.communicate(json.dumps(conf).encode())
    if proc.returncode:
        return proc.returncode, {"stdout": out.decode(), "stderr": err.decode()}
    return 0, (json.loads(out) if out.strip() else None)


async def run_chain(
    node_ns: str,
    bin_path: str,
    conf_file: str,
    command: str,
    *,
    netns: str,
    cid: str,
    prev: Any = None,
    steps: list[tuple[str, Any, Any]] | None = None,
) -> Any:
    """ADD/CHECK in order, DEL in reverse; returns the final result. Raises on a plugin error.

    ``steps`` collects (plugin type, prevResult given, output) per plugin.
    """
    net = json.loads(Path(conf_file).read_text())
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": netns,
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web-{cid};K8S_POD_UID=uid-{cid}",
    }
    plugins = net["plugins"] if command != "DEL" else list(reversed(net["plugins"]))
    result = prev
    for plugin in plugins:
        code, out = await invoke(node_ns, bin_path, plugin, net=net, env=env, prev=result)
        if steps is not None:
            steps.append((plugin["type"], result, out))
        if code != 0:
            raise AssertionError(f"{plugin['type']} {command} failed: {out}")
        if command == "ADD":
            result = out
    return result


@pytest.fixture
def chain_env(tmp_path: Path, make_netns: Callable[[], Any], subnet: str) -> dict[str, Any]:
    node, pod = make_netns(), make_netns()
    bin_dir, conf_dir, run_dir = tmp_path / "bin", tmp_path / "net.d", tmp_path / "run"
    for d in (bin_dir, conf_dir, run_dir):
        d.mkdir()
    primary = {
        "cniVersion": "1.0.0",
        "name": "cni-test",
        "plugins": [
            {
                "type": "bridge",
                "bridge": f"cni-br{secrets.token_hex(3)}",
                "isGateway": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": f"{subnet}.0/24"}]],
                    "dataDir": str(tmp_path / "ipam"),
                },
            }
        ],
    }
    (conf_dir / "10-bridge.conflist").write_text(json.dumps(primary))
    entry = plugin_entry(
        exclude_namespaces=["kube-system"],
        enablement_selectors=[],
        agent_run_dir=str(run_dir),
        kubeconfig=str(run_dir / "istio-cni-kubeconfig"),
    )
    installer = Installer(str(bin_dir), str(conf_dir), str(run_dir), sys.executable, entry)
    return {"node": node, "pod": pod, "installer": installer, "primary": primary, "run_dir": run_dir}


async def test_plugin_in_bridge_chain(chain_env: dict[str, Any]) -> None:
    installer: Installer = chain_env["installer"]
    assert installer.install()
    assert installer.chained_into is not None
    conf_file = installer.chained_into
    chained = json.loads(Path(conf_file).read_text())
    assert [p["type"] for p in chained["plugins"]] == ["bridge", "istio-cni"]
    assert chained["plugins"][0] == chain_env["primary"]["plugins"][0]  # primary untouched
    bin_path = f"{DEBIAN_CNI}:{installer.bin_dir}"
    node, pod = chain_env["node"], chain_env["pod"]
    seen: list[PluginAddEvent] = []

    async def handler(event: PluginAddEvent) -> AddOutcome:
        seen.append(event)
        return AddOutcome(True)

    server = PluginEventServer(str(chain_env["run_dir"] / "pluginevent.sock"), handler)
    await server.start()
    try:
        # what bridge alone returns is what the whole chain must return (prevResult passed through)
        steps: list[tuple[str, Any, Any]] = []
        result = await run_chain(node.name, bin_path, conf_file, "ADD", netns=pod.path, cid="c1", steps=steps)
        (_, _, from_bridge), (ours, given, returned) = steps
        assert ours == "istio-cni"
        assert given == from_bridge
        assert returned == from_bridge  # prevResult passed through untouched
        assert result["ips"][0]["address"].startswith(
            chain_env["primary"]["plugins"][0]["ipam"]["ranges"][0][0]["subnet"][:-4]
        )
        assert [(e.pod_namespace, e.pod_name, e.pod_uid, e.netns) for e in seen] == [
            ("demo", "web-c1", "uid-c1", pod.path)
        ]
        assert seen[0].ips == (result["ips"][0]["address"].split("/")[0],)
        assert "eth0" in pod.sh("ip", "-o", "link")
        await run_chain(node.name, bin_path, conf_file, "CHECK", netns=pod.path, cid="c1", prev=result)
        await run_chain(node.name, bin_path, conf_file, "DEL", netns=pod.path, cid="c1", prev=result)
    finally:
        await server.close()

    # agent gone: the chain fails closed, with a CNI error naming the agent
    with pytest.raises(AssertionError, match="node agent"):
        await run_chain(node.name, bin_path, conf_file, "ADD", netns=pod.path, cid="c2")
    installer.uninstall()
    assert json.loads(Path(conf_file).read_text()) == chain_env["primary"]
    assert not os.path.exists(installer.launcher_path)


async def test_installer_restores_entry_when_config_rewritten(chain_env: dict[str, Any]) -> None:
    installer: Installer = chain_env["installer"]
    ready = asyncio.Event()
    task = asyncio.create_task(installer.watch(ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        path = Path(installer.chained_into or "")
        for _ in range(2):  # a primary CNI rewriting its file, twice
            path.write_text(json.dumps(chain_env["primary"]))
            async with asyncio.timeout(10):
                while "istio-cni" not in path.read_text():
                    await installer.wait_changed()
        os.unlink(installer.launcher_path)
        async with asyncio.timeout(10):
            while not os.path.exists(installer.launcher_path):
                await installer.wait_changed()
        assert installer.repairs >= 3
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    installer.uninstall()
    assert json.loads(path.read_text()) == chain_env["primary"]


async def test_installer_waits_out_a_broken_primary_config(chain_env: dict[str, Any]) -> None:
    installer: Installer = chain_env["installer"]
    path = Path(installer.conf_dir) / "10-bridge.conflist"
    path.write_text("{ half-written")
    ready = asyncio.Event()
    task = asyncio.create_task(installer.watch(ready))
    try:
        async with asyncio.timeout(10):
            while installer.failures == 0:
                await installer.wait_changed()
        assert not ready.is_set()
        path.write_text(json.dumps(chain_env["primary"]))  # the primary CNI finishes writing it
        await asyncio.wait_for(ready.wait(), 10)
        assert "istio-cni" in path.read_text()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    installer.uninstall()


async def test_two_fighting_installers_back_off(chain_env: dict[str, Any]) -> None:
    """Two agents with different entries on one node must not spin rewriting the file at each other."""
    first: Installer = chain_env["installer"]
    second = Installer(
        first.bin_dir,
        first.conf_dir,
        first.run_dir,
        first.python,
        dict(first.entry, plugin_log_level="debug"),
    )
    tasks = [asyncio.create_task(first.watch()), asyncio.create_task(second.watch())]
    try:
        async with asyncio.timeout(20):
            while not (first.backoff_s or second.backoff_s):
                await first.wait_changed()
        assert first.repairs + second.repairs < 100
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with pytest.raises(asyncio.CancelledError):
                await task
    first.uninstall()
