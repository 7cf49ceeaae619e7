"""The provider choice and the kind provider's exact commands, checked without Docker or kind: a recording
runner stands in for the processes (CI's machine has no Docker daemon, so it never runs this path)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
from meshtest.cluster.images import IMAGES as IMAGE_TABLE
from meshtest.cluster.images import PYTHON
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
    # no attestation manifests: under Docker's containerd image store (default since Docker 29) an image with
    # them is an index, and `kind load docker-image` (docker save | ctr import --all-platforms) fails on it
    assert all("--provenance=false" in c and "--sbom=false" in c for c in builds), builds
    create = next(c for c in rec.calls if c[:3] == ["kind", "create", "cluster"])
    assert create[create.index("--image") + 1] == providers.KIND_NODE_IMAGE
    tag, _, digest = providers.KIND_NODE_IMAGE.partition("@")
    minor = int(tag.rsplit(":v", 1)[1].split(".")[1])
    assert minor >= 31, "kind node image must be Kubernetes 1.31 or newer"
    # kind re-pushes node image tags; only the digest of a kind release pins what the cluster runs
    assert digest.startswith("sha256:")
    assert len(digest) == len("sha256:") + 64
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


def test_make_images_builds_what_the_kind_provider_builds() -> None:
    """``make images`` (for users) and the kind provider build the same images, the same way."""
    proc = subprocess.run(
        ["make", "-n", "images", "HUB=reg.test/mesh", "TAG=t1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    kind = providers.KindProvider(hub="reg.test/mesh", tag="t1")
    assert proc.stdout.splitlines() == [" ".join(argv) for argv in kind.plan_build()]


def final_stage(dockerfile: str) -> list[str]:
    lines = (REPO / dockerfile).read_text().splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
    return lines[start:]


@pytest.mark.parametrize(("dockerfile", "name"), providers.IMAGES)
def test_image_entrypoint_and_user_match_the_local_image_table(dockerfile: str, name: str) -> None:
    """What an image runs on a real node is what the local cluster runs for it; uids are upstream's."""
    stage = final_stage(dockerfile)
    entrypoint = json.loads(next(x for x in stage if x.startswith("ENTRYPOINT ")).split(" ", 1)[1])
    spec = IMAGE_TABLE[name]
    assert entrypoint == ["python" if part == PYTHON else part for part in spec.entrypoint]
    user = next(x for x in stage if x.startswith("USER ")).split()[1]
    assert user == {"pilot": "1337:1337", "proxyv2": "1337:1337", "app": "1338:1338"}.get(name, user), (
        "components that allow it run as upstream's non-root uid"
    )
    text = "\n".join(stage)
    # the components handle SIGTERM (meshkit.drain); the echo server, as PID 1, only SIGINT
    stop = next((x.split()[1] for x in stage if x.startswith("STOPSIGNAL ")), "SIGTERM")
    assert stop == ("SIGINT" if name == "app" else "SIGTERM")
    for command, argv in spec.commands.items():
        script = " ".join("python" if part == PYTHON else part for part in argv)
        missing = f"{name}: the local image table runs {command!r}; the image has no such command"
        assert f"exec {script} " in text, missing
        assert f">/usr/local/bin/{command}" in text, missing


def test_the_run_says_which_provider_even_with_output_captured(tmp_path: Path) -> None:
    """``tox -e e2e`` runs pytest without ``-s``; a fixture's terminal line must still reach the user."""
    (tmp_path / "test_say.py").write_text(
        "import pytest\n"
        "from meshtest.e2e import providers\n"
        "@pytest.fixture(scope='session')\n"
        "def said(pytestconfig):\n"
        "    providers.announce(pytestconfig, 'e2e provider: probe-marker')\n"
        "def test_one(said):\n"
        "    pass\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "e2e provider: probe-marker" in proc.stdout


def test_kind_node_files_come_through_docker_exec(tmp_path: Path) -> None:
    """The argv is ``docker exec <node> sh -c ...``; the shell part runs here as the node's shell would."""
    (tmp_path / "10-kindnet.conflist").write_text('{"plugins": [{"type": "istio-cni"}]}\n')
    (tmp_path / "99-loopback.conf").write_text("{}")
    (tmp_path / "README").write_text("not a config")
    (tmp_path / "sub.conf").mkdir()
    seen: list[list[str]] = []

    def node_shell(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        seen.append(list(argv))
        assert list(argv[:4]) == ["docker", "exec", "ambient-e2e-worker", "sh"]
        return subprocess.run(list(argv[3:]), capture_output=True, text=True, check=True)

    kind = providers.KindProvider(runner=node_shell)
    files = kind.node_files("ambient-e2e-worker", str(tmp_path), "*.conf*")
    assert files == {
        "10-kindnet.conflist": '{"plugins": [{"type": "istio-cni"}]}\n',
        "99-loopback.conf": "{}",
    }
    assert kind.node_files("ambient-e2e-worker", str(tmp_path / "missing")) == {}
    assert len(seen) == 2


def test_local_node_files_read_the_node_root(tmp_path: Path) -> None:
    layout = providers.ClusterLayout(cache=tmp_path, workers=2, instance=9)
    node = layout.nodes[1].name
    conf = layout.node_root(node) / "etc/cni/net.d"
    conf.mkdir(parents=True)
    (conf / "10-amb-bridge.conflist").write_text("chained istio-cni")
    (conf / "other").write_text("x")
    local = providers.LocalProvider(layout=layout)
    found = local.node_files(node, "/etc/cni/net.d", "*.conf*")
    assert found == {"10-amb-bridge.conflist": "chained istio-cni"}
    assert local.node_files(layout.nodes[0].name, "/etc/cni/net.d") == {}


def test_local_plugin_runtime_is_built_where_pods_can_see_it(tmp_path: Path) -> None:
    """Local-cluster pods get a private /tmp: a runtime built there would be invisible to the CNI agent."""
    under_tmp = providers.LocalProvider(layout=providers.ClusterLayout(cache=Path("/tmp/cold"), instance=5))
    assert under_tmp.plugin_runtime_dir() == Path("/var/tmp/ambient-cluster-5/cni-plugin-runtime")
    home = providers.LocalProvider(layout=providers.ClusterLayout(cache=Path("/root/.cache/x"), instance=2))
    assert home.plugin_runtime_dir() == home.layout.run / "cni-plugin-runtime"
