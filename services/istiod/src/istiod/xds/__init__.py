"""istiod's delta xDS server: the resource cache over the ambient index and the gRPC stream handler."""
