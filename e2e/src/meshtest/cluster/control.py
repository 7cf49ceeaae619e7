"""Bring the cluster up and down: network, PKI, etcd, the control plane, CoreDNS, kube-proxy and node agents.

``up`` is idempotent in the sense that it first tears down whatever a previous instance left, then starts a
fresh cluster (etcd state is throwaway) and returns once every node is Ready, DNS answers and the default
ServiceAccount exists. All processes are detached, so the cluster outlives the command that started it.

CoreDNS runs as a host process in the control-plane node namespace behind a selector-less ``kube-dns``
Service at
10.96.0.10 with a hand-made EndpointSlice: DNS then works as soon as the API server does, without depending
on the node agent's pod machinery, and its logs sit next to the other control-plane logs.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from meshtest.cluster import components, network, procs
from meshtest.cluster.config import (
    CLUSTER_DOMAIN,
    KUBERNETES_SVC_IP,
    ClusterLayout,
    NodeSpec,
)
from meshtest.cluster.kubeapi import ApiError, SyncKube, ssl_context
from meshtest.cluster.pki import ClusterPKI, kubeconfig

log = logging.getLogger("meshtest.cluster")

BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kube-proxy",
    "kubectl",
    "coredns",
    "helm",
)


class ClusterError(RuntimeError):
    """The cluster could not be brought up; the message names the component and its log file."""


def ensure_binaries(layout: ClusterLayout) -> None:
    """Build the binaries unless the cache already has them (``e2e/cluster/build/build.sh`` keeps a stamp)."""
    if all(layout.binary(name).exists() for name in BINARIES):
        return
    script = Path(__file__).resolve().parents[3] / "cluster" / "build" / "build.sh"
    log.warning("building cluster binaries (cold build takes a while): %s", script)
    import subprocess

    subprocess.run(["bash", str(script)], check=True)


def _wait(what: str, check: Callable[[], bool], timeout: float, log_file: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as err:  # not up yet: retried until the deadline, reported if it never clears
            last = err
        time.sleep(0.2)
    hint = f"; see {log_file}" if log_file else ""
    cause = f" (last error: {last})" if last else ""
    raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}{cause}{hint}")


def _write_kubeconfigs(layout: ClusterLayout, pki: ClusterPKI) -> dict[str, Path]:
    cp = layout.control_plane
    users = {
        "admin": ("kubernetes-admin", ("system:masters",)),
        "controller-manager": ("system:kube-controller-manager", ()),
        "scheduler": ("system:kube-scheduler", ()),
        "kube-proxy": ("system:kube-proxy", ()),
        "coredns": ("system:coredns", ("system:masters",)),
    }
    # Node agents act for the whole node (pods, leases, tokens, events): system:masters keeps them out of the
    # Node authorizer's graph rules, which only the real kubelet's behaviour satisfies.
    for node in layout.nodes:
        users[f"node-{node.name}"] = (f"system:node:{node.name}", ("system:masters",))
    paths = {}
    for name, (cn, orgs) in users.items():
        files = pki.issue(name, cn, orgs=orgs)
        path = layout.pki / f"{name}.kubeconfig"
        path.write_text(kubeconfig(layout.api_url, pki.ca.cert, files, user=cn))
        paths[name] = path
    shutil.copy(paths["admin"], layout.kubeconfig)
    apiserver_dns = (
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        f"kubernetes.default.svc.{CLUSTER_DOMAIN}",
        "localhost",
        cp.name,
    )
    pki.issue(
        "apiserver",
        "kube-apiserver",
        dns=apiserver_dns,
        ips=(KUBERNETES_SVC_IP, cp.ip, "127.0.0.1"),
        server=True,
    )
    pki.issue("front-proxy-client", "front-proxy-client")
    pki.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", orgs=("system:masters",))
    for node in layout.nodes:  # serving certificate of each agent's kubelet-style log endpoint
        pki.issue(
            f"kubelet-{node.name}", f"system:node:{node.name}", dns=(node.name,), ips=(node.ip,), server=True
        )
    pki.service_account_keys()
    return paths


class Cluster:
    """Control of one cluster instance laid out by :class:`ClusterLayout`."""

    def __init__(self, layout: ClusterLayout | None = None) -> None:
        self.layout = layout or ClusterLayout.default()
        self.marker = str(self.layout.run)

    # -- clients --------------------------------------------------------------------------------------------
    def client(self) -> SyncKube:
        pki = self.layout.pki
        return SyncKube(
            self.layout.api_url, ssl_context(pki / "ca.crt", pki / "admin.crt", pki / "admin.key")
        )

    def healthy(self) -> bool:
        try:
            return str(self.client().request("GET", "/readyz", timeout=2.0).get("raw", "")).strip() == "ok"
        except (OSError, ApiError):
            return False

    # -- lifecycle -------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """One ``up``/``down``/``ensure_up`` at a time per instance, across processes (two test sessions)."""
        self.layout.version_dir.mkdir(parents=True, exist_ok=True)
        with open(self.layout.version_dir / f".lock-{self.layout.instance}", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def ensure_up(self) -> bool:
        """Reuse the cluster if it is healthy, else start one; returns whether this call started it. Safe when
        several processes ask at once: the others wait and then reuse it."""
        with self._locked():
            if self.healthy():
                return False
            self._up()
            return True

    def up(self) -> float:
        """Start a fresh cluster (tearing down the previous one); returns the seconds it took."""
        with self._locked():
            return self._up()

    def _up(self) -> float:
        start = time.monotonic()
        ensure_binaries(self.layout)
        self._down(quiet=True)
        layout = self.layout
        shutil.rmtree(layout.run, ignore_errors=True)  # fresh etcd, PKI and node roots every time
        layout.run.mkdir(parents=True, exist_ok=True)
        for sub in ("logs", "pids", "pki"):
            (layout.run / sub).mkdir(exist_ok=True)
        network.up(layout)
        pki = ClusterPKI(layout.pki)
        kubeconfigs = _write_kubeconfigs(layout, pki)
        for node in layout.nodes:
            self._prepare_node_root(node)
        self._start_etcd()
        self._start_apiserver()
        # everything else retries until the API server answers, so it all starts at once (the controllers
        # skip the authentication config lookup that would otherwise make them exit before RBAC is served)
        self._start_controllers(kubeconfigs)
        self._start_coredns(kubeconfigs["coredns"])
        for node in layout.nodes:
            self._start_kube_proxy(node, kubeconfigs["kube-proxy"])
            self._start_agent(node)
        _wait("kube-apiserver /readyz", self.healthy, 90, layout.logs / "kube-apiserver.log")
        # just after /readyz the ClusterIP allocator may still be syncing and refuse 10.96.0.10: retry
        _wait(
            "kube-dns Service and EndpointSlice",
            self._bootstrap_objects,
            30,
            layout.logs / "kube-apiserver.log",
        )
        self._wait_ready()
        took = time.monotonic() - start
        (layout.run / "up-seconds").write_text(f"{took:.1f}\n")
        log.info("cluster up in %.1fs; KUBECONFIG=%s", took, layout.kubeconfig)
        return took

    def down(self, *, quiet: bool = False) -> list[str]:
        """Stop everything and remove namespaces and links; returns a list of what had to be cleaned."""
        with self._locked():
            return self._down(quiet=quiet)

    def _down(self, *, quiet: bool) -> list[str]:
        layout = self.layout
        cleaned: list[str] = []
        pids = layout.pids
        if pids.exists():
            # agents first (they stop their pods and run CNI DEL), the API server and etcd last
            names = [p.stem for p in pids.glob("*.pid")]
            tiers = [
                [n for n in names if n.startswith("agent-")],
                [n for n in names if not n.startswith("agent-") and n not in ("kube-apiserver", "etcd")],
                ["kube-apiserver"],
                ["etcd"],
            ]
            for tier in tiers:
                found = [p for p in (procs.pid_of(pids, name) for name in tier) if p]
                procs.stop_pids(found, grace=20.0 if tier is tiers[0] else 5.0)
                for name in tier:
                    (pids / f"{name}.pid").unlink(missing_ok=True)
        cleaned += [f"process/{pid}" for pid in procs.sweep(self.marker)]
        cleaned += _unmount_under(layout.run)
        cleaned += network.down(layout.instance)
        if not quiet and cleaned:
            log.info("cleaned: %s", ", ".join(cleaned))
        return cleaned

    def status(self) -> dict[str, object]:
        layout = self.layout
        components = {}
        if layout.pids.exists():
            for pidfile in sorted(layout.pids.glob("*.pid")):
                pid = procs.pid_of(layout.pids, pidfile.stem)
                components[pidfile.stem] = bool(pid and procs.alive(pid))
        result: dict[str, object] = {
            "instance": layout.instance,
            "kubeconfig": str(layout.kubeconfig),
            "api": layout.api_url,
            "healthy": self.healthy(),
            "components": components,
        }
        if result["healthy"]:
            nodes = self.client().get("/api/v1/nodes")["items"]
            result["nodes"] = {n["metadata"]["name"]: _ready(n) for n in nodes}
        return result

    # -- components ------------------------------------------------------------------------------------------
    def _start(self, name: str, node: NodeSpec, argv: list[str], env: dict[str, str] | None = None) -> None:
        procs.start(
            name,
            procs.in_netns(node.netns_path, argv),
            pids=self.layout.pids,
            log_file=self.layout.logs / f"{name}.log",
            run_marker=self.marker,
            env=env,
        )

    def _start_etcd(self) -> None:
        self._start("etcd", self.layout.control_plane, components.etcd(self.layout))

    def _start_apiserver(self) -> None:
        self._start("kube-apiserver", self.layout.control_plane, components.apiserver(self.layout))

    def _start_controllers(self, kubeconfigs: dict[str, Path]) -> None:
        cp = self.layout.control_plane
        cm = components.controller_manager(self.layout, kubeconfigs["controller-manager"])
        self._start("kube-controller-manager", cp, cm)
        self._start("kube-scheduler", cp, components.scheduler(self.layout, kubeconfigs["scheduler"]))

    def _start_coredns(self, kubeconfig_path: Path) -> None:
        corefile = self.layout.run / "Corefile"
        corefile.write_text(components.corefile(kubeconfig_path))
        self._start("coredns", self.layout.control_plane, components.coredns(self.layout, corefile))

    def _start_kube_proxy(self, node: NodeSpec, kubeconfig_path: Path) -> None:
        self._start(
            f"kube-proxy-{node.name}", node, components.kube_proxy(self.layout, node, kubeconfig_path)
        )

    def _start_agent(self, node: NodeSpec) -> None:
        self._start(f"agent-{node.name}", node, components.agent(self.layout, node))

    def _prepare_node_root(self, node: NodeSpec) -> None:
        root = self.layout.node_root(node.name)
        for sub in ("etc/cni/net.d", "opt/cni/bin", "var/lib/cni", "var/run/istio-cni", "var/run/ztunnel"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        for plugin in Path("/usr/lib/cni").iterdir():
            (root / "opt/cni/bin" / plugin.name).symlink_to(plugin)
        conflist = json.dumps(components.node_conflist(node), indent=2)
        (root / "etc/cni/net.d/10-amb-bridge.conflist").write_text(conflist)

    def _bootstrap_objects(self) -> bool:
        kube = self.client()
        kube.create("/api/v1/namespaces/kube-system/services", components.kube_dns_service())
        slices = "/apis/discovery.k8s.io/v1/namespaces/kube-system/endpointslices"
        kube.create(slices, components.kube_dns_endpoints(self.layout))
        return True

    def _wait_ready(self) -> None:
        kube = self.client()
        names = {n.name for n in self.layout.nodes}
        logs = self.layout.logs

        def nodes_ready() -> bool:
            items = kube.get("/api/v1/nodes")["items"]
            return names <= {n["metadata"]["name"] for n in items if _ready(n)}

        _wait("all nodes Ready", nodes_ready, 60, logs)
        _wait(
            "default ServiceAccount",
            lambda: bool(kube.get("/api/v1/namespaces/default/serviceaccounts/default")),
            60,
            logs / "kube-controller-manager.log",
        )
        for node in self.layout.nodes:
            _wait(
                f"kube-proxy on {node.name}",
                functools.partial(_tcp_ok, node.ip, 10256),
                60,
                logs / f"kube-proxy-{node.name}.log",
            )
        _wait("CoreDNS", lambda: _tcp_ok(self.layout.control_plane.ip, 53), 60, logs / "coredns.log")


def _tcp_ok(host: str, port: int) -> bool:
    with socket.create_connection((host, port), timeout=1.0):
        return True


def _ready(node: dict[str, Any]) -> bool:
    conditions = node.get("status", {}).get("conditions", [])
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _unmount_under(root: Path) -> list[str]:
    """Unmount anything still mounted below ``root`` in this mount namespace (deepest first)."""
    import subprocess

    prefix = str(root.resolve())
    targets = []
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            target = line.split()[4]
            if target == prefix or target.startswith(prefix + "/"):
                targets.append(target)
    for target in sorted(targets, key=len, reverse=True):
        subprocess.run(["umount", "-l", target], check=False)
    return [f"mount/{t}" for t in targets]
