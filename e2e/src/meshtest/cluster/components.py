"""Command lines and bootstrap objects of the cluster's components, as pure functions of the layout.

Each builder returns the argv of one upstream binary (or our node agent) with the flags this cluster needs and
a comment where a flag is a choice rather than a requirement. :mod:`meshtest.cluster.control` starts them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from meshtest.cluster.config import (
    APISERVER_PORT,
    CLUSTER_DOMAIN,
    DNS_SVC_IP,
    POD_CIDR,
    SA_ISSUER,
    SERVICE_CIDR,
    ClusterLayout,
    NodeSpec,
)

Obj = dict[str, Any]


def etcd(layout: ClusterLayout) -> list[str]:
    """Single member on the control plane's loopback; throwaway data, so no fsync."""
    peer = "http://127.0.0.1:2380"
    return [
        str(layout.binary("etcd")), "--name", "cp", "--data-dir", str(layout.run / "etcd"),
        "--listen-client-urls", "http://127.0.0.1:2379", "--advertise-client-urls", "http://127.0.0.1:2379",
        "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", f"cp={peer}",
        "--unsafe-no-fsync", "--listen-metrics-urls", "http://127.0.0.1:2381", "--log-level", "warn",
    ]  # fmt: skip


def apiserver(layout: ClusterLayout) -> list[str]:
    pki, cp = layout.pki, layout.control_plane
    return [
        str(layout.binary("kube-apiserver")),
        "--etcd-servers=http://127.0.0.1:2379",
        f"--advertise-address={cp.ip}", "--bind-address=0.0.0.0", f"--secure-port={APISERVER_PORT}",
        "--allow-privileged=true", "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",
        f"--client-ca-file={pki / 'ca.crt'}",
        f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
        # `kubectl logs` goes to the node agents' kubelet endpoint, verified against the cluster CA
        f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
        f"--kubelet-certificate-authority={pki / 'ca.crt'}", "--kubelet-preferred-address-types=InternalIP",
        # ServiceAccount tokens: TokenRequest, projected tokens, TokenReview
        f"--service-account-issuer={SA_ISSUER}", f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        # aggregation-layer front proxy CA: without it every component logs a missing requestheader bundle
        f"--requestheader-client-ca-file={pki / 'ca.crt'}",
        "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
        f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
        "--profiling=false", "--v=1",
    ]  # fmt: skip


def controller_manager(layout: ClusterLayout, kubeconfig: Path) -> list[str]:
    pki, config = layout.pki, str(kubeconfig)
    return [
        str(layout.binary("kube-controller-manager")),
        f"--kubeconfig={config}", f"--authentication-kubeconfig={config}",
        f"--authorization-kubeconfig={config}",
        "--leader-elect=false", "--use-service-account-credentials=true", "--authentication-skip-lookup=true",
        f"--service-account-private-key-file={pki / 'sa.key'}",
        f"--root-ca-file={pki / 'ca.crt'}",  # publishes kube-root-ca.crt, which kube-api-access volumes need
        f"--cluster-signing-cert-file={pki / 'ca.crt'}", f"--cluster-signing-key-file={pki / 'ca.key'}",
        f"--cluster-cidr={POD_CIDR}", f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--allocate-node-cidrs=false",  # node agents register their fixed pod /24
        "--bind-address=127.0.0.1", "--v=1",
    ]  # fmt: skip


def scheduler(layout: ClusterLayout, kubeconfig: Path) -> list[str]:
    config = str(kubeconfig)
    return [
        str(layout.binary("kube-scheduler")),
        f"--kubeconfig={config}", f"--authentication-kubeconfig={config}",
        f"--authorization-kubeconfig={config}",
        "--leader-elect=false", "--authentication-skip-lookup=true", "--bind-address=127.0.0.1", "--v=1",
    ]  # fmt: skip


def corefile(kubeconfig: Path) -> str:
    """Cluster DNS only (no upstream forwarding: the machines are offline); cache off,
    as Istio's CI sets it."""
    return (
        ".:53 {\n"
        "    errors\n"
        "    health :18080\n"
        "    ready :18181\n"
        f"    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{\n"
        f"        kubeconfig {kubeconfig} ambient-local\n"
        "        pods insecure\n"
        "        fallthrough in-addr.arpa ip6.arpa\n"
        "        ttl 0\n"
        "    }\n"
        "    prometheus 127.0.0.1:9153\n"
        "    loadbalance\n"
        "}\n"
    )


def coredns(layout: ClusterLayout, corefile_path: Path) -> list[str]:
    return [str(layout.binary("coredns")), "-conf", str(corefile_path)]


def kube_proxy(layout: ClusterLayout, node: NodeSpec, kubeconfig: Path) -> list[str]:
    return [
        str(layout.binary("kube-proxy")),
        f"--kubeconfig={kubeconfig}", f"--hostname-override={node.name}", "--proxy-mode=iptables",
        f"--bind-address={node.ip}",  # also the node IP kube-proxy uses
        f"--cluster-cidr={POD_CIDR}",  # traffic from pods is not masqueraded: servers see the client pod IP
        # conntrack table sizes and timeouts are host-global knobs: leave them alone
        "--conntrack-max-per-core=0", "--conntrack-tcp-timeout-established=0",
        "--conntrack-tcp-timeout-close-wait=0",
        "--iptables-min-sync-period=100ms",  # new endpoints reach the rules fast (tests wait on them)
        f"--healthz-bind-address={node.ip}:10256", "--metrics-bind-address=127.0.0.1:10249", "--v=1",
    ]  # fmt: skip


def agent(layout: ClusterLayout, node: NodeSpec) -> list[str]:
    return [
        sys.executable, "-m", "meshtest.cluster.agent", "--node", node.name, "--cache", str(layout.cache),
        "--workers", str(layout.workers), "--instance", str(layout.instance),
    ]  # fmt: skip


def node_conflist(node: NodeSpec) -> Obj:
    """The node's primary CNI network: bridge + host-local on the node's /24, then portmap for hostPort."""
    bridge: Obj = {
        "type": "bridge", "bridge": "cni0", "isGateway": True, "hairpinMode": True,
        "ipMasq": False,  # pod sources stay visible across nodes (routed, not NATed)
        "ipam": {"type": "host-local",
        "ranges": [[{"subnet": node.pod_cidr}]], "routes": [{"dst": "0.0.0.0/0"}]},
    }  # fmt: skip
    portmap: Obj = {"type": "portmap", "capabilities": {"portMappings": True}}
    return {"cniVersion": "1.0.0", "name": "amb-pod-network", "plugins": [bridge, portmap]}


def kube_dns_service() -> Obj:
    """Selector-less: its endpoint is the CoreDNS host process (see :func:`kube_dns_endpoints`)."""
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system",
                     "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}},
        "spec": {"clusterIP": DNS_SVC_IP, "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
        ]},
    }  # fmt: skip


def kube_dns_endpoints(layout: ClusterLayout) -> Obj:
    cp = layout.control_plane
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kube-dns-host", "namespace": "kube-system",
                     "labels": {"kubernetes.io/service-name": "kube-dns",
                                "endpointslice.kubernetes.io/managed-by": "meshtest.cluster"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [cp.ip], "conditions": {"ready": True}, "nodeName": cp.name}],
        "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp",
        "port": 53, "protocol": "TCP"}],
    }  # fmt: skip
