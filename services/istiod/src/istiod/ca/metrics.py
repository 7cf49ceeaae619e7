"""istiod CA metrics, under upstream's ``citadel_server_*`` names."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["CaMetrics"]


class CaMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.csr = Counter("citadel_server_csr_count", "CSRs received.", registry=registry)
        self.authn_failures = Counter(
            "citadel_server_authentication_failure_count",
            "Callers that failed authentication.",
            registry=registry,
        )
        self.csr_parsing_errors = Counter(
            "citadel_server_csr_parsing_err_count",
            "CSRs that could not be parsed or were refused.",
            registry=registry,
        )
        self.sign_errors = Counter(
            "citadel_server_csr_sign_err_count",
            "CSRs that failed signing.",
            ["error_type"],
            registry=registry,
        )
        self.issued = Counter(
            "citadel_server_success_cert_issuance_count", "Certificates issued.", registry=registry
        )
        self.root_expiry = Gauge(
            "citadel_server_root_cert_expiry_timestamp",
            "Root certificate expiry (unix seconds).",
            registry=registry,
        )
        self.chain_expiry = Gauge(
            "citadel_server_cert_chain_expiry_timestamp",
            "Signing certificate expiry (unix seconds).",
            registry=registry,
        )
