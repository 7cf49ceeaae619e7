"""The ambient index's output records: frozen, slotted mirrors of the workload and authorization APIs.

Transformations (``workloads``, ``services``, ``authz``, ``peerauthn``) produce these; :mod:`.encode` turns
them into protobuf only at the xDS boundary. Being values, two records compare equal exactly when the
resource ztunnel would receive is the same, which is what lets a derived collection drop no-op changes.
Enum fields hold the wire numbers (wire-contracts.md §1.5, §2.2).
"""

from __future__ import annotations

from dataclasses import dataclass

# --- enums (wire numbers) ---
TUNNEL_NONE, TUNNEL_HBONE = 0, 1
STATUS_HEALTHY, STATUS_UNHEALTHY = 0, 1
WORKLOAD_TYPE_POD = 2
NETWORK_MODE_STANDARD, NETWORK_MODE_HOST = 0, 1
APP_PROTOCOL_UNKNOWN, APP_PROTOCOL_HTTP11, APP_PROTOCOL_HTTP2, APP_PROTOCOL_GRPC = 0, 1, 2, 3
IP_FAMILIES_AUTOMATIC, IP_FAMILIES_IPV4, IP_FAMILIES_IPV6, IP_FAMILIES_DUAL = 0, 1, 2, 3
LB_MODE_UNSPECIFIED, LB_MODE_STRICT, LB_MODE_FAILOVER, LB_MODE_PASSTHROUGH = 0, 1, 2, 3
LB_HEALTH_ONLY_HEALTHY, LB_HEALTH_ALLOW_ALL = 0, 1
SCOPE_REGION, SCOPE_ZONE, SCOPE_SUBZONE, SCOPE_NODE, SCOPE_NETWORK = 1, 2, 3, 4, 6
APP_TUNNEL_NONE, APP_TUNNEL_PROXY = 0, 1
AUTHZ_SCOPE_GLOBAL, AUTHZ_SCOPE_NAMESPACE, AUTHZ_SCOPE_WORKLOAD_SELECTOR = 0, 1, 2
ACTION_ALLOW, ACTION_DENY = 0, 1


@dataclass(frozen=True, slots=True)
class NetworkAddress:
    network: str
    address: bytes
    length: int | None = None  # CIDR prefix for a CIDR VIP; None for a host address


@dataclass(frozen=True, slots=True)
class GatewayAddress:
    """A waypoint: by hostname (``namespace``, ``hostname``) or by ``address``."""

    hostname_namespace: str = ""
    hostname: str = ""
    address: NetworkAddress | None = None
    hbone_mtls_port: int = 15008


@dataclass(frozen=True, slots=True)
class WeightedWaypoint:
    destination: GatewayAddress
    weight: int


@dataclass(frozen=True, slots=True)
class Port:
    service_port: int
    target_port: int
    app_protocol: int = APP_PROTOCOL_UNKNOWN


@dataclass(frozen=True, slots=True)
class Locality:
    region: str = ""
    zone: str = ""
    subzone: str = ""


@dataclass(frozen=True, slots=True)
class ApplicationTunnel:
    protocol: int
    port: int = 0


@dataclass(frozen=True, slots=True)
class LoadBalancing:
    routing_preference: tuple[int, ...] = ()
    mode: int = LB_MODE_UNSPECIFIED
    health_policy: int = LB_HEALTH_ONLY_HEALTHY


@dataclass(frozen=True, slots=True)
class Workload:
    uid: str
    name: str
    namespace: str
    addresses: tuple[bytes, ...] = ()
    hostname: str = ""
    network: str = ""
    tunnel_protocol: int = TUNNEL_NONE
    trust_domain: str = ""
    service_account: str = ""
    waypoint: GatewayAddress | None = None
    node: str = ""
    canonical_name: str = ""
    canonical_revision: str = ""
    workload_type: int = WORKLOAD_TYPE_POD
    workload_name: str = ""
    native_tunnel: bool = False
    application_tunnel: ApplicationTunnel | None = None
    services: tuple[tuple[str, tuple[Port, ...]], ...] = ()  # sorted by key
    authorization_policies: tuple[str, ...] = ()
    status: int = STATUS_HEALTHY
    cluster_id: str = ""
    locality: Locality | None = None
    network_mode: int = NETWORK_MODE_STANDARD

    @property
    def resource_name(self) -> str:
        return self.uid


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    namespace: str
    hostname: str
    addresses: tuple[NetworkAddress, ...] = ()
    ports: tuple[Port, ...] = ()
    subject_alt_names: tuple[str, ...] = ()
    waypoint: GatewayAddress | None = None
    load_balancing: LoadBalancing | None = None
    ip_families: int = IP_FAMILIES_AUTOMATIC
    canonical: bool = False
    ingress_use_waypoint: bool = False
    weighted_waypoints: tuple[WeightedWaypoint, ...] = ()

    @property
    def resource_name(self) -> str:
        return f"{self.namespace}/{self.hostname}"


# --- authorization ---


@dataclass(frozen=True, slots=True)
class StringMatch:
    kind: str  # "exact" | "prefix" | "suffix" | "presence"
    value: str = ""


PRESENCE = StringMatch("presence")


@dataclass(frozen=True, slots=True)
class IpMatch:
    address: bytes
    length: int


@dataclass(frozen=True, slots=True)
class ServiceAccountMatch:
    namespace: str
    service_account: str


@dataclass(frozen=True, slots=True)
class Match:
    namespaces: tuple[StringMatch, ...] = ()
    not_namespaces: tuple[StringMatch, ...] = ()
    principals: tuple[StringMatch, ...] = ()
    not_principals: tuple[StringMatch, ...] = ()
    source_ips: tuple[IpMatch, ...] = ()
    not_source_ips: tuple[IpMatch, ...] = ()
    destination_ips: tuple[IpMatch, ...] = ()
    not_destination_ips: tuple[IpMatch, ...] = ()
    destination_ports: tuple[int, ...] = ()
    not_destination_ports: tuple[int, ...] = ()
    service_accounts: tuple[ServiceAccountMatch, ...] = ()
    not_service_accounts: tuple[ServiceAccountMatch, ...] = ()

    @property
    def empty(self) -> bool:
        return self == _EMPTY_MATCH


_EMPTY_MATCH = Match()


@dataclass(frozen=True, slots=True)
class Clause:
    """Matches are OR-ed (ztunnel semantics, wire-contracts.md §2.1)."""

    matches: tuple[Match, ...]


@dataclass(frozen=True, slots=True)
class Rule:
    """Clauses are AND-ed; a rule with no clauses matches everything."""

    clauses: tuple[Clause, ...]


@dataclass(frozen=True, slots=True)
class Authorization:
    name: str
    namespace: str
    scope: int
    action: int
    rules: tuple[Rule, ...] = ()
    dry_run: bool = False

    @property
    def resource_name(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class PolicyStatus:
    """A condition istiod reports on an AuthorizationPolicy (reason ``UnsupportedValue``)."""

    reason: str
    message: str
