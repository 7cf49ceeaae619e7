"""Session set-up of the e2e suite: pick the provider (printed), bring the cluster up, install the mesh with
``helm install ambient`` (from the previous chart version, then ``helm upgrade``), and per test a set of
namespaces that are deleted afterwards. A failing test gets the diagnostics dump attached.

The cluster and mesh fixtures are package-scoped: the mesh is uninstalled (and the machine-wide mesh lock
released) as soon as this directory's tests are done, not at the end of a larger ``pytest -m cluster`` run
whose later tests may need the cluster without it."""

from __future__ import annotations

import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest
from meshtest.e2e import diagnostics, providers
from meshtest.e2e.apps import AMBIENT, namespace
from meshtest.e2e.mesh import Mesh, exclusive
from meshtest.kube import KubeCluster

#: the chart commit the suite upgrades from: the first one that installs on a real API server (ee5c3d9
#: lacked the api-approved annotation on the Gateway API CRDs); bump when the chart version changes
PREVIOUS_CHARTS = os.environ.get("AMBIENT_E2E_UPGRADE_FROM", "12b2449")
_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()
_SESSION: dict[str, float] = {}


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


def _say(config: pytest.Config, text: str) -> None:
    providers.announce(config, text)


@pytest.fixture(scope="session")
def provider(pytestconfig: pytest.Config) -> providers.Provider:
    chosen, why = providers.select()
    _say(pytestconfig, f"\ne2e provider: {chosen.name} ({why})")
    return chosen


@pytest.fixture(scope="package")
def kube(provider: providers.Provider, pytestconfig: pytest.Config) -> Iterator[KubeCluster]:
    start = time.monotonic()
    cluster = provider.up()
    _SESSION["cluster up"] = time.monotonic() - start
    try:
        yield cluster
    finally:
        provider.down()


@pytest.fixture(scope="package")
def mesh(kube: KubeCluster, provider: providers.Provider, pytestconfig: pytest.Config) -> Iterator[Mesh]:
    lock_dir = kube.layout.cache if kube.layout is not None else Path(tempfile.gettempdir())
    with exclusive(lock_dir):
        yield from _mesh_session(kube, provider, pytestconfig)


def _mesh_session(
    kube: KubeCluster, provider: providers.Provider, pytestconfig: pytest.Config
) -> Iterator[Mesh]:
    installed = Mesh(kube, values=provider.helm_values, read_node_files=provider.node_files)
    if installed.installed():  # left by a previous run or by scripts/demo: upgrade it in place
        installed.helm_install(installed_chart(), upgrade=True)
        installed.wait_ready()
    else:
        installed.install(previous=PREVIOUS_CHARTS or None)
    _say(pytestconfig, "mesh: " + ", ".join(f"{k} {v:.1f}s" for k, v in installed.timings.items()))
    try:
        yield installed
    finally:
        if os.environ.get("AMBIENT_E2E_KEEP_MESH") != "1":
            installed.uninstall()


def installed_chart() -> Path:
    from meshtest.e2e.tools import chart

    return chart("ambient")


@pytest.fixture(scope="package")
def image(provider: providers.Provider) -> str:
    """The echo app image (``<hub>/app:<tag>``; the local cluster maps any hub)."""
    if isinstance(provider, providers.KindProvider):
        return provider.image("app")
    return "localhost:5000/app:latest"


@pytest.fixture(scope="package")
def workers(kube: KubeCluster) -> list[str]:
    nodes = kube.get("nodes")["items"]
    names = [
        n["metadata"]["name"]
        for n in nodes
        if "node-role.kubernetes.io/control-plane" not in n["metadata"].get("labels", {})
    ]
    assert len(names) >= 2, f"the scenarios need two worker nodes, found {names}"
    return sorted(names)[:2]


NamespaceFactory = Callable[..., str]


@pytest.fixture
def make_namespace(
    kube: KubeCluster, mesh: Mesh, request: pytest.FixtureRequest
) -> Iterator[NamespaceFactory]:
    """``make_namespace("srv", ambient=True)`` → a fresh namespace, deleted after the test."""
    created: list[str] = []
    base = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower().removeprefix("test_"))[:24].strip("-")

    def make(role: str, ambient: bool = False) -> str:
        name = f"e2e-{base}-{role}-{secrets.token_hex(2)}"
        kube.apply(namespace(name, dict(AMBIENT) if ambient else {}))
        created.append(name)
        return name

    yield make
    reports = request.node.stash.get(_REPORTS, {})
    if any(r.failed for r in reports.values()):
        text = diagnostics.collect(kube, created, mesh.namespace)
        request.node.add_report_section("teardown", "mesh diagnostics", text[-200_000:])
        where = kube.layout.run / "dumps" if kube.layout is not None else Path("/tmp/ambient-e2e-dumps")
        diagnostics.write(text, where, request.node.name)
    for name in created:
        kube.kubectl("delete", "namespace", name, "--wait=false", check=False)
