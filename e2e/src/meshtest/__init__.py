"""Test infrastructure: the local Kubernetes cluster, echo test apps and the e2e suite."""
