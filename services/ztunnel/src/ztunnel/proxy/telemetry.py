"""One record per proxied connection: the metrics and the access-log line derive from it (§7, STYLE 11).

``ConnectionRecord`` is created when a connection is accepted and its endpoints are known; ``open()`` bumps
``istio_tcp_connections_opened_total``, the relay reports bytes as they are copied (request direction =
``received``, response direction = ``sent``, for both reporters), and ``close(error, flags)`` bumps the
closed/failed counters and writes exactly one ``access`` log record ("connection complete"). Calling
``close`` twice is harmless: only the first call counts.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from meshkit.identity.spiffe import Identity
from meshkit.istio_labels import TRAFFIC_LABELS, UNKNOWN, Peer, service_labels
from meshkit.logs import kv
from prometheus_client import Counter

from ztunnel.metrics import FAILURE_FLAGS, ProxyMetrics
from ztunnel.state.records import Service, Workload

__all__ = ["ConnectionRecord", "Endpoints", "connection_failed"]

access_log = logging.getLogger("access")


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Who talks to whom, as far as telemetry is concerned."""

    direction: str  # "outbound" | "inbound"
    src_addr: tuple[str, int]
    dst_addr: tuple[str, int]
    hbone_addr: str = ""
    src_workload: Workload | None = None
    src_identity: Identity | None = None
    dst_workload: Workload | None = None
    dst_identity: Identity | None = None
    dst_service: Service | None = None
    mtls: bool = False


def _peer(wl: Workload | None, identity: Identity | None) -> Peer:
    principal = identity.uri if identity else ""
    if wl is None:
        return Peer(principal=principal)
    return Peer(
        workload=wl.workload_name,
        namespace=wl.namespace,
        principal=principal,
        canonical_service=wl.canonical_name,
        canonical_revision=wl.canonical_revision,
        cluster=wl.cluster_id,
        region=wl.locality.region,
        zone=wl.locality.zone,
    )


def _labels(e: Endpoints, flags: str) -> dict[str, str]:
    svc = e.dst_service
    values = {
        "reporter": "source" if e.direction == "outbound" else "destination",
        **_peer(e.src_workload, e.src_identity).labels("source"),
        **(service_labels(svc.hostname, svc.name, svc.namespace) if svc else service_labels("", "", "")),
        **_peer(e.dst_workload, e.dst_identity).labels("destination"),
        "request_protocol": "tcp",
        "response_flags": flags,
        "connection_security_policy": "mutual_tls" if e.mtls else UNKNOWN,
    }
    return {k: values[k] for k in TRAFFIC_LABELS}


def _addr(addr: tuple[str, int]) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ConnectionRecord:
    """Telemetry of one connection, from open to close."""

    __slots__ = (
        "_base",
        "_closed",
        "_recv",
        "_sent",
        "_start",
        "endpoints",
        "metrics",
        "request_bytes",
        "response_bytes",
    )

    def __init__(self, metrics: ProxyMetrics, endpoints: Endpoints) -> None:
        self.metrics = metrics
        self.endpoints = endpoints
        self.request_bytes = 0
        self.response_bytes = 0
        self._start = time.monotonic()
        self._closed = False
        labels = self._base = _labels(endpoints, "-")  # computed once per connection
        self._recv: Counter = metrics.received_bytes.labels(**labels)
        self._sent: Counter = metrics.sent_bytes.labels(**labels)

    def open(self) -> None:
        if access_log.isEnabledFor(logging.DEBUG):
            e = self.endpoints
            access_log.debug(
                "connection opened",
                extra=kv(
                    **{"src.addr": _addr(e.src_addr), "dst.addr": _addr(e.dst_addr), "direction": e.direction}
                ),
            )
        self.metrics.opened.labels(**self._base).inc()
        self.metrics.sockets_open.labels(reporter=self._base["reporter"]).inc()

    def add_request_bytes(self, n: int) -> None:
        """Bytes read from the initiating side and written upstream."""
        self.request_bytes += n
        self._recv.inc(n)

    def add_bytes(self, request: int, response: int) -> None:
        if request:
            self.add_request_bytes(request)
        if response:
            self.add_response_bytes(response)

    def add_response_bytes(self, n: int) -> None:
        self.response_bytes += n
        self._sent.inc(n)

    def sync(self, request_total: int, response_total: int) -> None:
        """Bring the byte counters up to running totals (called while copying and at close)."""
        if request_total > self.request_bytes:
            self.add_request_bytes(request_total - self.request_bytes)
        if response_total > self.response_bytes:
            self.add_response_bytes(response_total - self.response_bytes)

    def close(self, error: str | None = None, flags: str = "-") -> None:
        if self._closed:
            return
        self._closed = True
        labels = self._base if flags == "-" else {**self._base, "response_flags": flags}
        self.metrics.closed.labels(**labels).inc()
        self.metrics.sockets_open.labels(reporter=labels["reporter"]).dec()
        if flags in FAILURE_FLAGS:
            self.metrics.failed.labels(**labels).inc()
        self._log(error)

    def _log(self, error: str | None) -> None:
        e = self.endpoints
        inbound = e.direction == "inbound"
        fields: dict[str, Any] = {"src.addr": _addr(e.src_addr)}
        if e.src_workload is not None:
            fields["src.workload"] = e.src_workload.name
            fields["src.namespace"] = e.src_workload.namespace
        if e.src_identity is not None and e.mtls:
            fields["src.identity"] = e.src_identity.uri
        fields["dst.addr"] = _addr(e.dst_addr)
        if e.hbone_addr:
            fields["dst.hbone_addr"] = e.hbone_addr
        if e.dst_service is not None:
            fields["dst.service"] = e.dst_service.hostname
        if e.dst_workload is not None:
            fields["dst.workload"] = e.dst_workload.name
            fields["dst.namespace"] = e.dst_workload.namespace
        if e.dst_identity is not None and e.mtls:
            fields["dst.identity"] = e.dst_identity.uri
        fields["direction"] = e.direction
        # Access log is from the pod's point of view (behaviour.md §7.2, istio/istio#32399).
        fields["bytes_sent"] = self.response_bytes if inbound else self.request_bytes
        fields["bytes_recv"] = self.request_bytes if inbound else self.response_bytes
        fields["duration"] = f"{int((time.monotonic() - self._start) * 1000)}ms"
        if error:
            fields["error"] = error
            access_log.error("connection complete", extra=kv(**fields))
        else:
            access_log.info("connection complete", extra=kv(**fields))


def connection_failed(direction: str, src: tuple[str, int], dst: tuple[str, int] | None, error: str) -> None:
    """An early rejection, before there is a connection record (§7.3: WARN "connection failed")."""
    access_log.warning(
        "connection failed",
        extra=kv(
            **{
                "src.addr": _addr(src),
                "dst.addr": _addr(dst) if dst else "-",
                "direction": direction,
                "error": error,
            }
        ),
    )
