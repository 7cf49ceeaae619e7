"""The manifests this repository ships for users (samples/ambient-argo) and the custom resources the e2e
scenarios apply, loaded for the validation tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from meshtest.e2e import apps
from meshtest.e2e.tools import REPO

SAMPLE = REPO / "samples" / "ambient-argo"
ARGO_CRD = SAMPLE / "argocd" / "schema" / "applications.argoproj.io.yaml"
#: Argo CD's own CRDs come from its Go module (the proxy is a package registry, and `go` checks the module
#: against the checksum database); the version the sample's README is written against
ARGO_CD_MODULE = "github.com/argoproj/argo-cd/v3"
ARGO_CD_VERSION = "v3.2.0"
Obj = dict[str, Any]


def go_tool() -> str:
    """The ``go`` command: PATH first, then where scripts/setup puts one (Go's default install dir, or the
    toolchain it fetched)."""
    tools = Path(os.environ.get("AMBIENT_TOOLS", Path.home() / ".cache" / "ambient-tools"))
    for candidate in (shutil.which("go"), "/usr/local/go/bin/go", *map(str, tools.glob("go*/bin/go"))):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("no go command: run scripts/setup (it fetches Go when the machine has none)")


def upstream_argo_crds() -> list[Obj]:
    """Argo CD's published CRDs (Application, ApplicationSet, AppProject) at :data:`ARGO_CD_VERSION`, from the
    Go module cache (downloaded once through GOPROXY)."""
    proc = subprocess.run(
        [go_tool(), "mod", "download", "-json", f"{ARGO_CD_MODULE}@{ARGO_CD_VERSION}"],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        env={**os.environ, "GOFLAGS": "-mod=mod", "GO111MODULE": "on"},
        cwd=tempfile.gettempdir(),  # outside any module: a plain download
    )
    if proc.returncode != 0:
        raise RuntimeError(f"go mod download {ARGO_CD_MODULE}@{ARGO_CD_VERSION}: {proc.stdout}{proc.stderr}")
    crds = Path(json.loads(proc.stdout)["Dir"]) / "manifests" / "crds"
    return [
        d for name in ("application", "applicationset", "appproject") for d in docs(crds / f"{name}-crd.yaml")
    ]


def docs(path: Path) -> list[Obj]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def applications() -> list[Obj]:
    return [
        d for p in sorted([SAMPLE / "bootstrap.yaml", *(SAMPLE / "apps").glob("*.yaml")]) for d in docs(p)
    ]


def workloads() -> list[Obj]:
    return [d for p in sorted((SAMPLE / "workloads").glob("*.yaml")) for d in docs(p)]


def scenario_resources() -> list[Obj]:
    return [
        apps.waypoint(),
        apps.weighted_route("reviews", {"reviews-v1": 80, "reviews-v2": 20}),
        apps.allow_from("a", "srv", [apps.principal("ns", "good")]),
        apps.deny_path("d", "reviews", "/admin"),
        apps.strict(),
        apps.strict(selector_app="srv"),
    ]
