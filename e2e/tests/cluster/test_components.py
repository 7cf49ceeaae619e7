"""Component command lines carry the flags the cluster's guarantees rest on."""

from __future__ import annotations

from pathlib import Path

from meshtest.cluster import components
from meshtest.cluster.config import ClusterLayout

LAYOUT = ClusterLayout(cache=Path("/cache"), instance=4)


def test_apiserver_serves_rbac_and_service_account_tokens() -> None:
    argv = components.apiserver(LAYOUT)
    assert argv[0] == "/cache/v1.33.13/bin/kube-apiserver"
    assert "--authorization-mode=Node,RBAC" in argv
    assert "--advertise-address=172.18.4.2" in argv  # the kubernetes Service's endpoint: the cp node IP
    assert "--service-account-issuer=https://kubernetes.default.svc.cluster.local" in argv
    assert "--service-account-signing-key-file=/cache/v1.33.13/run-4/pki/sa.key" in argv
    assert "--service-cluster-ip-range=10.96.0.0/16" in argv


def test_kube_proxy_per_node_in_iptables_mode() -> None:
    node = LAYOUT.nodes[2]
    argv = components.kube_proxy(LAYOUT, node, Path("/k"))
    assert "--proxy-mode=iptables" in argv
    assert f"--hostname-override={node.name}" in argv
    assert "--bind-address=172.18.4.4" in argv
    assert "--cluster-cidr=10.244.0.0/16" in argv


def test_controller_manager_publishes_root_ca_and_signs_tokens() -> None:
    argv = components.controller_manager(LAYOUT, Path("/k"))
    assert "--root-ca-file=/cache/v1.33.13/run-4/pki/ca.crt" in argv
    assert "--use-service-account-credentials=true" in argv


def test_node_network_and_dns() -> None:
    conf = components.node_conflist(LAYOUT.nodes[1])
    assert [p["type"] for p in conf["plugins"]] == ["bridge", "portmap"]
    assert conf["plugins"][0]["ipam"]["ranges"] == [[{"subnet": "10.244.65.0/24"}]]
    assert "kubeconfig /k ambient-local" in components.corefile(Path("/k"))
    assert components.kube_dns_service()["spec"]["clusterIP"] == "10.96.0.10"
    endpoints = components.kube_dns_endpoints(LAYOUT)["endpoints"]
    assert endpoints == [{"addresses": ["172.18.4.2"], "conditions": {"ready": True}, "nodeName": "amb-4-cp"}]
