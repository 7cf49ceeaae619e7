"""Where the local cluster lives and how it is laid out: versions, directories, nodes and address ranges.

Everything is derived from two inputs, the cache root (``AMBIENT_CLUSTER_CACHE``, default
``~/.cache/ambient-cluster``) and the node count, so that ``up``, ``down``, the node agents and the pytest
fixtures all agree on paths without talking to each other. Names carry the ``amb-`` prefix and addresses stay
in this component's ranges: nodes on 172.18.0.0/16, pods in 10.244.<n>.0/24, Services in 10.96.0.0/16.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

K8S_VERSION = "v1.33.13"
PREFIX = "amb-"
BRIDGE = "amb-br0"
BRIDGE_NET = ipaddress.IPv4Network("172.18.0.0/16")
BRIDGE_GATEWAY = "172.18.0.1"
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


def pod_netns_name(uid: str) -> str:
    """The network namespace (under /run/netns) of a non-hostNetwork pod, named after its UID."""
    return f"{PREFIX}p-{uid.replace('-', '')[:10]}"


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """One node: a network namespace on the shared bridge with its own pod /24."""

    name: str
    index: int
    control_plane: bool

    @property
    def ip(self) -> str:
        return str(BRIDGE_NET.network_address + 2 + self.index)

    @property
    def pod_cidr(self) -> str:
        return f"10.244.{self.index}.0/24"

    @property
    def pod_gateway(self) -> str:
        return f"10.244.{self.index}.1"

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

    @classmethod
    def default(cls, workers: int | None = None) -> ClusterLayout:
        root = Path(os.environ.get("AMBIENT_CLUSTER_CACHE") or Path.home() / ".cache" / "ambient-cluster")
        count = workers if workers is not None else int(os.environ.get("AMBIENT_CLUSTER_WORKERS", "2"))
        return cls(cache=root, workers=count)

    @property
    def version_dir(self) -> Path:
        return self.cache / K8S_VERSION

    @property
    def bin(self) -> Path:
        return self.version_dir / "bin"

    @property
    def run(self) -> Path:
        return self.version_dir / "run"

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
        cp = NodeSpec(name=f"{PREFIX}cp", index=0, control_plane=True)
        workers = tuple(
            NodeSpec(name=f"{PREFIX}w{i}", index=i, control_plane=False) for i in range(1, self.workers + 1)
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
