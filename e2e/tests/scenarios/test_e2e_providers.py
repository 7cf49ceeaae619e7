"""The provider choice and the kind provider's exact commands, checked without Docker or kind: a recording
runner stands in for the processes (CI's machine has no Docker daemon, so it never runs this path)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
from meshtest.cluster.images import IMAGES as IMAGE_TABLE
from meshtest.e2e import providers
from meshtest.e2e.tools import REPO


class Recorder:
    def __init__(self, clusters: str = "") -> None:
        self.calls: list[list[str]] = []
        self.clusters = clusters

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(argv))
        out = self.clusters if list(argv[1:]) == ["get", "clusters"] else ""
        return subprocess.CompletedProcess(list(argv), 0, out, "")


def test_kind_up_builds_creates_loads_in_order(tmp_path: Path) -> None:
    rec = Recorder()
    kind = providers.KindProvider(runner=rec, workdir=tmp_path, hub="reg.test/mesh", tag="t1")
    kube = kind.up()
    assert rec.calls[0] == ["kind", "get", "clusters"]
    builds = [c for c in rec.calls if c[:2] == ["docker", "build"]]
    assert [c[c.index("-t") + 1] for c in builds] == [
        "reg.test/mesh/pilot:t1",
        "reg.test/mesh/ztunnel:t1",
        "reg.test/mesh/install-cni:t1",
        "reg.test/mesh/proxyv2:t1",
        "reg.test/mesh/app:t1",
    ]
    assert all(c[-1] == "." and (REPO / c[c.index("-f") + 1]).is_file() for c in builds), builds
    create = next(c for c in rec.calls if c[:3] == ["kind", "create", "cluster"])
    assert create[create.index("--image") + 1] == providers.KIND_NODE_IMAGE
    minor = int(providers.KIND_NODE_IMAGE.rsplit(":v", 1)[1].split(".")[1])
    assert minor >= 31, "kind node image must be Kubernetes 1.31 or newer"
    config = Path(create[create.index("--config") + 1]).read_text()
    assert config.count("role: worker") == 2
    assert config.count("role: control-plane") == 1
    loads = [c for c in rec.calls if c[:3] == ["kind", "load", "docker-image"]]
    assert len(loads) == len(builds)
    assert all(c[-2:] == ["--name", "ambient-e2e"] for c in loads)
    assert rec.calls.index(create) < rec.calls.index(loads[0]), "images load into an existing cluster"
    assert kube.kubeconfig == tmp_path / "kubeconfig"
    assert kube.layout is None
    assert kind.helm_values == {
        "global.hub": "reg.test/mesh",
        "global.tag": "t1",
        "global.imagePullPolicy": "IfNotPresent",
    }


def test_kind_reuses_existing_cluster_and_deletes_unless_kept(tmp_path: Path) -> None:
    rec = Recorder(clusters="other\nambient-e2e\n")
    kind = providers.KindProvider(runner=rec, workdir=tmp_path)
    kind.up()
    assert not any(c[:3] == ["kind", "create", "cluster"] for c in rec.calls)
    assert [
        "kind",
        "export",
        "kubeconfig",
        "--name",
        "ambient-e2e",
        "--kubeconfig",
        str(tmp_path / "kubeconfig"),
    ] in rec.calls
    kind.down()
    assert rec.calls[-1] == ["kind", "delete", "cluster", "--name", "ambient-e2e"]
    kept = providers.KindProvider(runner=rec, workdir=tmp_path, keep=True)
    assert kept.plan_down() == []


def test_images_the_suite_builds_are_in_the_local_image_table() -> None:
    for _, name in providers.IMAGES:
        assert name in IMAGE_TABLE, f"{name} would not run on the local cluster"


def test_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    chosen, why = providers.select({"AMBIENT_E2E_PROVIDER": "kind"})
    assert chosen.name == "kind"
    assert "AMBIENT_E2E_PROVIDER" in why
    chosen, _ = providers.select({"AMBIENT_E2E_PROVIDER": "local"})
    assert chosen.name == "local"
    with pytest.raises(ValueError, match="expected 'kind' or 'local'"):
        providers.select({"AMBIENT_E2E_PROVIDER": "minikube"})
    monkeypatch.setattr(providers.shutil, "which", lambda name: None)
    chosen, why = providers.select({})
    assert chosen.name == "local"
    assert "no kind binary" in why
