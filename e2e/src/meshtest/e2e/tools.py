"""Where the repository, the charts and the helm/kubectl binaries are.

The binaries are the ones the local cluster builds (``meshtest.cluster.control.ensure_binaries`` puts them in
``<cache>/<k8s version>/bin``); the lookup is the cluster code's own :class:`ClusterLayout`, so tests find
them
exactly where CI's cluster bring-up leaves them. ``PATH`` is the fallback (a kind user's own helm).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from meshtest.cluster.config import K8S_VERSION, ClusterLayout

REPO = Path(__file__).resolve().parents[4]
HELM_DIR = REPO / "helm"
CHARTS = ("base", "istiod", "cni", "ztunnel", "ambient")
#: Kubernetes version offline renders assume (the local cluster's); helm's default is older
K8S_RENDER_VERSION = K8S_VERSION.lstrip("v")


class ToolMissing(RuntimeError):
    """A required binary is absent; the message says how to get it."""


def binary(name: str, layout: ClusterLayout | None = None) -> str:
    """Path of ``helm``/``kubectl``: the local cluster's build first, then PATH."""
    layout = layout or ClusterLayout.default()
    built = layout.binary(name)
    if built.exists():
        return str(built)
    found = shutil.which(name)
    if found:
        return found
    raise ToolMissing(
        f"{name} not found in {layout.bin} nor on PATH: build the cluster binaries with "
        "`uv run python -m meshtest.cluster build` (CI does this as part of the cluster bring-up)"
    )


def chart(name: str) -> Path:
    return HELM_DIR / name
