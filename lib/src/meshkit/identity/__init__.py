"""Mesh identity: SPIFFE ids, workload certificates, the CA client and the certificate manager."""
