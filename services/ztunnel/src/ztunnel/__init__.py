"""ztunnel: the per-node L4 proxy (in-pod capture, HBONE, L4 authorization, DNS proxy)."""
