"""istiod's typed settings (environment variables; names follow upstream where upstream has one)."""

from __future__ import annotations

from dataclasses import dataclass

from meshkit.settings import env, parse_duration


@dataclass(frozen=True, slots=True)
class Settings:
    kubeconfig: str = env("KUBECONFIG", "", "Kubeconfig file; empty = in-cluster config.")
    cluster_id: str = env("CLUSTER_ID", "Kubernetes", "This cluster's ID (Workload.cluster_id, uid prefix).")
    network: str = env("NETWORK", "", "Network of this cluster's workloads (Workload.network).")
    trust_domain: str = env("TRUST_DOMAIN", "cluster.local", "Mesh trust domain.")
    domain_suffix: str = env("DOMAIN_SUFFIX", "cluster.local", "Kubernetes DNS domain suffix.")
    root_namespace: str = env(
        "ROOT_NAMESPACE", "istio-system", "Mesh root namespace (MeshConfig rootNamespace)."
    )
    namespace: str = env("POD_NAMESPACE", "istio-system", "istiod's own namespace (leases, CA secrets).")
    pod_name: str = env("POD_NAME", "istiod", "This replica's name (leader-election identity).")
    secure_xds_addr: str = env("XDS_SECURE_ADDR", "0.0.0.0:15012", "TLS gRPC listener (xDS + CA).")
    plaintext_xds_addr: str = env(
        "XDS_PLAINTEXT_ADDR", "", "Plaintext gRPC listener, e.g. 0.0.0.0:15010; off."
    )
    monitoring_addr: str = env("MONITORING_ADDR", "0.0.0.0:15014", "Metrics (and localhost-only debug).")
    readiness_addr: str = env("READINESS_ADDR", "0.0.0.0:8080", "Readiness /ready.")
    debounce_s: float = env("PILOT_DEBOUNCE_AFTER", 0.1, "Quiet time before a push.", parse=parse_duration)
    debounce_max_s: float = env("PILOT_DEBOUNCE_MAX", 10.0, "Longest a push waits.", parse=parse_duration)
    max_connection_age_s: float = env(
        "MAX_CONNECTION_AGE", 1800.0, "xDS connections are rotated (GOAWAY) after this.", parse=parse_duration
    )
    dry_run_policies: bool = env(
        "AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY",
        False,
        "Send dry-run AuthorizationPolicies (dry_run=true).",
    )
    xds_auth: bool = env("XDS_AUTH", True, "Authenticate xDS clients with their ServiceAccount JWT.")
    identity_check: bool = env(
        "PILOT_ENABLE_XDS_IDENTITY_CHECK", True, "The token namespace must match the proxy namespace."
    )
    ca_enabled: bool = env("ENABLE_CA_SERVER", True, "Run the mesh CA (and use its serving certificate).")
    tls_cert_file: str = env(
        "ISTIOD_TLS_CERT", "", "Serving cert PEM for 15012 (overrides the CA-issued one)."
    )
    tls_key_file: str = env("ISTIOD_TLS_KEY", "", "Serving key PEM for 15012.")
    leader_election: bool = env("LEADER_ELECTION", True, "Gate writes (status, ConfigMaps) behind a Lease.")
    lease_name: str = env("LEADER_ELECTION_LEASE", "istio-leader", "Lease used for leader election.")
    log_level: str = env("LOG_LEVEL", "info", "Log levels, e.g. info,xds=debug.")
    log_json: bool = env("LOG_AS_JSON", False, "JSON log lines.")
