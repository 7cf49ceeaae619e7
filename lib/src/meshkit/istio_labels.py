"""Istio's standard metric labels (behaviour.md §6.3, §7.2): their names, and how each end of a connection
fills its share of them.

ztunnel (TCP metrics, §7.2) and the waypoint (request and TCP metrics, §6.3) export the same vocabulary:
``reporter``, eight ``source_*`` and eight ``destination_*`` labels describing the two peers, the three
``destination_service*`` labels, and the protocol/outcome labels. A :class:`Peer` is what both know about
one end; :meth:`Peer.labels` maps it onto the ``source_*`` or ``destination_*`` names, the same way for both
(``*_app`` is the canonical service and ``*_version`` the canonical revision, §7.2; a missing value is
``unknown``).

The tuples below fix the positional order of each service's ``labels(*values)``; prometheus-client sorts
labels by name when it renders, so the order is not visible on the wire.

Standard library only, on purpose: ztunnel imports this and keeps its memory small by never importing
aiohttp (which :mod:`meshkit.metrics` serves with) or other heavy modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "DESTINATION_LABELS",
    "LOCALITY_LABELS",
    "REQUEST_LABELS",
    "REQUEST_TCP_LABELS",
    "SERVICE_LABELS",
    "SOURCE_LABELS",
    "TRAFFIC_LABELS",
    "UNKNOWN",
    "Peer",
    "Side",
    "peer_values",
    "service_labels",
]

UNKNOWN = "unknown"

Side = Literal["source", "destination"]


def _peer_names(side: Side) -> tuple[str, ...]:
    return (
        f"{side}_workload",
        f"{side}_canonical_service",
        f"{side}_canonical_revision",
        f"{side}_workload_namespace",
        f"{side}_principal",
        f"{side}_app",
        f"{side}_version",
        f"{side}_cluster",
    )


#: The labels describing one peer, in Istio's order (the same pattern on both sides).
SOURCE_LABELS = _peer_names("source")
DESTINATION_LABELS = _peer_names("destination")
#: The intended Service.
SERVICE_LABELS = ("destination_service", "destination_service_namespace", "destination_service_name")
#: Only ztunnel exports these (§7.2).
LOCALITY_LABELS = ("source_region", "source_zone", "destination_region", "destination_zone")

#: ztunnel's common traffic labels (behaviour.md §7.2), in the order upstream encodes them.
TRAFFIC_LABELS = (
    "reporter",
    *SOURCE_LABELS,
    *SERVICE_LABELS,
    *DESTINATION_LABELS,
    "request_protocol",
    "response_flags",
    "connection_security_policy",
    *LOCALITY_LABELS,
)
#: Envoy's istio_stats labels of request metrics (``istio_requests_total`` & co., behaviour.md §6.3), as the
#: waypoint exports them.
REQUEST_LABELS = (
    "reporter",
    *SOURCE_LABELS,
    *SERVICE_LABELS,
    *DESTINATION_LABELS,
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
)
#: The same filter's TCP metrics (``istio_tcp_*`` of a TCP chain): no response code or gRPC status.
REQUEST_TCP_LABELS = tuple(n for n in REQUEST_LABELS if n not in {"response_code", "grpc_response_status"})

_PEER_NAMES: dict[str, tuple[str, ...]] = {
    side: (*_peer_names(side), f"{side}_region", f"{side}_zone") for side in ("source", "destination")
}


@dataclass(frozen=True, slots=True)
class Peer:
    """One end of a connection, as Istio's metrics describe it. An empty field is not known (``unknown``)."""

    workload: str = ""
    namespace: str = ""
    #: The full ``spiffe://`` URI.
    principal: str = ""
    canonical_service: str = ""
    canonical_revision: str = ""
    cluster: str = ""
    region: str = ""
    zone: str = ""

    def values(self) -> tuple[str, ...]:
        """The values of :data:`SOURCE_LABELS` or :data:`DESTINATION_LABELS`, in that order."""
        return peer_values(
            self.workload,
            self.namespace,
            self.principal,
            self.canonical_service,
            self.canonical_revision,
            self.cluster,
        )

    def labels(self, side: Side) -> dict[str, str]:
        """The ``<side>_*`` labels of this peer, locality included (only ztunnel exports those)."""
        values = (*self.values(), self.region or UNKNOWN, self.zone or UNKNOWN)
        return dict(zip(_PEER_NAMES[side], values, strict=True))


def peer_values(  # noqa: PLR0917  # positional on purpose: the waypoint calls it per request
    workload: str,
    namespace: str,
    principal: str,
    canonical_service: str,
    canonical_revision: str,
    cluster: str,
) -> tuple[str, ...]:
    """The values of :data:`SOURCE_LABELS` or :data:`DESTINATION_LABELS` for one peer, in that order:
    ``*_app`` is the canonical service and ``*_version`` the canonical revision (§7.2), and an empty value is
    ``unknown``. For callers that have the fields but no :class:`Peer` (building one costs more)."""
    u = UNKNOWN
    service, revision = canonical_service or u, canonical_revision or u
    return (workload or u, service, revision, namespace or u, principal or u, service, revision, cluster or u)


def service_labels(hostname: str, name: str, namespace: str) -> dict[str, str]:
    """The ``destination_service*`` labels of the intended Service (``unknown`` where there is none)."""
    return {
        "destination_service": hostname or UNKNOWN,
        "destination_service_namespace": namespace or UNKNOWN,
        "destination_service_name": name or UNKNOWN,
    }
