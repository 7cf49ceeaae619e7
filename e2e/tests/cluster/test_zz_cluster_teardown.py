"""Tear-down leaves nothing behind: no network namespaces, links, iptables/nft rules, mounts or processes.

Runs last in this directory (file name); it takes the cluster down and brings it back up when it was up, so a
session fixture that reuses the cluster keeps working.
"""

from __future__ import annotations

import subprocess

import pytest
from meshtest.cluster import network, procs
from meshtest.cluster.config import PREFIX, ClusterLayout
from meshtest.cluster.control import Cluster
from meshtest.kube import KubeCluster

pytestmark = [pytest.mark.cluster, pytest.mark.root, pytest.mark.slow]
# markers of everything the cluster creates; nothing else on the host uses these names or ranges
MARKERS = (PREFIX, "10.244.", "10.96.", "172.18.", "KUBE-", "CNI-")


def leftovers(layout: ClusterLayout) -> list[str]:
    found = [f"netns {n}" for n in network.ours(network.netns_names())]
    found += [f"link {n}" for n in network.ours(network.links())]
    found += [f"process {pid}" for pid in procs.marked(str(layout.run))]
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            target = line.split()[4]
            if target.startswith(str(layout.run)) or target.startswith(f"/run/netns/{PREFIX}"):
                found.append(f"mount {target}")
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True, check=False).stdout
    rules += subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, check=False).stdout
    found += [f"rule {line.strip()}" for line in rules.splitlines() if any(m in line for m in MARKERS)]
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True, check=False).stdout
    found += [f"route {line}" for line in routes.splitlines() if any(m in line for m in MARKERS)]
    return found


def test_down_leaves_nothing_behind(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    cluster = Cluster(ClusterLayout.default())
    assert cluster.healthy(), "the session cluster should be up"
    # running pods (one with a hostPort, so portmap chains exist) must not survive the tear-down either
    kube_cluster.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"p{i}"},
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "image": "app",
                            "args": ["--port", "8080"],
                            "ports": [{"containerPort": 8080, **({"hostPort": 18081} if i == 0 else {})}],
                            "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                        }
                    ],
                    "volumes": [{"name": "scratch", "emptyDir": {}}],
                },
            }
            for i in range(3)
        ],
        kube_namespace,
    )
    kube_cluster.ready_pods(kube_namespace, "", 3)
    assert procs.marked(cluster.marker), "sanity: the running cluster has marked processes"
    cluster.down()
    try:
        assert leftovers(cluster.layout) == []
    finally:
        cluster.up()
