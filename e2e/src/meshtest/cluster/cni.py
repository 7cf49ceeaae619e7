"""Pod networking through the real CNI plugins, invoked the way a container runtime does (CNI spec 1.0).

The node's network configuration is the lexicographically first ``*.conflist``/``*.conf``/``*.json`` in the
node's own ``/etc/cni/net.d`` (so a chained plugin that istio-cni inserts there runs on the next pod). ADD
runs each plugin of the list in order with ``prevResult`` chained through; DEL runs them in reverse with the
cached ADD
result, using the configuration cached at ADD time, like libcni. Loopback is set up first with its own
one-plugin list, as containerd does.

Plugins run inside a private mount namespace in which the node's ``/etc/cni/net.d``, ``/opt/cni/bin``,
``/var/lib/cni`` and the istio-cni/ztunnel socket directories are bind-mounted from the node root, so a plugin
sees exactly its node's files at the standard paths. The pure parts (configuration, environment) are separate
from :class:`CniRunner`, which executes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("meshtest.cluster.cni")

Obj = dict[str, Any]
CNI_BIN = "/opt/cni/bin"
#: Node directories a plugin sees at their standard path (also used for the pods' hostPath-free defaults).
NODE_PATHS = ("etc/cni/net.d", "opt/cni/bin", "var/lib/cni", "var/run/istio-cni", "var/run/ztunnel")
LOOPBACK_LIST: Obj = {"cniVersion": "1.0.0", "name": "cni-loopback", "plugins": [{"type": "loopback"}]}


class CniError(Exception):
    """A plugin failed; the message carries the plugin type and its error JSON (code, msg, details)."""


def load_conflist(conf_dir: Path) -> Obj:
    """The node's network configuration list: first file by name, a single ``.conf`` wrapped into a list."""
    candidates = sorted(p for p in conf_dir.iterdir() if p.suffix in (".conflist", ".conf", ".json"))
    for path in candidates:
        try:
            conf: Obj = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            log.warning("skipping unreadable CNI config %s: %s", path, err)
            continue
        if "plugins" in conf:
            return conf
        if "type" in conf:
            return {
                "cniVersion": conf.get("cniVersion", "1.0.0"),
                "name": conf.get("name", path.stem),
                "plugins": [conf],
            }
    raise CniError(f"no CNI network configuration in {conf_dir}")


def plugin_config(
    conflist: Obj, index: int, prev_result: Obj | None, runtime_config: Mapping[str, Any]
) -> Obj:
    """stdin of the ``index``-th plugin: its config plus the list's name/version, runtimeConfig for the
    capabilities it declares, and the previous plugin's result."""
    plugin = dict(conflist["plugins"][index])
    conf: Obj = {"cniVersion": conflist.get("cniVersion", "1.0.0"), "name": conflist["name"], **plugin}
    caps = [cap for cap, on in (plugin.get("capabilities") or {}).items() if on]
    wanted = {cap: runtime_config[cap] for cap in caps if cap in runtime_config}
    if wanted:
        conf["runtimeConfig"] = wanted
    if prev_result is not None:
        conf["prevResult"] = prev_result
    return conf


def cni_env(
    command: str, container_id: str, netns: str, ifname: str, args: Mapping[str, str]
) -> dict[str, str]:
    return {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": netns,
        "CNI_IFNAME": ifname,
        "CNI_PATH": CNI_BIN,
        "CNI_ARGS": ";".join(f"{k}={v}" for k, v in args.items()),
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    }


def pod_args(namespace: str, name: str, uid: str, container_id: str) -> dict[str, str]:
    """CNI_ARGS as the kubelet/containerd pass them (istio-cni reads K8S_POD_NAME/NAMESPACE from here)."""
    return {
        "IgnoreUnknown": "1",
        "K8S_POD_NAMESPACE": namespace,
        "K8S_POD_NAME": name,
        "K8S_POD_INFRA_CONTAINER_ID": container_id,
        "K8S_POD_UID": uid,
    }


def result_ips(result: Obj) -> list[str]:
    """Pod IPs (without prefix) from a CNI result, on the container's interfaces (or all when unspecified)."""
    interfaces = result.get("interfaces", [])
    ips = []
    for ip in result.get("ips", []):
        idx = ip.get("interface")
        if idx is None or (idx < len(interfaces) and interfaces[idx].get("sandbox")):
            ips.append(ip["address"].split("/")[0])
    return ips


def node_wrapper(node_root: Path) -> list[str]:
    """argv prefix that runs a program in a slave mount namespace seeing the node's CNI and socket dirs."""
    binds = " && ".join(f"mkdir -p /{p} && mount --bind {node_root / p} /{p}" for p in NODE_PATHS)
    return ["unshare", "-m", "--propagation", "slave", "--", "sh", "-c", f'{binds} && exec "$@"', "cni-node"]


@dataclass(frozen=True, slots=True)
class Attachment:
    """What ADD produced, cached for DEL."""

    conflist: Obj
    result: Obj
    ifname: str


class CniRunner:
    def __init__(self, node_root: Path, timeout: float = 60.0, node_netns: str | None = None) -> None:
        self.node_root = node_root
        self.node_netns = node_netns  # None: plugins run in the caller's netns (the agent runs in its node's)
        self.timeout = timeout
        self.cache_dir = node_root / "var/lib/cni/results"

    async def _exec(self, plugin_type: str, env: Mapping[str, str], stdin: Obj) -> Obj:
        argv = [*node_wrapper(self.node_root), f"{CNI_BIN}/{plugin_type}"]
        if self.node_netns:
            argv = ["nsenter", f"--net={self.node_netns}", "--", *argv]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=dict(env),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(json.dumps(stdin).encode()), self.timeout)
        if proc.returncode != 0:
            raise CniError(
                f"CNI plugin {plugin_type} {env['CNI_COMMAND']} failed ({proc.returncode}): "
                f"{out.decode(errors='replace').strip()} {err.decode(errors='replace').strip()}"
            )
        if err.strip():
            log.debug("cni %s stderr: %s", plugin_type, err.decode(errors="replace").strip())
        return json.loads(out) if out.strip() else {}

    async def _run_list(
        self,
        command: str,
        *,
        conflist: Obj,
        container_id: str,
        netns: str,
        ifname: str,
        args: Mapping[str, str],
        runtime_config: Mapping[str, Any],
        prev: Obj | None,
    ) -> Obj | None:
        env = cni_env(command, container_id, netns, ifname, args)
        indexes: Sequence[int] = range(len(conflist["plugins"]))
        if command == "DEL":
            indexes = list(reversed(indexes))
        result = prev
        errors = []
        for index in indexes:
            stdin = plugin_config(conflist, index, result if command == "ADD" else prev, runtime_config)
            plugin_type = conflist["plugins"][index]["type"]
            try:
                out = await self._exec(plugin_type, env, stdin)
            except CniError as err:
                if command == "ADD":
                    raise
                errors.append(str(err))  # DEL keeps going so every plugin can release what it holds
                continue
            if command == "ADD":
                result = out
        if errors:
            raise CniError("; ".join(errors))
        return result

    async def add(
        self,
        container_id: str,
        netns: str,
        args: Mapping[str, str],
        runtime_config: Mapping[str, Any] | None = None,
    ) -> Attachment:
        """Attach the sandbox. The configuration is cached *before* ADD so that, if ADD fails,
        :meth:`delete` can still undo what the plugins that did run set up (then the caller retries, as the
        kubelet does)."""
        conflist = load_conflist(self.node_root / "etc/cni/net.d")
        runtime = dict(runtime_config or {})
        self._write_cache(
            container_id,
            {
                "conflist": conflist,
                "result": None,
                "ifname": "eth0",
                "args": dict(args),
                "runtimeConfig": runtime,
            },
        )
        await self._run_list(
            "ADD",
            conflist=LOOPBACK_LIST,
            container_id=container_id,
            netns=netns,
            ifname="lo",
            args=args,
            runtime_config={},
            prev=None,
        )
        result = await self._run_list(
            "ADD",
            conflist=conflist,
            container_id=container_id,
            netns=netns,
            ifname="eth0",
            args=args,
            runtime_config=runtime,
            prev=None,
        )
        attachment = Attachment(conflist, result or {}, "eth0")
        self._write_cache(
            container_id,
            {
                "conflist": conflist,
                "result": attachment.result,
                "ifname": "eth0",
                "args": dict(args),
                "runtimeConfig": runtime,
            },
        )
        return attachment

    def _write_cache(self, container_id: str, data: Obj) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        (self.cache_dir / f"{container_id}.json").write_text(json.dumps(data))

    async def delete(self, container_id: str, netns: str) -> None:
        cached = self.cache_dir / f"{container_id}.json"
        try:
            data = json.loads(cached.read_text())
        except (OSError, ValueError):
            log.warning("no cached CNI result for %s; skipping DEL", container_id)
            return
        try:
            await self._run_list(
                "DEL",
                conflist=data["conflist"],
                container_id=container_id,
                netns=netns,
                ifname=data["ifname"],
                args=data["args"],
                runtime_config=data.get("runtimeConfig", {}),
                prev=data["result"],
            )
        finally:
            cached.unlink(missing_ok=True)
