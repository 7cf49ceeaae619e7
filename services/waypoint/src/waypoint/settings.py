"""The waypoint's typed settings (one object, built once at start-up; every field has a default)."""

from __future__ import annotations

from dataclasses import dataclass

from meshkit.settings import env, parse_duration

__all__ = ["Settings"]


@dataclass(frozen=True, slots=True)
class Settings:
    """Environment of the waypoint container (istiod's Deployment builder sets the first group)."""

    waypoint_name: str = env("WAYPOINT_NAME", "waypoint", "Name of the Gateway this proxy serves.")
    pod_namespace: str = env("POD_NAMESPACE", "default", "Namespace of the Gateway and of this pod.")
    pod_name: str = env("POD_NAME", "", "This pod's name (xDS node id).")
    pod_ip: str = env("POD_IP", "127.0.0.1", "This pod's IP: source of upstream HBONE connections.")
    service_account: str = env(
        "SERVICE_ACCOUNT", "waypoint", "The waypoint's service account (its identity)."
    )
    trust_domain: str = env("TRUST_DOMAIN", "cluster.local", "Mesh trust domain.")
    xds_address: str = env(
        "XDS_ADDRESS",
        "istiod.istio-system.svc:15012",
        "istiod delta xDS: TLS (default), or http://host:port plaintext.",
    )
    ca_address: str = env("CA_ADDRESS", "istiod.istio-system.svc:15012", "istiod CA (TLS gRPC).")
    config_file: str = env(
        "WAYPOINT_CONFIG_FILE", "", "Static WaypointConfig (protobuf JSON); no xDS when set."
    )

    hbone_addr: str = env("HBONE_ADDR", "0.0.0.0:15008", "Inbound HBONE listener.")
    admin_addr: str = env("ADMIN_ADDR", "127.0.0.1:15000", "Admin: /config_dump, /logging, /quitquitquit.")
    stats_addr: str = env("STATS_ADDR", "0.0.0.0:15020", "Prometheus /metrics and /stats/prometheus.")
    readiness_addr: str = env("READINESS_ADDR", "0.0.0.0:15021", "Readiness /healthz/ready.")

    drain_duration_s: float = env(
        "TERMINATION_DRAIN_DURATION",
        5.0,
        "On SIGTERM: time in-flight tunnels get to finish.",
        parse=parse_duration,
    )
    sniff_timeout_s: float = env(
        "PROTOCOL_DETECTION_TIMEOUT",
        5.0,
        "Wait this long for a client's first bytes before TCP passthrough.",
        parse=parse_duration,
    )
    otlp_endpoint: str = env(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "",
        "OTLP/HTTP collector base URL (e.g. http://otel:4318); empty: no spans.",
    )
    access_log: bool = env("ACCESS_LOG", True, "Write one access-log record per request (logger 'access').")
    log_level: str = env("LOG_LEVEL", "info", "Log levels: default[,scope=level...].")
    log_json: bool = env("LOG_AS_JSON", False, "JSON log lines.")
