"""Rendering our Helm charts with the real helm binary, as ``helm template`` would for a user."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from meshtest.e2e.tools import K8S_RENDER_VERSION, binary, chart

Obj = dict[str, Any]


class RenderError(RuntimeError):
    """helm refused the values or the templates failed; the message is helm's."""


def set_args(values: Mapping[str, Any]) -> list[str]:
    """``--set-json`` flags for dotted keys (``{"istiod.revision": "canary"}``)."""
    import json

    out: list[str] = []
    for key, value in values.items():
        out += ["--set-json", f"{key}={json.dumps(value)}"]
    return out


def template(
    name: str,
    *,
    release: str = "ambient",
    namespace: str = "istio-system",
    values: Mapping[str, Any] | None = None,
    extra: Sequence[str] = (),
) -> str:
    argv = [
        binary("helm"),
        "template",
        release,
        str(chart(name)),
        "--namespace",
        namespace,
        "--kube-version",
        K8S_RENDER_VERSION,
        *set_args(values or {}),
        *extra,
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    if proc.returncode != 0:
        raise RenderError(_strip_walk(proc.stderr).strip())
    return proc.stdout


def render(name: str, **kwargs: Any) -> list[Obj]:
    return [doc for doc in yaml.safe_load_all(template(name, **kwargs)) if doc]


def lint(path: Path, values: Mapping[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [binary("helm"), "lint", "--strict", str(path), *set_args(values or {})]
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)


def _strip_walk(text: str) -> str:
    """Drop helm's notes about the umbrella chart's symlinked sub-charts (expected, not errors)."""
    return "\n".join(line for line in text.splitlines() if "found symbolic link in path" not in line)


def by_kind(objects: Sequence[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o.get("kind") == kind]


def one(objects: Sequence[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objects if o.get("kind") == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]
