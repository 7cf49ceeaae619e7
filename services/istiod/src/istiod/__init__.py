"""istiod: the ambient control plane (Kubernetes watch, ambient index, delta xDS, CA, waypoints)."""
