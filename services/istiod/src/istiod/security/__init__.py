"""Caller authentication for istiod's gRPC services (the CA and xDS share it)."""
