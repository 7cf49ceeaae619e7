"""ztunnel's typed settings (STYLE.md practice 9): one frozen object, built once by ``load(Settings)``.

Variable names follow upstream ztunnel where one exists (``INPOD_UDS``, ``PACKET_MARK``, ``INPOD_PORT_REUSE``,
``NODE_NAME``, ``NETWORK``, ``CLUSTER_ID``, ``CA_ADDRESS``, ``XDS_ADDRESS``, ``LOCAL_XDS_PATH``,
``CONNECTION_TERMINATION_DEADLINE``, ``DNS_CAPTURE``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from meshkit.settings import env, parse_duration

__all__ = ["Settings"]


@dataclass(frozen=True, slots=True)
class Settings:
    node_name: str = env(
        "NODE_NAME", "", "This node's name; only workloads with this node are served in-pod."
    )
    network: str = env("NETWORK", "", "This node's network (the network part of workload/VIP keys).")
    cluster_id: str = env("CLUSTER_ID", "Kubernetes", "This cluster's id.")
    cluster_domain: str = env("CLUSTER_DOMAIN", "cluster.local", "Kubernetes DNS domain for the DNS proxy.")
    inpod_enabled: bool = env("INPOD_ENABLED", True, "Serve pods handed over by the CNI agent over ZDS.")
    inpod_uds: str = env("INPOD_UDS", "/var/run/ztunnel/ztunnel.sock", "The CNI agent's ZDS socket.")
    inpod_mark: int = env("PACKET_MARK", 1337, "SO_MARK on every socket ztunnel opens in a pod.")
    inpod_port_reuse: bool = env("INPOD_PORT_REUSE", True, "SO_REUSEPORT on in-pod listeners (handover).")
    outbound_port: int = env("ZTUNNEL_OUTBOUND_PORT", 15001, "In-pod outbound capture port.")
    inbound_plaintext_port: int = env(
        "ZTUNNEL_INBOUND_PLAINTEXT_PORT", 15006, "In-pod inbound plaintext port."
    )
    inbound_port: int = env("ZTUNNEL_INBOUND_PORT", 15008, "In-pod HBONE port.")
    dns_port: int = env("ZTUNNEL_DNS_PORT", 15053, "In-pod DNS proxy port (127.0.0.1).")
    dns_capture: bool = env("DNS_CAPTURE", True, "Run the per-pod DNS proxy.")
    dns_resolv_conf: str = env(
        "DNS_RESOLV_CONF", "/etc/resolv.conf", "Upstream resolvers for forwarded queries."
    )
    admin_addr: str = env("ADMIN_ADDR", "127.0.0.1:15000", "Admin server (config_dump, logging).")
    stats_addr: str = env("STATS_ADDR", "0.0.0.0:15020", "Prometheus metrics server.")
    readiness_addr: str = env("READINESS_ADDR", "0.0.0.0:15021", "Readiness server (/healthz/ready).")
    xds_address: str = env(
        "XDS_ADDRESS",
        "istiod.istio-system.svc:15012",
        "istiod's xDS address; https:// unless given, http:// = plaintext without the token (tests).",
    )
    ca_address: str = env("CA_ADDRESS", "istiod.istio-system.svc:15012", "The CA's address.")
    xds_root_ca: str = env(
        "XDS_ROOT_CA",
        "/var/run/secrets/istio/root-cert.pem",
        "Root verifying istiod's xDS (file, inline PEM or SYSTEM); required for https.",
    )
    auth_token: str = env(
        "AUTH_TOKEN", "/var/run/secrets/tokens/istio-token", "Token file (or literal) for xDS."
    )
    pod_name: str = env("POD_NAME", "", "This ztunnel pod's name (xDS node id).")
    pod_namespace: str = env("POD_NAMESPACE", "istio-system", "This ztunnel pod's namespace (xDS node id).")
    instance_ip: str = env("INSTANCE_IP", "1.1.1.1", "This ztunnel pod's IP (xDS node id).")
    grpc_client: Literal["lite", "grpcio"] = env(
        "ZTUNNEL_GRPC", "lite", "xDS/CA client: lite (our h2, ~6 MB less RSS) or grpcio."
    )
    local_xds_path: str = env("LOCAL_XDS_PATH", "", "Static config file (JSON) instead of xDS.")
    workload_wait_s: float = env(
        "WORKLOAD_WAIT", 5.0, "How long a connection waits for its workload/cert.", parse=parse_duration
    )
    connection_termination_deadline_s: float = env(
        "CONNECTION_TERMINATION_DEADLINE",
        0.0,
        "Drain deadline on SIGTERM (0: derive it).",
        parse=parse_duration,
    )
    termination_grace_period_s: float = env(
        "TERMINATION_GRACE_PERIOD_SECONDS",
        0.0,
        "The pod's grace period (drain deadline fallback).",
        parse=float,
    )
    connect_timeout_s: float = env(
        "CONNECT_TIMEOUT", 10.0, "Upstream TCP connect timeout.", parse=parse_duration
    )
    log_level: str = env("LOG_LEVEL", "info", "Log levels: default[,scope=level...].")
    log_json: bool = env("LOG_AS_JSON", False, "JSON log lines.")


def split_addr(addr: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) -> (host, port)."""
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


def termination_deadline(s: Settings) -> float:
    """Upstream's drain deadline (behaviour.md §9): CONNECTION_TERMINATION_DEADLINE, else the grace period
    minus 5 s (minus 1 s when it is 10 s or less; at least 1 s), else 5 s."""
    if s.connection_termination_deadline_s > 0:
        return s.connection_termination_deadline_s
    grace = s.termination_grace_period_s
    if grace > 0:
        return max(1.0, grace - 5 if grace > 10 else grace - 1)
    return 5.0
