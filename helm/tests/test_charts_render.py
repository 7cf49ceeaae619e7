"""Chart tests without a cluster: ``helm lint --strict``, generated schemas up to date, renders with several
value sets checked against the Kubernetes API field schema, the default render against a golden file
(``AMBIENT_REGEN_GOLDEN=1`` rewrites it), and typos rejected by values.schema.json with a message naming
them."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
import yaml
from meshtest.e2e import charts, k8sschema
from meshtest.e2e.tools import CHARTS, HELM_DIR, chart

GOLDEN = HELM_DIR / "tests" / "golden" / "ambient-default.yaml"

VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "revision-canary": {"istiod.revision": "canary", "ztunnel.revision": "canary"},
    "custom-images": {
        "global.hub": "registry.example/mesh",
        "global.tag": "1.2.3",
        "global.variant": "debug",
        "ztunnel.image": "registry.other/zt@sha256:" + "a" * 64,
    },
    "renamed-ztunnel": {"ztunnel.resourceName": "zt", "istiod.trustedZtunnelName": "zt"},
    "no-autoscale-ha": {"istiod.autoscaleEnabled": False, "istiod.replicaCount": 2},
    "cni-not-ambient": {"cni.ambient.enabled": False, "cni.ambient.shareHostNetworkNamespace": False},
    "no-gateway-api": {
        "base.gatewayAPI.enabled": False,
        "base.base.excludedCRDs": ["telemetries.telemetry.istio.io"],
    },
    "tuned": {
        "ztunnel.resources.limits.cpu": "2",
        "ztunnel.logLevel": "debug",
        "global.logAsJson": True,
        "istiod.env.PILOT_DEBOUNCE_AFTER": "200ms",
        "istiod.meshConfig.trustDomain": "example.org",
        "cni.excludeNamespaces": ["kube-system", "monitoring"],
        "ztunnel.tolerations": [],
        "istiod.nodeSelector": {"disk": "ssd"},
    },
}


@pytest.mark.parametrize("name", CHARTS)
def test_lint_strict(name: str) -> None:
    proc = charts.lint(chart(name))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_schemas_generated_from_helm_schemas_py() -> None:
    proc = subprocess.run(
        [sys.executable, str(HELM_DIR / "schemas.py"), "--check"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout


@pytest.mark.parametrize("case", sorted(VALUE_SETS))
def test_render_fits_kubernetes_schema(case: str) -> None:
    objects = charts.render("ambient", values=VALUE_SETS[case])
    problems = [p for o in objects for p in k8sschema.validate(o)]
    assert problems == []
    names = [(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]) for o in objects]
    assert len(names) == len(set(names)), "duplicate objects"


def test_default_render_matches_golden() -> None:
    text = charts.template("ambient")
    if os.environ.get("AMBIENT_REGEN_GOLDEN") == "1":
        GOLDEN.write_text(text)
    assert GOLDEN.exists(), "no golden file: run with AMBIENT_REGEN_GOLDEN=1"
    assert text == GOLDEN.read_text(), "render changed: review, then AMBIENT_REGEN_GOLDEN=1 to accept"


def test_each_chart_installs_alone_with_upstream_release_names() -> None:
    for name, release in (
        ("base", "istio-base"),
        ("istiod", "istiod"),
        ("cni", "istio-cni"),
        ("ztunnel", "ztunnel"),
    ):
        assert charts.render(name, release=release, values={"profile": "ambient"} if name != "base" else {})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"istod": {"enabled": False}}, "'istod'"),
        ({"ztunnel.resourcesName": "x"}, "'resourcesName'"),
        ({"global.hubb": "x"}, "'hubb'"),
        ({"istiod.profile": "ambiant"}, "/profile"),
        ({"cni.ambient.enable": True}, "'enable'"),
        ({"istiod.env.PILOT_X": 1}, "PILOT_X"),
        ({"istiod.revision": "Canary_1"}, "revision"),
        ({"global.imagePullPolicy": "Sometimes"}, "imagePullPolicy"),
        ({"ztunnel.tolerations": [{"operator": "Maybe"}]}, "operator"),
    ],
)
def test_schema_rejects_typos_naming_them(values: dict[str, Any], message: str) -> None:
    with pytest.raises(charts.RenderError) as err:
        charts.render("ambient", values=values)
    assert message in str(err.value), str(err.value)


def test_unknown_profile_fails_on_direct_install() -> None:
    with pytest.raises(charts.RenderError, match="profile"):
        charts.render("istiod", values={"profile": "demo"})


def test_golden_file_is_yaml() -> None:
    assert [d for d in yaml.safe_load_all(GOLDEN.read_text()) if d]


GATEWAY_API_CRDS = {
    f"{plural}.gateway.networking.k8s.io"
    for plural in ("gatewayclasses", "gateways", "httproutes", "grpcroutes", "referencegrants")
}


def test_offline_render_has_every_gateway_api_crd() -> None:
    """The chart leaves a Gateway API CRD another owner has in the cluster alone (``lookup``), but offline
    renders (``helm template``: the golden file, Argo CD) see no cluster and so always contain all of them."""
    crds = {
        c["metadata"]["name"] for c in charts.by_kind(charts.render("ambient"), "CustomResourceDefinition")
    }
    assert crds >= GATEWAY_API_CRDS
    alone = charts.render("base", release="istio-base", values={"gatewayAPI.enabled": True})
    assert {c["metadata"]["name"] for c in alone} >= GATEWAY_API_CRDS
    off = charts.render("ambient", values={"base.gatewayAPI.enabled": False})
    assert not {c["metadata"]["name"] for c in off} & GATEWAY_API_CRDS
