"""The manifests this repository ships for users (samples/ambient-argo) and the custom resources the e2e
scenarios apply, loaded for the validation tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from meshtest.e2e import apps
from meshtest.e2e.tools import REPO

SAMPLE = REPO / "samples" / "ambient-argo"
ARGO_CRD = SAMPLE / "argocd" / "schema" / "applications.argoproj.io.yaml"
Obj = dict[str, Any]


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
