"""The records ztunnel's state is made of: frozen, slotted, converted from protobuf before any lock is taken.

Field meanings follow wire-contracts.md §1-§2; defaults that ztunnel fills in (trust domain ``cluster.local``,
service account ``default``, cluster ``Kubernetes``, capacity 1) are applied at conversion so the rest of the
code never sees an empty value that means something else.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from meshkit.identity.spiffe import DEFAULT_TRUST_DOMAIN, Identity

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: (network, ip): the secondary key of workloads and service VIPs.
NetworkAddress = tuple[str, str]


@dataclass(frozen=True, slots=True)
class NamespacedHostname:
    namespace: str
    hostname: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.hostname}"


@dataclass(frozen=True, slots=True)
class GatewayAddress:
    """A waypoint or network gateway: by service hostname, or by (network, ip)."""

    hostname: NamespacedHostname | None
    address: NetworkAddress | None
    hbone_port: int = 15008

    def __str__(self) -> str:
        if self.hostname is not None:
            return str(self.hostname)
        assert self.address is not None
        return f"{self.address[0]}/{self.address[1]}"


@dataclass(frozen=True, slots=True)
class Locality:
    region: str = ""
    zone: str = ""
    subzone: str = ""


@dataclass(frozen=True, slots=True)
class Workload:
    uid: str
    name: str
    namespace: str
    addresses: tuple[str, ...] = ()
    hostname: str = ""
    network: str = ""
    tunnel_protocol: Literal["NONE", "HBONE"] = "NONE"
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    service_account: str = "default"
    waypoint: GatewayAddress | None = None
    network_gateway: GatewayAddress | None = None
    node: str = ""
    canonical_name: str = ""
    canonical_revision: str = ""
    workload_type: str = "deployment"
    workload_name: str = ""
    native_tunnel: bool = False
    application_tunnel: tuple[str, int] | None = None
    #: "ns/hostname" -> {service port: target port}
    services: Mapping[str, Mapping[int, int]] = field(default_factory=dict)
    authorization_policies: tuple[str, ...] = ()
    healthy: bool = True
    cluster_id: str = "Kubernetes"
    locality: Locality = Locality()
    network_mode: Literal["Standard", "HostNetwork"] = "Standard"
    capacity: int = 1

    @property
    def identity(self) -> Identity:
        return Identity(self.trust_domain, self.namespace, self.service_account)

    @property
    def hbone(self) -> bool:
        return self.tunnel_protocol == "HBONE"

    @property
    def is_pod(self) -> bool:
        """A Pod's workload (uid ``<cluster>//Pod/<ns>/<name>``), not one a user wrote (WorkloadEntry)."""
        return "//Pod/" in self.uid


@dataclass(frozen=True, slots=True)
class LoadBalancing:
    routing_preference: tuple[str, ...] = ()
    mode: Literal["UNSPECIFIED_MODE", "STRICT", "FAILOVER", "PASSTHROUGH"] = "UNSPECIFIED_MODE"
    health_policy: Literal["ONLY_HEALTHY", "ALLOW_ALL"] = "ONLY_HEALTHY"


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    namespace: str
    hostname: str
    vips: tuple[NetworkAddress, ...] = ()
    cidr_vips: tuple[tuple[str, IPNetwork], ...] = ()
    #: service port -> target port (0 = unset)
    ports: Mapping[int, int] = field(default_factory=dict)
    subject_alt_names: tuple[str, ...] = ()
    waypoint: GatewayAddress | None = None
    weighted_waypoints: tuple[tuple[GatewayAddress, int], ...] = ()
    load_balancer: LoadBalancing | None = None
    ip_families: str = "AUTOMATIC"
    canonical: bool = False
    visibility: Literal["PUBLIC", "NAMESPACE"] = "PUBLIC"

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.hostname}"

    def visible_to(self, namespace: str) -> bool:
        return self.visibility == "PUBLIC" or self.namespace == namespace


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A workload behind a service, with the workload's own port map for that service."""

    workload_uid: str
    ports: Mapping[int, int]


@dataclass(frozen=True, slots=True)
class StringMatch:
    kind: Literal["exact", "prefix", "suffix", "presence"]
    value: str = ""

    def matches(self, text: str) -> bool:
        if self.kind == "exact":
            return text == self.value
        if self.kind == "prefix":
            return text.startswith(self.value)
        if self.kind == "suffix":
            return text.endswith(self.value)
        return bool(text)


@dataclass(frozen=True, slots=True)
class Match:
    """One Match: field kinds AND-ed, values of a kind OR-ed, ``not_*`` lists must not match."""

    namespaces: tuple[StringMatch, ...] = ()
    not_namespaces: tuple[StringMatch, ...] = ()
    principals: tuple[StringMatch, ...] = ()
    not_principals: tuple[StringMatch, ...] = ()
    source_ips: tuple[IPNetwork, ...] = ()
    not_source_ips: tuple[IPNetwork, ...] = ()
    destination_ips: tuple[IPNetwork, ...] = ()
    not_destination_ips: tuple[IPNetwork, ...] = ()
    destination_ports: frozenset[int] = frozenset()
    not_destination_ports: frozenset[int] = frozenset()
    service_accounts: tuple[tuple[str, str], ...] = ()
    not_service_accounts: tuple[tuple[str, str], ...] = ()

    @property
    def empty(self) -> bool:
        return not any(getattr(self, name) for name in self.__slots__)


#: rules -> clauses -> matches
Rules = tuple[tuple[tuple[Match, ...], ...], ...]


@dataclass(frozen=True, slots=True)
class Authorization:
    name: str
    namespace: str
    scope: Literal["GLOBAL", "NAMESPACE", "WORKLOAD_SELECTOR"]
    action: Literal["ALLOW", "DENY"]
    rules: Rules = ()
    dry_run: bool = False

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"
