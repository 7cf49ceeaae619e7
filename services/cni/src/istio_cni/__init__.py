"""istio-cni: the CNI plugin and node agent that enrol pods into the ambient mesh."""
