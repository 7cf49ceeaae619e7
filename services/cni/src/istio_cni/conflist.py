"""Chaining our entry into the node's CNI config (deploy-and-e2e.md §1.6, "How the conflist is handled").

Pure functions over file names and JSON text:

* :func:`pick_primary` chooses the file kubelet would use (``CNI_CONF_NAME`` or the first ``.conf`` /
  ``.conflist`` / ``.json`` in lexical order);
* :func:`chain` inserts or replaces the ``istio-cni`` entry as the last plugin; a single-plugin ``.conf`` is
  turned into a list and must be written under the ``.conflist`` name;
* :func:`unchain` removes the entry and leaves every other byte of meaning untouched.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

PLUGIN_TYPE = "istio-cni"
CONF_SUFFIXES = (".conf", ".conflist", ".json")


class ConfError(ValueError):
    """The primary CNI config cannot be read or patched (the message names the file)."""


def pick_primary(names: Iterable[str], wanted: str = "") -> str | None:
    """The config file kubelet uses, or None if there is none yet."""
    present = sorted(n for n in names if n.endswith(CONF_SUFFIXES) and not n.startswith("."))
    if wanted:
        stem = wanted.rsplit(".", 1)[0]
        for name in (wanted, f"{stem}.conflist", f"{stem}.conf"):  # tolerate a .conf/.conflist swap
            if name in present:
                return name
        return None
    return present[0] if present else None


def plugin_entry(
    *,
    exclude_namespaces: list[str],
    enablement_selectors: list[dict[str, Any]],
    agent_run_dir: str,
    kubeconfig: str,
    log_level: str = "info",
    dns_capture: bool = True,
    ambient_enabled: bool = True,
) -> dict[str, Any]:
    return {
        "type": PLUGIN_TYPE,
        "name": PLUGIN_TYPE,
        "ambient_enabled": ambient_enabled,
        "enablement_selectors": enablement_selectors,
        "exclude_namespaces": exclude_namespaces,
        "cni_agent_run_dir": agent_run_dir,
        "plugin_log_level": log_level,
        "native_nftables": False,
        "dns": {"capture": dns_capture},
        "kubernetes": {"kubeconfig": kubeconfig},
    }


def _load(name: str, text: str) -> dict[str, Any]:
    try:
        conf = json.loads(text)
    except ValueError as exc:
        raise ConfError(f"{name} is not valid JSON: {exc}") from None
    if not isinstance(conf, dict):
        raise ConfError(f"{name} is not a JSON object")
    return conf


def chain(name: str, text: str, entry: Mapping[str, Any]) -> tuple[str, str]:
    """(new file name, new text) with ``entry`` as the last plugin; unchanged text if already identical."""
    conf = _load(name, text)
    new_name = name
    if "plugins" not in conf:  # a single-plugin .conf: wrap it, as upstream does
        conf = {
            "cniVersion": conf.get("cniVersion", "1.0.0"),
            "name": conf.get("name", "k8s-pod-network"),
            "plugins": [{k: v for k, v in conf.items() if k != "cniVersion"}],
        }
        new_name = name.rsplit(".", 1)[0] + ".conflist"
    plugins = [p for p in conf["plugins"] if p.get("type") != PLUGIN_TYPE]
    plugins.append(dict(entry))
    conf["plugins"] = plugins
    return new_name, json.dumps(conf, indent=2) + "\n"


def is_chained(name: str, text: str, entry: Mapping[str, Any]) -> bool:
    """True when the file already ends with exactly ``entry``."""
    try:
        plugins = _load(name, text).get("plugins") or []
    except ConfError:
        return False
    return bool(plugins) and plugins[-1] == dict(entry)


def unchain(name: str, text: str) -> str | None:
    """The text without our entry, or None if there was none."""
    conf = _load(name, text)
    plugins = conf.get("plugins")
    if not isinstance(plugins, list) or not any(p.get("type") == PLUGIN_TYPE for p in plugins):
        return None
    conf["plugins"] = [p for p in plugins if p.get("type") != PLUGIN_TYPE]
    return json.dumps(conf, indent=2) + "\n"
