"""Tear-down leaves nothing behind: no network namespaces, links, iptables/nft rules, mounts or processes.

Runs last in this directory (file name); it takes the cluster down and brings it back up when it was up, so a
session fixture that reuses the cluster keeps working.
"""

from __future__ import annotations

import re
import subprocess

import pytest
from meshtest.cluster import network, procs
from meshtest.cluster.config import ClusterLayout, owned_by
from meshtest.cluster.control import Cluster
from meshtest.kube import KubeCluster

pytestmark = [pytest.mark.cluster, pytest.mark.root, pytest.mark.slow]


def markers(layout: ClusterLayout) -> list[re.Pattern[str]]:
    """What this instance's leftovers would look like; other instances on the machine never match."""
    octets = "|".join(str(int(n.pod_cidr.split(".")[2])) for n in layout.nodes)
    return [
        re.compile(rf"\b10\.244\.({octets})\.\d"),
        re.compile(rf"\b172\.18\.{layout.instance}\.\d"),
        re.compile(rf"\b{re.escape(layout.bridge)}\b"),
        re.compile(r"KUBE-|CNI-"),  # no instance ever puts kube-proxy or CNI rules in the root namespace
    ]


def leftovers(layout: ClusterLayout) -> list[str]:
    found = [f"netns {n}" for n in network.ours(network.netns_names(), layout.instance)]
    found += [f"link {n}" for n in network.ours(network.links(), layout.instance)]
    found += [f"process {pid}" for pid in procs.marked(str(layout.run))]
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            target = line.split()[4]
            name = target.removeprefix("/run/netns/")
            if target.startswith(str(layout.run)) or (name != target and owned_by(name, layout.instance)):
                found.append(f"mount {target}")
    patterns = markers(layout)
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True, check=False).stdout
    rules += subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True, check=False).stdout
    found += [f"rule {line.strip()}" for line in rules.splitlines() if any(p.search(line) for p in patterns)]
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True, check=False).stdout
    found += [f"route {line}" for line in routes.splitlines() if any(p.search(line) for p in patterns)]
    return found


def test_down_leaves_nothing_behind(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    if kube_cluster.layout is None:
        pytest.skip("checks the local cluster's tear-down")
    cluster = Cluster(kube_cluster.layout)
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
