"""Sans-IO core of the CNI plugin: environment + stdin in, result or error out (CNI spec 1.0).

:func:`parse_request` validates the invocation, :func:`add_event` says whether ADD has to involve the node
agent (and with what payload), and :func:`render_result` / :func:`render_error` produce the bytes for stdout.
Errors are :class:`CniError` carrying the spec's error code, so the shell only prints and exits.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION")

# CNI spec error codes (SPEC.md "Error"); 11 tells the runtime to retry the sandbox later.
ERR_INCOMPATIBLE_VERSION = 1
ERR_UNSUPPORTED_FIELD = 2
ERR_INVALID_ENV = 4
ERR_IO = 5
ERR_DECODE = 6
ERR_INVALID_CONFIG = 7
ERR_TRY_AGAIN_LATER = 11
ERR_INTERNAL = 100  # plugin-specific (100+): a bug or an unforeseen input; the ADD fails


class CniError(Exception):
    """An error to report per the CNI spec: ``{"cniVersion", "code", "msg", "details"}`` on stdout."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details


@dataclass(frozen=True, slots=True)
class PluginConfig:
    """The keys the node agent writes into our conflist entry (behaviour.md §3.1)."""

    name: str
    cni_version: str
    ambient_enabled: bool = True
    exclude_namespaces: tuple[str, ...] = ()
    enablement_selectors: tuple[Mapping[str, Any], ...] = ()
    cni_agent_run_dir: str = "/var/run/istio-cni"
    plugin_log_level: str = "info"
    kubeconfig: str = ""


@dataclass(frozen=True, slots=True)
class CniRequest:
    command: str
    container_id: str
    netns: str
    ifname: str
    args: Mapping[str, str]
    config: PluginConfig
    prev_result: Mapping[str, Any] | None = None
    raw: Mapping[str, Any] = field(default_factory=dict)

    @property
    def pod_name(self) -> str:
        return self.args.get("K8S_POD_NAME", "")

    @property
    def pod_namespace(self) -> str:
        return self.args.get("K8S_POD_NAMESPACE", "")


def parse_args(text: str) -> dict[str, str]:
    """``CNI_ARGS``: ``K=V;K=V``."""
    out: dict[str, str] = {}
    for part in text.split(";"):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise CniError(ERR_INVALID_ENV, f"CNI_ARGS entry {part!r} is not KEY=VALUE")
        out[key] = value
    return out


def parse_request(env: Mapping[str, str], stdin: bytes) -> CniRequest:
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(ERR_INVALID_ENV, f"unsupported CNI_COMMAND {command!r}")
    if command == "VERSION":
        return CniRequest(command, "", "", "", {}, PluginConfig("", _version_of(stdin)))
    try:
        raw = json.loads(stdin or b"{}")
    except ValueError as exc:
        raise CniError(ERR_DECODE, f"network configuration is not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise CniError(ERR_DECODE, "network configuration must be a JSON object")
    config = _config(raw)
    for var in ("CNI_CONTAINERID",) + (("CNI_NETNS", "CNI_IFNAME") if command != "DEL" else ()):
        if not env.get(var):
            raise CniError(ERR_INVALID_ENV, f"required environment variable {var} is not set")
    prev = raw.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise CniError(ERR_DECODE, "prevResult must be an object")
    return CniRequest(
        command,
        env.get("CNI_CONTAINERID", ""),
        env.get("CNI_NETNS", ""),
        env.get("CNI_IFNAME", ""),
        parse_args(env.get("CNI_ARGS", "")),
        config,
        prev,
        raw,
    )


def _version_of(stdin: bytes) -> str:
    try:
        raw = json.loads(stdin or b"{}")
    except ValueError:
        return "1.0.0"
    return str(raw.get("cniVersion", "1.0.0")) if isinstance(raw, dict) else "1.0.0"


def _config(raw: Mapping[str, Any]) -> PluginConfig:
    version = str(raw.get("cniVersion", ""))
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            ERR_INCOMPATIBLE_VERSION,
            f"istio-cni does not support cniVersion {version!r}",
            f"supported: {', '.join(SUPPORTED_VERSIONS)}",
        )
    selectors = raw.get("enablement_selectors") or []
    excluded = raw.get("exclude_namespaces") or []
    if not isinstance(selectors, list) or not isinstance(excluded, list):
        raise CniError(ERR_INVALID_CONFIG, "enablement_selectors and exclude_namespaces must be lists")
    return PluginConfig(
        name=str(raw.get("name", "")),
        cni_version=version,
        ambient_enabled=bool(raw.get("ambient_enabled", True)),
        exclude_namespaces=tuple(str(n) for n in excluded),
        enablement_selectors=tuple(selectors),
        cni_agent_run_dir=str(raw.get("cni_agent_run_dir") or "/var/run/istio-cni"),
        plugin_log_level=str(raw.get("plugin_log_level", "info")),
        kubeconfig=str((raw.get("kubernetes") or {}).get("kubeconfig", "") or raw.get("kubeconfig", "")),
    )


def add_event(req: CniRequest) -> dict[str, Any] | None:
    """The payload for the node agent, or None when this ADD has nothing to do with the mesh."""
    if not req.config.ambient_enabled or not req.pod_name or not req.pod_namespace:
        return None
    if req.pod_namespace in req.config.exclude_namespaces:
        return None
    ips = [ip.get("address", "").split("/")[0] for ip in (req.prev_result or {}).get("ips", [])]
    return {
        "container_id": req.container_id,
        "netns": req.netns,
        "ifname": req.ifname,
        "pod_name": req.pod_name,
        "pod_namespace": req.pod_namespace,
        "pod_uid": req.args.get("K8S_POD_UID", ""),
        "ips": [ip for ip in ips if ip],
    }


def render_result(req: CniRequest) -> bytes:
    """stdout for a successful command: ADD passes ``prevResult`` through; DEL and CHECK print nothing."""
    if req.command == "VERSION":
        return json.dumps(
            {"cniVersion": req.config.cni_version, "supportedVersions": list(SUPPORTED_VERSIONS)}
        ).encode()
    if req.command != "ADD":
        return b""
    result = dict(req.prev_result or {})
    result["cniVersion"] = req.config.cni_version
    return json.dumps(result).encode()


def render_error(err: CniError, cni_version: str = "1.0.0") -> bytes:
    body: dict[str, Any] = {"cniVersion": cni_version, "code": err.code, "msg": err.msg}
    if err.details:
        body["details"] = err.details
    return json.dumps(body).encode()
