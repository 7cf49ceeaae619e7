"""Installing the mesh as a user does: ``helm install ambient ./helm/ambient -n istio-system
--create-namespace``, then waiting for each component by its own readiness (istiod ``/ready``, ztunnel and the
CNI agent on every node), and the reverse on uninstall.

With ``previous`` set, the install is first done from that earlier copy of the charts and then upgraded with
``helm upgrade`` to the working tree's charts, which is the upgrade path a user takes.
"""

from __future__ import annotations

import contextlib
import fcntl
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshtest.e2e.charts import by_kind, render, set_args
from meshtest.e2e.providers import LocalProvider
from meshtest.e2e.tools import REPO, chart
from meshtest.kube import KubeCluster

NAMESPACE = "istio-system"
RELEASE = "ambient"
#: the label naming the chart that rendered an object (our CRDs: istio-base)
CHART_NAME_LABEL = "app.kubernetes.io/name"


@contextlib.contextmanager
def exclusive(lock_dir: Path, timeout: float = 1800) -> Iterator[None]:
    """Hold the machine-wide mesh lock: one session at a time installs, tests and removes ``ambient`` (two
    sessions sharing a cluster would uninstall the mesh under each other)."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    with (lock_dir / "ambient-e2e-mesh.lock").open("w") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another session held the mesh lock for {timeout:.0f}s") from None
                time.sleep(1.0)  # polling a lock another process holds; no event to wait on
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def previous_charts(commit: str, into: Path) -> Path:
    """Extract ``helm/`` at ``commit`` (a chart version users may have installed) and return its umbrella."""
    archive = into / "helm.tar"
    with archive.open("wb") as out:
        subprocess.run(["git", "-C", str(REPO), "archive", commit, "helm"], stdout=out, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="tar")  # the umbrella's charts/ are symlinks to its siblings
    return into / "helm" / "ambient"


@dataclass
class Mesh:
    kube: KubeCluster
    values: Mapping[str, object] = field(default_factory=dict)
    namespace: str = NAMESPACE
    release: str = RELEASE
    timings: dict[str, float] = field(default_factory=dict)
    #: reads a node's files (the provider's ``node_files``); by default the local cluster's node directories
    read_node_files: Callable[[str, str, str], dict[str, str]] | None = None

    def nodes(self) -> list[str]:
        return [n["metadata"]["name"] for n in self.kube.get("nodes")["items"]]

    def helm_install(self, chart_dir: Path, upgrade: bool = False) -> None:
        verb = ["upgrade"] if upgrade else ["install"]
        start = time.monotonic()
        self.kube.helm(
            *verb,
            self.release,
            str(chart_dir),
            "-n",
            self.namespace,
            "--create-namespace",
            *set_args(self.values),
            timeout=300,
        )
        self.timings["helm upgrade" if upgrade else "helm install"] = time.monotonic() - start

    def adopt_crds(self) -> list[str]:
        """Hand CRDs of our charts that exist without a Helm owner (applied by hand, e.g. by a component's own
        cluster test) to this release, as an operator would, so ``helm install`` can take them over.

        Only copies of our own CRDs (they carry our chart's name label): the suite wants our schemas, and the
        base chart would leave an unowned one alone. Another owner's (the provider's, upstream's
        standard-install.yaml) stays theirs, as the chart leaves it; adopting it would replace their schemas.
        """
        rendered = by_kind(render("ambient", values=self.values), "CustomResourceDefinition")
        wanted = {c["metadata"]["name"] for c in rendered}
        ours = {(k, v) for c in rendered for k, v in c["metadata"]["labels"].items() if k == CHART_NAME_LABEL}
        adopted = []
        for crd in self.kube.get("crd")["items"]:
            meta = crd["metadata"]
            if (
                meta["name"] in wanted
                and "meta.helm.sh/release-name" not in (meta.get("annotations") or {})
                and set((meta.get("labels") or {}).items()) & ours
            ):
                self.kube.kubectl(
                    "annotate",
                    "crd",
                    meta["name"],
                    f"meta.helm.sh/release-name={self.release}",
                    f"meta.helm.sh/release-namespace={self.namespace}",
                    "--overwrite",
                )
                self.kube.kubectl(
                    "label", "crd", meta["name"], "app.kubernetes.io/managed-by=Helm", "--overwrite"
                )
                adopted.append(meta["name"])
        return adopted

    def install(self, previous: str | None = None) -> None:
        """Install (or upgrade from ``previous``) and wait until every component is ready."""
        self.adopt_crds()
        if previous:
            with tempfile.TemporaryDirectory(prefix="pk-helm-prev-") as tmp:
                self.helm_install(previous_charts(previous, Path(tmp)))
                self.wait_ready()
                self.helm_install(chart("ambient"), upgrade=True)
        else:
            self.helm_install(chart("ambient"))
        self.wait_ready()

    def wait_ready(self, timeout: float = 240) -> None:
        start = time.monotonic()
        count = len(self.nodes())
        self.kube.ready_pods(self.namespace, "app=istiod", 1, timeout)
        self.kube.ready_pods(self.namespace, "k8s-app=istio-cni-node", count, timeout)
        self.kube.ready_pods(self.namespace, "app=ztunnel", count, timeout)
        self.wait_rollout("daemonset", "ztunnel", timeout)
        self.wait_rollout("daemonset", "istio-cni-node", timeout)
        self.timings["components ready"] = time.monotonic() - start

    def wait_rollout(self, kind: str, name: str, timeout: float = 240) -> None:
        self.kube.kubectl(
            "rollout",
            "status",
            f"{kind}/{name}",
            "-n",
            self.namespace,
            f"--timeout={int(timeout)}s",
            timeout=timeout + 10,
        )

    def installed(self) -> bool:
        out = self.kube.helm("status", self.release, "-n", self.namespace, check=False)
        return out.returncode == 0

    def uninstall(self, timeout: float = 180) -> None:
        """``helm uninstall`` as an operator does it: after any rollout in progress has finished, then waiting
        until the components' pods are gone, and checking every node is left without the istio-cni plugin.

        The order matters: an agent stopped by a rolling update keeps its plugin for its successor (safe
        upgrade, as upstream), so removing the DaemonSet before the successor ran would leave that node's pods
        waiting for an agent that never comes.
        """
        if self.installed():
            for kind, name in (("daemonset", "istio-cni-node"), ("daemonset", "ztunnel")):
                with contextlib.suppress(RuntimeError, subprocess.SubprocessError):
                    self.wait_rollout(kind, name, timeout)
        self.kube.helm(
            "uninstall",
            self.release,
            "-n",
            self.namespace,
            "--wait",
            "--timeout",
            f"{int(timeout)}s",
            check=False,
            timeout=timeout + 20,
        )
        self.kube.wait_for(
            f"the mesh's pods in {self.namespace} to be gone",
            lambda: not self.pods("app in (istiod, ztunnel)") and not self.pods("k8s-app=istio-cni-node"),
            timeout,
        )
        left = self.nodes_with_cni_plugin()
        if left:
            raise RuntimeError(
                f"istio-cni left its plugin chained on {', '.join(left)} after the uninstall: pods there "
                "will fail CNI ADD; see the istio-cni-node logs for its 'shutting down' decision"
            )

    def node_files(self, node: str, directory: str, pattern: str = "*") -> dict[str, str]:
        """A node's files (as :meth:`Provider.node_files`): the provider's reader, else the local layout's."""
        if self.read_node_files is not None:
            return self.read_node_files(node, directory, pattern)
        if self.kube.layout is None:
            raise RuntimeError("no way to read node files: pass read_node_files (the provider's node_files)")
        return LocalProvider(layout=self.kube.layout).node_files(node, directory, pattern)

    def nodes_with_cni_plugin(self) -> list[str]:
        """Nodes whose CNI config still chains istio-cni."""
        return [
            node
            for node in self.nodes()
            if any(
                "istio-cni" in text for text in self.node_files(node, "/etc/cni/net.d", "*.conf*").values()
            )
        ]

    def pods(self, selector: str) -> list[dict[str, Any]]:
        return list(self.kube.get("pods", namespace=self.namespace, selector=selector)["items"])

    def ztunnel_on(self, node: str) -> str:
        for pod in self.pods("app=ztunnel"):
            spec, meta = pod["spec"], pod["metadata"]
            if spec.get("nodeName") == node and not meta.get("deletionTimestamp"):
                return str(meta["name"])
        raise LookupError(f"no ztunnel pod on node {node}")
