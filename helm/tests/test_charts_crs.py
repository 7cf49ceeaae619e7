"""Every custom resource this repository ships or applies (the e2e scenarios' Gateways, routes and policies,
the demo's, the Argo CD sample's) validates against the CRDs of our base chart, offline and strictly."""

from __future__ import annotations

import pytest
from meshtest.e2e import apps, charts
from meshtest.e2e.crdschema import CrdValidator
from meshtest.e2e.samples import scenario_resources


@pytest.fixture(scope="module")
def validator() -> CrdValidator:
    crds = charts.by_kind(
        charts.render("base", values={"gatewayAPI.enabled": True}), "CustomResourceDefinition"
    )
    return CrdValidator(crds)


def test_scenario_resources_fit_the_crds(validator: CrdValidator) -> None:
    for obj in scenario_resources():
        assert validator.errors(obj) == []


def test_strict_validation_catches_a_typo(validator: CrdValidator) -> None:
    bad = apps.allow_from("a", "srv", ["x"])
    bad["spec"]["rules"][0]["from"][0]["source"]["principal"] = ["typo"]
    bad["spec"]["action"] = "PERMIT"
    problems = " ".join(validator.errors(bad))
    assert "principal" in problems
    assert "PERMIT" in problems
