"""Generated Python code for the mesh's wire protocols (Istio workload API, authorization, CA, ZDS, delta ADS).

Produced by scripts/genproto.py from the .proto files in proto/; do not edit (see proto/README.md).
"""
