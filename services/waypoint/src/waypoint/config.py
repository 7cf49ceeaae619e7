"""``WaypointConfig`` protobuf → :class:`~waypoint.records.Snapshot`, and the store holding the current one.

:class:`ConfigStore` is the xDS updater for our type URL: ``apply(type_url, upserts, removes) -> rejected``.
A resource that does not compile (bad regex, bad weights) is rejected alone with its reason and the previous
snapshot stays in force, so one bad route never takes the others down. A resource for another waypoint
name is ignored. Conversion happens before the swap; the swap is one attribute assignment.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from google.protobuf import json_format
from meshkit.logs import kv
from meshproto.ambient.waypoint.v1 import waypoint_pb2 as pb

from waypoint import records as r
from waypoint.authz import compile_policy
from waypoint.jwtauth import compile_rules
from waypoint.matching import InvalidMatch, StrMatcher, compile_string_match
from waypoint.tlsstream import client_tls_context

__all__ = ["TYPE_URL", "ConfigStore", "InvalidConfig", "compile_snapshot"]

log = logging.getLogger("waypoint.config")
TYPE_URL = "type.googleapis.com/ambient.waypoint.v1.WaypointConfig"
PROTOCOLS = {pb.PROTOCOL_UNSPECIFIED: "", pb.TCP: "TCP", pb.HTTP: "HTTP", pb.HTTP2: "HTTP2", pb.GRPC: "GRPC"}
LBS = {
    pb.LB_DEFAULT: "LEAST_REQUEST",
    pb.ROUND_ROBIN: "ROUND_ROBIN",
    pb.LEAST_REQUEST: "LEAST_REQUEST",
    pb.RANDOM: "RANDOM",
    pb.PASSTHROUGH: "PASSTHROUGH",
    pb.CONSISTENT_HASH: "CONSISTENT_HASH",
}


class InvalidConfig(ValueError):
    """A WaypointConfig cannot be used; the message says which part."""


def _string(msg: pb.StringMatch) -> StrMatcher:
    kind = msg.WhichOneof("kind") or ""
    return compile_string_match(kind, getattr(msg, kind) if kind else "", msg.ignore_case)


def _mutation(msg: pb.HeaderMutation) -> r.HeaderMutation:
    return r.HeaderMutation(
        set=tuple((k.lower(), v) for k, v in sorted(msg.set.items())),
        add=tuple((k.lower(), v) for k, v in sorted(msg.add.items())),
        remove=tuple(h.lower() for h in msg.remove),
    )


def _header_match(msg: pb.HeaderMatch, lower: bool = True) -> r.HeaderMatch:
    value = _string(msg.value) if msg.HasField("value") else compile_string_match("", "")
    return r.HeaderMatch(msg.name.lower() if lower else msg.name, value, msg.invert)


def _match(msg: pb.RouteMatch) -> r.RouteMatch:
    return r.RouteMatch(
        path=_string(msg.path) if msg.HasField("path") else None,
        headers=tuple(_header_match(h) for h in msg.headers),
        query_params=tuple(_header_match(q, lower=False) for q in msg.query_params),
        method=msg.method.upper(),
        authority=_string(msg.authority) if msg.HasField("authority") else None,
        port=msg.port,
    )


def _route(msg: pb.Route, clusters: Mapping[str, r.Cluster]) -> r.Route:
    backends = tuple(
        r.Backend(b.cluster, b.weight, _mutation(b.request_headers), _mutation(b.response_headers))
        for b in msg.backends
    )
    for b in backends:
        if b.cluster not in clusters:
            raise InvalidConfig(f"route {msg.name}: unknown cluster {b.cluster!r}")
    red = msg.redirect if msg.HasField("redirect") else None
    rew = msg.rewrite if msg.HasField("rewrite") else None
    fault = msg.fault if msg.HasField("fault") else None
    retries = msg.retries if msg.HasField("retries") else None
    return r.Route(
        name=msg.name,
        matches=tuple(_match(m) for m in msg.matches),
        backends=backends,
        total_weight=sum(b.weight for b in backends),
        redirect=r.Redirect(
            red.scheme,
            red.hostname,
            red.port,
            red.path,
            red.prefix_replace,
            red.replace_prefix,
            red.status_code or 302,
        )
        if red
        else None,
        rewrite=r.Rewrite(rew.authority, rew.path, rew.prefix_replace, rew.replace_prefix) if rew else None,
        request_headers=_mutation(msg.request_headers),
        response_headers=_mutation(msg.response_headers),
        timeout_s=msg.timeout_ms / 1000.0,
        retries=r.RetryPolicy(
            retries.attempts,
            retries.per_try_timeout_ms / 1000.0,
            frozenset(retries.retry_on),
            frozenset(retries.retriable_status_codes),
        )
        if retries
        else None,
        fault=r.Fault(
            fault.delay_percent,
            fault.delay_ms / 1000.0,
            fault.abort_percent,
            fault.abort_status,
            fault.abort_grpc_status,
        )
        if fault
        else None,
        mirrors=tuple((m.cluster, m.percent) for m in msg.mirrors if m.cluster in clusters),
        direct_response=(msg.direct_response.status, msg.direct_response.body)
        if msg.HasField("direct_response")
        else None,
        source_namespace=msg.source_namespace,
    )


def _tls(msg: pb.Cluster) -> ssl.SSLContext | None:
    if not msg.HasField("tls"):
        return None
    try:
        return client_tls_context(msg.tls.ca_certificates, msg.tls.sni, msg.tls.insecure_skip_verify)
    except (ssl.SSLError, ValueError) as exc:
        raise InvalidConfig(f"cluster {msg.name}: bad TLS settings: {exc}") from None


def _cluster(msg: pb.Cluster) -> r.Cluster:
    hash_kind = msg.hash.WhichOneof("key") or "" if msg.HasField("hash") else ""
    hash_key = str(getattr(msg.hash, hash_kind)) if hash_kind else ""
    return r.Cluster(
        name=msg.name,
        hostname=msg.hostname,
        port=msg.port,
        subset=msg.subset,
        lb=LBS.get(msg.lb, "LEAST_REQUEST"),
        hash_kind=hash_kind,
        hash_key=hash_key,
        endpoints=tuple(_endpoint(e) for e in msg.endpoints),
        connect_timeout_s=(msg.connect_timeout_ms or 10_000) / 1000.0,
        outlier=r.OutlierDetection(
            msg.outlier.consecutive_5xx,
            msg.outlier.consecutive_gateway_errors,
            (msg.outlier.base_ejection_ms or 30_000) / 1000.0,
            msg.outlier.max_ejection_percent or 10,
        )
        if msg.HasField("outlier")
        else None,
        tls=_tls(msg),
        tls_sni=msg.tls.sni,
        max_connections=msg.max_connections,
        max_pending_requests=msg.max_pending_requests,
        max_requests_per_connection=msg.max_requests_per_connection,
    )


def _service(msg: pb.Service, clusters: Mapping[str, r.Cluster], reject: Callable[[str], None]) -> r.Service:
    routes = []
    for route in msg.routes:
        try:
            routes.append(_route(route, clusters))
        except (InvalidConfig, InvalidMatch) as exc:
            # One bad route is dropped, the others stay (istiod should have caught it; this is defence).
            reject(f"service {msg.hostname}: {exc}")
    return r.Service(
        hostname=msg.hostname,
        name=msg.name,
        namespace=msg.namespace,
        vips=tuple(msg.vips),
        ports=tuple(
            r.ServicePort(p.port, p.target_port, PROTOCOLS.get(p.protocol, ""), p.name) for p in msg.ports
        ),
        routes=tuple(routes),
        policies=tuple(compile_policy(p) for p in msg.policies),
        jwt=compile_rules([msg.jwt]) if msg.HasField("jwt") else compile_rules([]),
        workload=_endpoint(msg.workload) if msg.HasField("workload") else None,
        tcp_routes=tuple(
            _tcp_route(t, clusters, reject) for t in msg.tcp_routes if _known(t, clusters, reject)
        ),
    )


def _known(msg: pb.TcpRoute, clusters: Mapping[str, r.Cluster], reject: Callable[[str], None]) -> bool:
    missing = [b.cluster for b in msg.backends if b.cluster not in clusters]
    if missing:
        reject(f"tcp route {msg.name}: unknown clusters {missing}")
    return not missing


def _tcp_route(
    msg: pb.TcpRoute, clusters: Mapping[str, r.Cluster], reject: Callable[[str], None]
) -> tuple[int, r.Route]:
    backends = tuple(r.Backend(b.cluster, b.weight) for b in msg.backends if b.weight > 0)
    return msg.port, r.Route(name=msg.name, backends=backends, total_weight=sum(b.weight for b in backends))


def _endpoint(e: pb.Endpoint) -> r.Endpoint:
    return r.Endpoint(
        e.address,
        e.port,
        e.weight or 1,
        e.workload,
        e.namespace,
        e.identity,
        e.healthy,
        e.canonical_name,
        e.canonical_revision,
        e.cluster_id,
    )


def compile_snapshot(
    msg: pb.WaypointConfig, version: str = "", warn: Callable[[str], None] | None = None
) -> r.Snapshot:
    """Build a :class:`Snapshot`; raise :class:`InvalidConfig` when the resource as a whole is unusable."""
    problems: list[str] = []
    clusters = {c.name: _cluster(c) for c in msg.clusters}
    services = tuple(_service(s, clusters, problems.append) for s in msg.services)
    for problem in problems:
        (warn or log.warning)(problem)
    by_vip: dict[tuple[str, int], r.Service] = {}
    by_workload_ip: dict[str, r.Service] = {}
    for svc in services:
        if svc.workload is not None:
            by_workload_ip.update(dict.fromkeys(svc.vips, svc))
            continue
        for vip in svc.vips:
            for port in svc.ports:
                by_vip[(vip, port.port)] = svc
    return r.Snapshot(
        name=msg.name,
        namespace=msg.namespace,
        trust_domain=msg.trust_domain or "cluster.local",
        version=version,
        services=services,
        policies=tuple(compile_policy(p) for p in msg.policies),
        jwt=compile_rules([msg.jwt]) if msg.HasField("jwt") else compile_rules([]),
        clusters=clusters,
        by_vip=by_vip,
        by_host={s.hostname: s for s in services if s.workload is None},
        by_workload_ip=by_workload_ip,
        xfcc_client_identity=msg.xfcc_client_identity,
    )


class ConfigStore:
    """Holds the current :class:`Snapshot`; the xDS client calls :meth:`apply` with decoded resources."""

    def __init__(
        self, waypoint_name: str = "", on_change: Callable[[r.Snapshot], None] | None = None
    ) -> None:
        self.waypoint_name = waypoint_name  # "<ns>/<name>"; "" accepts any name (tests)
        self.snapshot = r.Snapshot()
        self.raw: pb.WaypointConfig | None = None
        self._on_change = on_change
        self._listeners: list[Callable[[r.Snapshot], None]] = []
        self.synced = False

    def subscribe(self, callback: Callable[[r.Snapshot], None]) -> None:
        self._listeners.append(callback)

    def apply(
        self, type_url: str, upserts: Iterable[tuple[str, Any]], removes: Iterable[str]
    ) -> list[tuple[str, str]]:
        """Apply one xDS update; returns ``[(resource name, reason)]`` for the resources rejected."""
        if type_url != TYPE_URL:
            return []
        rejected: list[tuple[str, str]] = []
        for name, resource in upserts:
            if self.waypoint_name and name != self.waypoint_name:
                continue
            try:
                msg = resource if isinstance(resource, pb.WaypointConfig) else _decode(resource)
                self._install(msg, compile_snapshot(msg, version=name))
            except (InvalidConfig, InvalidMatch, ValueError) as exc:
                log.warning("rejected waypoint config", extra=kv(resource=name, error=str(exc)))
                rejected.append((name, str(exc)))
        for name in removes:
            if not self.waypoint_name or name == self.waypoint_name:
                self._install(None, r.Snapshot())
        self.synced = True
        return rejected

    def _install(self, raw: pb.WaypointConfig | None, snap: r.Snapshot) -> None:
        self.raw = raw
        self.snapshot = snap
        for listener in [*self._listeners, *([self._on_change] if self._on_change else [])]:
            listener(snap)

    def dump(self) -> dict[str, Any]:
        """The current config as JSON-able data (``/config_dump``)."""
        if self.raw is None:
            return {"waypoint": self.waypoint_name, "config": None}
        data = json_format.MessageToDict(self.raw, preserving_proto_field_name=True)
        return {"waypoint": self.waypoint_name, "config": json.loads(json.dumps(data, sort_keys=True))}


def _decode(resource: Any) -> pb.WaypointConfig:
    msg = pb.WaypointConfig()
    if isinstance(resource, bytes | bytearray):
        msg.ParseFromString(bytes(resource))
        return msg
    # google.protobuf.Any
    if hasattr(resource, "Unpack") and resource.Unpack(msg):
        return msg
    raise InvalidConfig(f"cannot decode resource of type {type(resource).__name__}")
