"""The Argo CD reference (samples/ambient-argo): Applications valid against Argo CD's own CRDs (from its Go
module) and our stricter Application schema, chart paths that exist, Helm values every chart's schema accepts
and renders, ordered sync waves, workloads valid against the base chart's CRDs and the Kubernetes schema."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
from meshtest.e2e import charts, k8sschema
from meshtest.e2e.crdschema import CrdValidator
from meshtest.e2e.samples import ARGO_CRD, applications, docs, upstream_argo_crds, workloads
from meshtest.e2e.tools import REPO

Obj = dict[str, Any]


def wave(obj: Obj) -> int:
    return int(obj["metadata"].get("annotations", {}).get("argocd.argoproj.io/sync-wave", "0"))


def test_applications_fit_the_application_schema() -> None:
    validator = CrdValidator(docs(ARGO_CRD))
    apps = applications()
    assert len(apps) == 6
    for app in apps:
        assert validator.errors(app) == []


def test_applications_fit_argo_cds_own_crds() -> None:
    """Against the CRDs Argo CD publishes (from its Go module), with strict field validation: a misspelt or
    misplaced field in the sample fails here as ``kubectl apply --validate=strict`` would fail it."""
    validator = CrdValidator(upstream_argo_crds())
    apps = applications()
    assert apps
    for app in apps:
        assert validator.knows(app), (app["apiVersion"], app["kind"])
        assert validator.errors(app) == []
    broken = json.loads(json.dumps(apps[0]))
    broken["spec"]["syncPolicy"]["automatedd"] = {}
    assert any("automatedd" in e for e in validator.errors(broken))


def test_every_path_exists_and_every_helm_value_is_a_chart_value() -> None:
    for app in applications():
        source = app["spec"]["source"]
        assert source["repoURL"].endswith("/ambient-mesh.git")
        target = REPO / source["path"]
        assert target.is_dir(), source["path"]
        if "helm" not in source:
            continue
        assert (target / "Chart.yaml").is_file()
        values = source["helm"].get("valuesObject", {})
        schema = json.loads((target / "values.schema.json").read_text())
        errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(values)]
        assert errors == [], f"{app['metadata']['name']}: {errors}"
        flat = dict(flatten(values))
        rendered = charts.render(target.name, release=source["helm"]["releaseName"], values=flat)
        assert all(k8sschema.validate(o) == [] for o in rendered)


def flatten(values: Obj, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in values.items():
        if isinstance(value, dict) and value:
            out += flatten(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", value))
    return out


def test_waves_order_crds_control_plane_cni_ztunnel_apps() -> None:
    by_path = {
        a["spec"]["source"]["path"]: wave(a)
        for a in applications()
        if a["metadata"]["name"] != "ambient-root"
    }
    order = ["helm/base", "helm/istiod", "helm/cni", "helm/ztunnel", "samples/ambient-argo/workloads"]
    assert [by_path[p] for p in order] == sorted(by_path[p] for p in order)
    assert len({by_path[p] for p in order}) == len(order), "each step needs its own wave"
    for app in applications():
        policy = app["spec"]["syncPolicy"]
        assert policy["automated"]["selfHeal"] is True
        assert policy["retry"]["limit"] >= 1
    base = next(a for a in applications() if a["spec"]["source"]["path"] == "helm/base")
    assert "ServerSideApply=true" in base["spec"]["syncPolicy"]["syncOptions"]
    assert base["spec"]["syncPolicy"]["automated"]["prune"] is False


def test_ztunnel_talks_to_a_control_plane_the_sample_installs() -> None:
    revisions = {
        a["spec"]["source"]["helm"]["valuesObject"].get("revision")
        for a in applications()
        if a["spec"]["source"].get("path") == "helm/istiod"
    }
    zt = next(a for a in applications() if a["spec"]["source"].get("path") == "helm/ztunnel")
    assert zt["spec"]["source"]["helm"]["valuesObject"]["revision"] in revisions
    gateways = [w for w in workloads() if w["kind"] == "Gateway"]
    assert gateways
    assert all(g["metadata"]["labels"]["istio.io/rev"] in revisions for g in gateways)


def test_workloads_enrolled_with_a_used_waypoint() -> None:
    objs = workloads()
    ns = next(o for o in objs if o["kind"] == "Namespace")
    assert ns["metadata"]["labels"]["istio.io/dataplane-mode"] == "ambient"
    waypoints = {o["metadata"]["name"] for o in objs if o["kind"] == "Gateway"}
    used = {
        o["metadata"].get("labels", {}).get("istio.io/use-waypoint") for o in objs if o["kind"] == "Service"
    }
    assert waypoints <= used, "a waypoint no Service uses"
    crds = CrdValidator(
        charts.by_kind(charts.render("base", values={"gatewayAPI.enabled": True}), "CustomResourceDefinition")
    )
    for obj in objs:
        problems = crds.errors(obj) if crds.knows(obj) else k8sschema.validate(obj)
        assert problems == []
