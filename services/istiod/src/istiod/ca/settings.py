"""The CA's settings, named as upstream istiod names them (wire-contracts.md §4.3-4.4)."""

from __future__ import annotations

from dataclasses import dataclass

from meshkit.settings import env, parse_duration

__all__ = ["CaSettings"]


@dataclass(frozen=True, slots=True)
class CaSettings:
    namespace: str = env("POD_NAMESPACE", "istio-system", "istiod's namespace: where the CA Secrets live.")
    trust_domain: str = env("TRUST_DOMAIN", "cluster.local", "Mesh trust domain (mesh config trustDomain).")
    trust_domain_aliases: list[str] = env(
        "TRUST_DOMAIN_ALIASES", [], "Other trust domains node proxies may request identities in."
    )
    cluster_id: str = env("CLUSTER_ID", "Kubernetes", "This cluster's id; callers send it as clusterid.")
    # Upstream's binary default is empty (no impersonation); its Helm chart sets <istioNamespace>/ztunnel. We
    # default to what a standard install runs with, so istiod started without the chart still serves ztunnel.
    trusted_node_accounts: list[str] = env(
        "CA_TRUSTED_NODE_ACCOUNTS",
        ["istio-system/ztunnel"],
        "ns/sa accounts allowed to impersonate (ztunnel).",
    )
    token_audiences: list[str] = env("TOKEN_AUDIENCES", ["istio-ca"], "JWT audiences istiod accepts.")
    token_review_cache_ttl: float = env(
        "CA_TOKEN_REVIEW_CACHE_TTL", 60.0, "How long a TokenReview answer is reused.", parse=parse_duration
    )
    default_cert_ttl: float = env(
        "DEFAULT_WORKLOAD_CERT_TTL", 86400.0, "Lifetime when the CSR asks for none.", parse=parse_duration
    )
    max_cert_ttl: float = env(
        "MAX_WORKLOAD_CERT_TTL", 90 * 86400.0, "Longest lifetime a caller may request.", parse=parse_duration
    )
    self_signed_rsa_key_size: int = env(
        "CITADEL_SELF_SIGNED_CA_RSA_KEY_SIZE", 2048, "RSA key size of a generated self-signed root."
    )
    self_signed_ttl: float = env(
        "CITADEL_SELF_SIGNED_CA_CERT_TTL", 3650 * 86400.0, "Self-signed root lifetime.", parse=parse_duration
    )
    cacerts_dir: str = env("CACERTS_DIR", "/etc/cacerts", "Mounted plug-in CA files (cacerts Secret).")
    root_configmap: str = env("PILOT_CA_CERT_CONFIGMAP", "istio-ca-root-cert", "ConfigMap carrying the root.")
    revision: str = env(
        "REVISION", "default", "Control-plane revision; adds istiod-<rev>.<ns>.svc to the cert."
    )
    custom_hosts: list[str] = env(
        "ISTIOD_CUSTOM_HOST", [], "Extra DNS names for istiod's serving certificate."
    )
