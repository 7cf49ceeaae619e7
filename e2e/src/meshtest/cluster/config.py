"""Where the local cluster lives and how it is laid out: versions, directories, nodes and address ranges.

Everything is derived from three inputs, the cache root (``AMBIENT_CLUSTER_CACHE``, default
``~/.cache/ambient-cluster``), the worker count and the instance number (``AMBIENT_CLUSTER_INSTANCE``), so
that ``up``, ``down``, the node agents and the pytest fixtures all agree on paths without talking to each
other.
Names carry the ``amb-`` prefix and addresses stay in this component's ranges: nodes on 172.18.0.0/16, pods in
10.244.0.0/16 (a /24 per node), Services in 10.96.0.0/16. Several instances can run side by side.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

K8S_VERSION = "v1.33.13"
PREFIX = "amb-"
POD_CIDR = ipaddress.IPv4Network("10.244.0.0/16")
SERVICE_CIDR = ipaddress.IPv4Network("10.96.0.0/16")
KUBERNETES_SVC_IP = "10.96.0.1"
DNS_SVC_IP = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"
APISERVER_PORT = 6443
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
#: Marker put in the environment of every process the cluster starts; ``down`` sweeps /proc for it so a
#: crashed agent can never leave a pod process behind.
RUN_MARKER_ENV = "AMBIENT_CLUSTER_RUN"
#: Points tests at an existing cluster (for example kind) instead of the local one.
KUBECONFIG_ENV = "AMBIENT_CLUSTER_KUBECONFIG"
#: Selects one of several independent local clusters on the machine (0, the default, … 9).
INSTANCE_ENV = "AMBIENT_CLUSTER_INSTANCE"
MAX_WORKERS = 15


def node_capacity() -> tuple[int, int]:
    """(CPUs, memory bytes) each node advertises. Nodes share one machine, so like kind nodes each offers the
    whole of it, with CPUs rounded up to 16 so the mesh's CPU requests never make a small VM unschedulable."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return max(os.cpu_count() or 1, 16), memory


def instance_prefix(instance: int) -> str:
    """Name prefix of an instance's netns and links: ``amb-`` for instance 0, ``amb-<n>-`` otherwise."""
    return PREFIX if instance == 0 else f"{PREFIX}{instance}-"


def owned_by(name: str, instance: int) -> bool:
    """Whether a netns/link name belongs to this instance (instance 0 does not own ``amb-<n>-...``)."""
    if instance != 0:
        return name.startswith(instance_prefix(instance))
    return name.startswith(PREFIX) and re.match(rf"{PREFIX}\d+-", name) is None


def pod_netns_name(uid: str, instance: int = 0) -> str:
    """The network namespace (under /run/netns) of a non-hostNetwork pod, named after its UID."""
    return f"{instance_prefix(instance)}p-{uid.replace('-', '')[:10]}"


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One node: a network namespace on its instance's bridge with its own pod /24.

    Instance ``n`` uses 172.18.<n>.0/24 for nodes (``.1`` is the bridge) and 10.244.<16n + i>.0/24 for node
    ``i``'s pods; the Service range is the same in every instance (its rules live inside the node namespaces).
    """

    name: str
    index: int
    control_plane: bool
    instance: int = 0

    @property
    def ip(self) -> str:
        return f"172.18.{self.instance}.{2 + self.index}"

    @property
    def pod_cidr(self) -> str:
        return f"10.244.{16 * self.instance + self.index}.0/24"

    @property
    def pod_gateway(self) -> str:
        return f"10.244.{16 * self.instance + self.index}.1"

    @property
    def netns(self) -> str:
        return self.name

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.name}"

    @property
    def host_veth(self) -> str:
        return f"{self.name}-v"


@dataclass(frozen=True, slots=True)
class ClusterLayout:
    """All paths of one cluster instance. ``run`` is wiped on every ``up``; ``bin`` survives (build cache)."""

    cache: Path
    workers: int = 2
    instance: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.instance <= 9 or not 1 <= self.workers <= MAX_WORKERS:
            raise ValueError(f"instance must be 0..9 and workers 1..{MAX_WORKERS}")

    @classmethod
    def default(cls, workers: int | None = None, instance: int | None = None) -> ClusterLayout:
        root = Path(os.environ.get("AMBIENT_CLUSTER_CACHE") or Path.home() / ".cache" / "ambient-cluster")
        count = workers if workers is not None else int(os.environ.get("AMBIENT_CLUSTER_WORKERS", "2"))
        number = instance if instance is not None else int(os.environ.get(INSTANCE_ENV, "0") or 0)
        return cls(cache=root, workers=count, instance=number)

    @property
    def prefix(self) -> str:
        return instance_prefix(self.instance)

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br0"

    @property
    def bridge_gateway(self) -> str:
        return f"172.18.{self.instance}.1"

    @property
    def bridge_prefixlen(self) -> int:
        return 24

    @property
    def version_dir(self) -> Path:
        return self.cache / K8S_VERSION

    @property
    def bin(self) -> Path:
        return self.version_dir / "bin"

    @property
    def run(self) -> Path:
        return self.version_dir / ("run" if self.instance == 0 else f"run-{self.instance}")

    @property
    def pki(self) -> Path:
        return self.run / "pki"

    @property
    def logs(self) -> Path:
        return self.run / "logs"

    @property
    def pids(self) -> Path:
        return self.run / "pids"

    @property
    def kubeconfig(self) -> Path:
        return self.run / "kubeconfig"

    @property
    def nodes(self) -> tuple[NodeSpec, ...]:
        cp = NodeSpec(name=f"{self.prefix}cp", index=0, control_plane=True, instance=self.instance)
        workers = tuple(
            NodeSpec(name=f"{self.prefix}w{i}", index=i, control_plane=False, instance=self.instance)
            for i in range(1, self.workers + 1)
        )
        return (cp, *workers)

    @property
    def control_plane(self) -> NodeSpec:
        return self.nodes[0]

    def node(self, name: str) -> NodeSpec:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no node {name!r} in this cluster layout")

    def node_dir(self, node: str) -> Path:
        return self.run / "nodes" / node

    def node_root(self, node: str) -> Path:
        """The node's private filesystem root: hostPath volumes and CNI dirs resolve below it."""
        return self.node_dir(node) / "root"

    def binary(self, name: str) -> Path:
        return self.bin / name

    @property
    def api_url(self) -> str:
        return f"https://{self.control_plane.ip}:{APISERVER_PORT}"
