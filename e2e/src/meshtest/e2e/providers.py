"""Cluster providers for the e2e suite: ``kind`` (Docker) or ``local`` (``meshtest.cluster``).

Both hand the suite a :class:`~meshtest.kube.KubeCluster`; the suite then installs the mesh with
``helm install ambient`` from ``helm/`` as a user would. Selection: ``AMBIENT_E2E_PROVIDER=kind|local``, else
kind when both ``kind`` and a reachable Docker daemon exist, else local. The run prints which one it used.

Why not pytest-kind (spec deploy-and-e2e.md §6.1): its ``kind_cluster`` fixture cannot pass a kind config, so
no multi-node cluster (the reachability matrix needs two workers); it downloads kind v0.17/kubectl v1.25
(amd64 only) unless told otherwise, and its ``port_forward`` drops PATH. The few kind commands we need are
listed explicitly below (:meth:`KindProvider.plan_up`), which also lets a test check them without Docker.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from meshtest.cluster.config import ClusterLayout
from meshtest.cluster.control import Cluster
from meshtest.e2e.tools import REPO
from meshtest.kube import KubeCluster

#: kind node image: Kubernetes >= 1.31 (Gateway API CEL rules need it; upstream CI uses 1.35), pinned by the
#: digest kind v0.29.0 released it with (kind re-pushes node image tags, so a bare tag is not a pin)
KIND_NODE_IMAGE = (
    "kindest/node:v1.33.1@sha256:050072256b9a903bd914c0b2866828150cb229cea0efe5892e2b644d5dd3b34f"
)
KIND_CLUSTER = "ambient-e2e"
#: the images the suite needs: (Dockerfile, image name); names match meshtest.cluster.images
IMAGES: tuple[tuple[str, str], ...] = (
    ("services/istiod/Dockerfile", "pilot"),
    ("services/ztunnel/Dockerfile", "ztunnel"),
    ("services/cni/Dockerfile", "install-cni"),
    ("services/waypoint/Dockerfile", "proxyv2"),
    ("e2e/src/meshtest/e2e/Dockerfile.app", "app"),
)
#: docker build flags for images that are side-loaded into kind (see KindProvider.plan_build)
NO_ATTESTATIONS = ("--provenance=false", "--sbom=false")
KIND_CONFIG = """\
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
- role: control-plane
- role: worker
- role: worker
"""

Runner = Callable[[Sequence[str]], subprocess.CompletedProcess[str]]


def run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run a provider command from the repository root, failing loudly with its stderr."""
    proc = subprocess.run(list(argv), cwd=REPO, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc


class Provider(Protocol):
    name: str

    @property
    def helm_values(self) -> dict[str, str]:
        """Helm values the suite adds so the chart's images are the ones this provider has."""
        ...

    def up(self) -> KubeCluster: ...

    def down(self) -> None: ...

    def node_files(self, node: str, directory: str, pattern: str = "*") -> dict[str, str]:
        """The regular files matching the glob ``pattern`` directly in ``directory`` on ``node`` (as the node
        sees its own filesystem): name → text; ``{}`` when the directory does not exist."""
        ...


#: where the local provider builds the CNI plugin's node runtime (in the cluster's run directory)
PLUGIN_RUNTIME_DIR = "cni-plugin-runtime"


@dataclass
class LocalProvider:
    """The local cluster: reused when up (and left up), else started and stopped around the run.

    The image table maps the chart's images to commands, so no image values are needed. One value is: the
    install-cni image carries a self-contained Python runtime for the CNI plugin that the agent copies onto
    each node (a real node has no Python); the local cluster's pods run from the host's environment, so ``up``
    builds that runtime from this interpreter and points the agent at it. The suite then exercises the same
    plugin path as on kind, instead of the launcher that execs the host's interpreter.
    """

    layout: ClusterLayout = field(default_factory=ClusterLayout.default)
    name: str = "local"
    helm_values: dict[str, str] = field(default_factory=dict)
    _started: bool = False

    def up(self) -> KubeCluster:
        self._started = Cluster(self.layout).ensure_up()  # safe when other sessions ask at the same time
        runtime = self.plugin_runtime_dir()
        run([sys.executable, "-m", "istio_cni.runtime", "build", "--into", str(runtime)])
        self.helm_values["cni.env.CNI_PLUGIN_RUNTIME"] = str(runtime)
        return KubeCluster(self.layout.kubeconfig, self.layout)

    def plugin_runtime_dir(self) -> Path:
        """Where ``up`` builds the plugin runtime: in the cluster's run directory, unless that is under /tmp,
        which every pod of the local cluster gets a private copy of (the agent would not see the runtime there
        and would fall back to the host-Python launcher); then under /var/tmp, per cluster instance."""
        runtime = self.layout.run / PLUGIN_RUNTIME_DIR
        if runtime.resolve().is_relative_to("/tmp"):
            return Path("/var/tmp") / f"ambient-cluster-{self.layout.instance}" / PLUGIN_RUNTIME_DIR
        return runtime

    def node_files(self, node: str, directory: str, pattern: str = "*") -> dict[str, str]:
        path = self.layout.node_root(node) / directory.lstrip("/")
        return {f.name: f.read_text(errors="replace") for f in sorted(path.glob(pattern)) if f.is_file()}

    def down(self) -> None:
        keep = os.environ.get("AMBIENT_CLUSTER_KEEP") == "1"
        if self._started and not keep:
            Cluster(self.layout).down()
        runtime = self.plugin_runtime_dir()
        # the /var/tmp case: the cluster's down does not know it; the suite has uninstalled the mesh by now
        if (
            not runtime.is_relative_to(self.layout.run)
            and not keep
            and os.environ.get("AMBIENT_E2E_KEEP_MESH") != "1"
        ):
            shutil.rmtree(runtime.parent, ignore_errors=True)


@dataclass
class KindProvider:
    """A three-node kind cluster with our images built by Docker and side-loaded with ``kind load``."""

    runner: Runner = run
    kind: str = "kind"
    docker: str = "docker"
    cluster: str = KIND_CLUSTER
    node_image: str = KIND_NODE_IMAGE
    hub: str = "localhost/ambient"
    tag: str = "e2e"
    keep: bool = False
    workdir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "ambient-e2e-kind")
    name: str = "kind"

    @property
    def helm_values(self) -> dict[str, str]:
        return {"global.hub": self.hub, "global.tag": self.tag, "global.imagePullPolicy": "IfNotPresent"}

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    def image(self, name: str) -> str:
        return f"{self.hub}/{name}:{self.tag}"

    def plan_build(self) -> list[list[str]]:
        # Plain single-platform images: with Docker's containerd image store (the default since Docker 29) a
        # build with attestations is an image index, which `kind load docker-image` fails to import
        # ("content digest ... not found", kubernetes-sigs/kind#3795).
        return [
            [self.docker, "build", *NO_ATTESTATIONS, "-f", dockerfile, "-t", self.image(name), "."]
            for dockerfile, name in IMAGES
        ]

    def plan_up(self, existing: Sequence[str]) -> list[list[str]]:
        """Every command ``up`` runs, given the clusters ``kind get clusters`` listed."""
        cmds = self.plan_build()
        if self.cluster in existing:
            cmds.append(
                [
                    self.kind,
                    "export",
                    "kubeconfig",
                    "--name",
                    self.cluster,
                    "--kubeconfig",
                    str(self.kubeconfig),
                ]
            )
        else:
            cmds.append(
                [
                    self.kind,
                    "create",
                    "cluster",
                    "--name",
                    self.cluster,
                    "--image",
                    self.node_image,
                    "--config",
                    str(self.workdir / "kind.yaml"),
                    "--kubeconfig",
                    str(self.kubeconfig),
                    "--wait",
                    "180s",
                ]
            )
        cmds += [
            [self.kind, "load", "docker-image", self.image(name), "--name", self.cluster]
            for _, name in IMAGES
        ]
        return cmds

    def plan_down(self) -> list[list[str]]:
        return [] if self.keep else [[self.kind, "delete", "cluster", "--name", self.cluster]]

    def up(self) -> KubeCluster:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "kind.yaml").write_text(KIND_CONFIG)
        listed = self.runner([self.kind, "get", "clusters"]).stdout.split()
        for argv in self.plan_up(listed):
            self.runner(argv)
        return KubeCluster(self.kubeconfig, None)

    def down(self) -> None:
        for argv in self.plan_down():
            self.runner(argv)

    def plan_node_files(self, node: str, directory: str, pattern: str = "*") -> list[str]:
        """kind's node containers are named after their Kubernetes nodes: ``docker exec`` prints each regular
        file in ``directory`` as ``name NUL text NUL`` (nothing when the directory is missing)."""
        script = (
            'cd "$1" 2>/dev/null || exit 0; '
            'for f in $2; do [ -f "$f" ] && printf "%s\\0" "$f" && cat "$f" && printf "\\0"; done; exit 0'
        )
        return [self.docker, "exec", node, "sh", "-c", script, "sh", directory, pattern]

    def node_files(self, node: str, directory: str, pattern: str = "*") -> dict[str, str]:
        parts = self.runner(self.plan_node_files(node, directory, pattern)).stdout.split("\0")
        return dict(zip(parts[0:-1:2], parts[1::2], strict=False))


def announce(config: Any, text: str) -> None:
    """Write ``text`` on the terminal from a fixture (``config`` is the ``pytest.Config``). Output capture is
    suspended for the line: the reporter's stream is captured too while a fixture runs, so without this
    the run would say which provider it used only under ``-s``."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    capture = config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        reporter.write_line(text)


def docker_available(docker: str = "docker") -> bool:
    if shutil.which(docker) is None:
        return False
    probe = subprocess.run([docker, "info"], capture_output=True, check=False, timeout=20)
    return probe.returncode == 0


def select(env: dict[str, str] | None = None) -> tuple[Provider, str]:
    """The provider for this run and why it was chosen."""
    env = dict(os.environ) if env is None else env
    wanted = env.get("AMBIENT_E2E_PROVIDER", "")
    keep = env.get("AMBIENT_CLUSTER_KEEP") == "1"
    if wanted == "kind":
        kind: Provider = KindProvider(keep=keep)
        return kind, "AMBIENT_E2E_PROVIDER=kind"
    if wanted == "local":
        return LocalProvider(), "AMBIENT_E2E_PROVIDER=local"
    if wanted:
        raise ValueError(f"AMBIENT_E2E_PROVIDER={wanted!r}: expected 'kind' or 'local'")
    if shutil.which("kind") and docker_available():
        found: Provider = KindProvider(keep=keep)
        return found, "kind and a Docker daemon are present"
    reason = "no kind binary" if not shutil.which("kind") else "no reachable Docker daemon"
    return LocalProvider(), f"{reason}: using the local cluster"
