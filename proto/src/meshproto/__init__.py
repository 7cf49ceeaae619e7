"""Generated Python code for the mesh's wire protocols (Istio workload API, authorization, CA, ZDS, delta ADS)."""
