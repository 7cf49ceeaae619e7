"""The in-pod proxies: outbound (15001), inbound HBONE (15008), inbound plaintext (15006)."""
