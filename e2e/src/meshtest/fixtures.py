"""pytest plugin for cluster tests: ``pytest_plugins = ["meshtest.fixtures"]``.

Fixtures:
- ``kube_cluster`` (session): a :class:`~meshtest.kube.KubeCluster`. With ``AMBIENT_CLUSTER_KUBECONFIG``
set, that
  cluster is used as is. Otherwise the local cluster: reused when already up (and then left up), else brought
  up for the session and torn down at its end (``AMBIENT_CLUSTER_KEEP=1`` leaves it running).
- ``kube_namespace`` (function): a fresh namespace per test, deleted afterwards; when the test fails, a dump
of pods, Events, pod logs and control-plane logs is attached to the report (and written to
  ``<run>/dumps/<test>.txt`` for the local cluster).
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from meshtest.cluster.config import KUBECONFIG_ENV, ClusterLayout
from meshtest.cluster.control import Cluster
from meshtest.kube import KubeCluster

_REPORT_KEY = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    item.stash.setdefault(_REPORT_KEY, {})[report.when] = report
    return report


@pytest.fixture(scope="session")
def kube_cluster() -> Iterator[KubeCluster]:
    external = os.environ.get(KUBECONFIG_ENV)
    if external:
        yield KubeCluster(Path(external), None)
        return
    cluster = Cluster(ClusterLayout.default())
    started = cluster.ensure_up()
    try:
        yield KubeCluster(cluster.layout.kubeconfig, cluster.layout)
    finally:
        if started and os.environ.get("AMBIENT_CLUSTER_KEEP") != "1":
            cluster.down()


@pytest.fixture
def kube_namespace(kube_cluster: KubeCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    base = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    name = f"t-{base}-{secrets.token_hex(3)}"
    kube_cluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        reports = request.node.stash.get(_REPORT_KEY, {})
        if any(r.failed for r in reports.values()):
            text = kube_cluster.dump(name)
            request.node.add_report_section("teardown", "cluster dump", text)
            if kube_cluster.layout is not None:
                dumps = kube_cluster.layout.run / "dumps"
                dumps.mkdir(parents=True, exist_ok=True)
                (dumps / f"{name}.txt").write_text(text)
        kube_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
