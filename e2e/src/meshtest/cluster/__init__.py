"""The local multi-node Kubernetes cluster: real upstream control-plane binaries, nodes as network namespaces,
and a node agent of ours in the kubelet's role. See ``e2e/cluster/README.md``."""

from __future__ import annotations

from meshtest.cluster.config import K8S_VERSION, KUBECONFIG_ENV, ClusterLayout, NodeSpec

__all__ = ["K8S_VERSION", "KUBECONFIG_ENV", "ClusterLayout", "NodeSpec"]
