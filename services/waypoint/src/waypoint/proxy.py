"""The waypoint data path: one HBONE CONNECT from a ztunnel in, L7 processing, HBONE to the chosen pod out.

Per tunnel (:meth:`WaypointProxy.handle`): the ``:authority`` (original VIP:port) must name a Service bound
to this waypoint (else 503, behaviour.md §6.2 "blackhole"). The port's protocol decides the codec: ``TCP`` is
passthrough; ``HTTP``/``HTTP2``/``GRPC`` or an unnamed port are sniffed from the first bytes (HTTP/1.1
request line → HTTP/1.1, h2c preface → h2c, anything else → TCP passthrough).

Per request (:meth:`WaypointProxy.process`), in upstream's filter order:
``x-request-id`` → tracing (continue ``traceparent``) → JWT (401) → authorization CUSTOM/DENY/ALLOW (403
``RBAC: access denied``) → route (404 when routes exist and none matches) → direct response / redirect →
fault (delay, abort) → rewrite + header mutations → backend (weights) → endpoint (DestinationRule LB) →
exchange with retries and timeouts (503 UF/UC/UH, 504 UT) → response header mutations → telemetry (metrics,
one access-log record, span end). Local replies go through the same telemetry.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from meshkit.drain import TaskOwner
from meshkit.hbone.errors import HboneError
from meshkit.hbone.request import ConnectRequest
from meshkit.hbone.server import Accept, Decision, InboundPeer, Reject
from meshkit.hbone.stream import HboneStream
from meshkit.istio_labels import UNKNOWN, Peer, peer_values
from meshkit.logs import kv

from waypoint import records as rec
from waypoint.authz import AuthzContext, Policy, evaluate
from waypoint.authz import Decision as AuthzDecision
from waypoint.config import ConfigStore
from waypoint.forwarding import Forwarder, Outcome
from waypoint.h2c import grpc_status_for, serve_h2c
from waypoint.http1 import (
    CONTINUE,
    BadMessage,
    Request,
    RequestParser,
    Response,
    normalize_path,
    serialize_request,
    serialize_response,
    simple_response,
)
from waypoint.jwtauth import JwtFailure, JwtRules
from waypoint.routing import (
    default_route,
    pick_backend,
    redirect_location,
    rewrite_request,
    select_route,
)
from waypoint.telemetry import (
    RequestMetrics,
    RequestSpan,
    Tracing,
    grpc_messages,
    log_access,
    source_peer,
    tcp_labels,
)
from waypoint.upstream import StreamOpener, UpstreamError, relay_streams

__all__ = ["Downstream", "ExtAuthzCheck", "WaypointProxy", "request_labels"]

log = logging.getLogger("waypoint")

_UNKNOWN_PEER = Peer().values()

H2_PREFACE = b"PRI * HTTP/2.0"
_METHOD_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")

#: CUSTOM authorization: (policy, request, downstream) -> None to allow, or the denial Response.
ExtAuthzCheck = Callable[[Policy, Request, "Downstream"], Awaitable[Response | None]]


@dataclass(frozen=True, slots=True)
class Downstream:
    """What we know about one inbound tunnel."""

    peer: InboundPeer
    service: rec.Service
    port: int
    authority: str
    source: Peer

    @property
    def principal(self) -> str:
        return self.peer.identity.principal


def request_labels(  # noqa: PLR0917
    down: Downstream,
    cluster: rec.Cluster | None,
    ep: rec.Endpoint | None,
    proto: str,
    code: str,
    flags: str,
    grpc_status: str = "",
) -> tuple[str, ...]:
    """The values of Istio's request labels (``REQUEST_LABELS``, in that order) for one request or TCP chain:
    the tunnel's source peer, the intended Service (the cluster's, else the bound one) and the endpoint."""
    host = cluster.hostname if cluster else down.service.hostname
    svc_name, _, rest = host.partition(".")
    svc_ns = rest.partition(".")[0] if rest else UNKNOWN
    dst = (
        peer_values(
            ep.workload, ep.namespace, ep.identity, ep.canonical_name, ep.canonical_revision, ep.cluster_id
        )
        if ep
        else _UNKNOWN_PEER
    )
    return (
        "waypoint",
        *down.source.values(),
        host,
        svc_ns,
        svc_name,
        *dst,
        proto,
        code,
        grpc_status,
        flags,
        "mutual_tls",
    )


class WaypointProxy:
    """Terminates HBONE tunnels and proxies the requests inside them."""

    def __init__(
        self,
        store: ConfigStore,
        opener: StreamOpener,
        metrics: RequestMetrics,
        tracing: Tracing | None = None,
        *,
        identity: str = "",
        rng: random.Random | None = None,
        ext_authz: ExtAuthzCheck | None = None,
        sniff_timeout_s: float = 5.0,
        owner: TaskOwner | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.tracing = tracing or Tracing()
        self.identity = identity
        self.rng = rng or random.Random()
        self._open = opener
        self._ext_authz = ext_authz
        self._sniff_timeout = sniff_timeout_s
        self._owner = owner or TaskOwner("waypoint-proxy")
        self.forwarder = Forwarder(opener, self.rng, self._owner)
        self.balancer = self.forwarder.balancer
        self.upstreams = self.forwarder.upstreams
        self.active_tunnels = 0

    # -- tunnels ----------------------------------------------------------------------------------------

    async def handle(self, peer: InboundPeer, request: ConnectRequest) -> Decision:
        """HBONE server handler: accept tunnels for bound Services only."""
        auth = request.authority
        svc = self.store.snapshot.find_service(auth.host, auth.port)
        if svc is None:
            log.info(
                "refusing tunnel for a service this waypoint does not serve",
                extra=kv(authority=str(auth), peer=peer.identity.uri, src=peer.address[0]),
            )
            return Reject(503, "no bound service")
        down = Downstream(peer, svc, auth.port, str(auth), source_peer(request.baggage, peer.identity.uri))
        return Accept(lambda stream: self._serve(stream, down))

    async def _serve(self, stream: HboneStream, down: Downstream) -> None:
        self.active_tunnels += 1
        try:
            port = down.service.port(down.port)
            protocol = port.protocol if port else ""
            if protocol == "TCP" or down.service.tcp_route(down.port) is not None:
                await self._serve_tcp(stream, down, b"")
                return
            # a port declared HTTP is only ever HTTP: no sniffing timeout, no TCP fallback (a client staying
            # quiet, or sending junk, must not reach the app past L7 routing and authorization)
            declared_http = protocol in {"HTTP", "HTTP2", "GRPC"}
            first = await self._first_bytes(stream, sniff=not declared_http)
            if first is None:
                stream.write_eof()
                return
            if len(first) >= 3 and first.startswith(H2_PREFACE[: len(first)]):
                await serve_h2c(self, stream, down, first)
            elif declared_http or _looks_like_http1(first):
                await self._serve_http1(stream, down, first)
            else:
                await self._serve_tcp(stream, down, first)
        except HboneError as exc:  # the client (or its connection) went away
            log.debug("tunnel ended", extra=kv(authority=down.authority, error=str(exc)))
            stream.abort()
        except Exception:
            log.exception("tunnel failed", extra=kv(authority=down.authority, src=down.peer.address[0]))
            stream.abort()
        finally:
            self.active_tunnels -= 1

    async def _first_bytes(self, stream: HboneStream, *, sniff: bool = True) -> bytes | None:
        try:
            async with asyncio.timeout(self._sniff_timeout if sniff else None):
                data = await stream.read()
        except TimeoutError:
            return b""  # server-first protocol: nothing to sniff, pass through
        return data or None

    async def _serve_http1(self, stream: HboneStream, down: Downstream, first: bytes) -> None:
        parser = RequestParser()
        data: bytes | None = first
        while data:
            try:
                requests = parser.feed(data)
                if parser.take_continue() and not requests:
                    stream.write(CONTINUE)
            except BadMessage as exc:
                resp = simple_response(exc.status, str(exc))
                stream.write(serialize_response(resp, keep_alive=False))
                stream.write_eof()
                return
            for req in requests:
                resp = await self.process(req, down)
                if resp.upgraded is not None:  # 101: from now on raw bytes both ways
                    upstream, early = resp.upgraded
                    stream.write(serialize_response(resp) + early)
                    await relay_streams(stream, upstream, parser.leftover)
                    return
                # an Upgrade request that was not upgraded (denied, failed): llhttp stops after its head, so
                # the connection cannot carry another request; close it rather than wait on it forever
                keep = req.keep_alive and resp.keep_alive and not req.upgrade
                stream.write(serialize_response(resp, keep_alive=keep, head=req.method == "HEAD"))
                if not keep:
                    stream.write_eof()
                    return
            await stream.drain()
            data = await stream.read()
        stream.write_eof()

    async def _serve_tcp(self, stream: HboneStream, down: Downstream, first: bytes) -> None:
        snap, host = self.store.snapshot, down.service.hostname
        policies = snap.policies + down.service.policies
        if policies:  # L4 authorization (the TCP filter chain's RBAC): no HTTP attributes to look at
            ctx = AuthzContext(
                down.principal, down.peer.address[0], down.peer.local_address[0], down.port, "", "", "", {}
            )
            decision = evaluate(policies, ctx, tcp=True)
            if not decision.allowed:
                stream.abort()
                log_access(
                    {
                        "src.addr": down.peer.address[0],
                        "src.identity": down.peer.identity.uri,
                        "dst.service": host,
                        "protocol": "tcp",
                        "response_flags": "RBAC",
                        "response_code_details": "rbac_access_denied_matched_policy["
                        + (decision.policy or "none")
                        + "]",
                    },
                    error=False,
                )
                return
        tcp = down.service.tcp_route(down.port)
        backend = pick_backend(tcp, self.rng) if tcp is not None else None
        if backend is not None:
            cluster = snap.clusters.get(backend.cluster)
        else:
            cluster = snap.clusters.get(f"inbound-vip|{down.port}|tcp|{host}") or snap.cluster_for(
                f"inbound-vip|{down.port}|http|{host}", down.service, down.port
            )
        ep = self.balancer.pick(cluster, None, down.peer.address[0]) if cluster else None
        labels = request_labels(down, cluster, ep, "tcp", "", "-" if ep else "UH")
        if ep is None:
            stream.abort()
            log_access(
                {
                    "src.addr": f"{down.peer.address[0]}",
                    "dst.service": down.service.hostname,
                    "protocol": "tcp",
                    "response_flags": "UH",
                },
                error=True,
            )
            return
        start = time.monotonic()
        try:
            upstream = await self._open(ep.address, ep.port)
        except Exception as exc:
            stream.abort()
            log_access(
                {
                    "src.addr": down.peer.address[0],
                    "dst.service": down.service.hostname,
                    "upstream_host": f"{ep.address}:{ep.port}",
                    "protocol": "tcp",
                    "response_flags": "UF",
                    "error": str(exc),
                },
                error=True,
            )
            return
        sent, received = await relay_streams(stream, upstream, first)
        self.metrics.record_tcp(tcp_labels(labels), sent, received)
        log_access(
            {
                "src.addr": down.peer.address[0],
                "src.identity": down.peer.identity.uri,
                "dst.service": down.service.hostname,
                "upstream_host": f"{ep.address}:{ep.port}",
                "protocol": "tcp",
                "bytes_sent": received,
                "bytes_recv": sent,
                "duration": f"{(time.monotonic() - start) * 1000:.0f}ms",
            },
            error=False,
        )

    # -- requests ---------------------------------------------------------------------------------------

    async def process(self, req: Request, down: Downstream) -> Response:
        """Run one request through the L7 pipeline; always returns a response (never raises)."""
        start = time.monotonic()
        out = Outcome()
        req.path = normalize_path(req.path)  # before authz and routing see it (Envoy's normalize_path)
        request_id = req.header("x-request-id")
        if request_id is None:
            request_id = str(uuid.uuid4())
            req.headers.append(("x-request-id", request_id))
        span = self.tracing.start(
            req.header("traceparent"),
            f"{down.service.hostname}:{down.port}/*",
            {"http.request.method": req.method, "url.path": req.path},
        )
        _replace(req, "traceparent", span.traceparent)
        req_bytes = len(req.body)
        try:
            resp = await self._pipeline(req, down, out)
        except Exception as exc:  # a bug must cost one request, not the tunnel
            log.exception("request failed", extra=kv(path=req.path))
            out.flags, out.details, out.error = "-", "internal_error", repr(exc)
            resp = simple_response(500, "internal error")
        self._finish(req, resp, down, out, span, start, req_bytes, request_id)
        return resp

    async def _pipeline(self, req: Request, down: Downstream, out: Outcome) -> Response:
        snap = self.store.snapshot
        svc = down.service
        if req.upgrade and (req.header("upgrade") or "").strip().lower() != "websocket":
            # Istio enables only the websocket upgrade; relaying e.g. an h2c upgrade raw would let the
            # client speak HTTP/2 straight to the app, past authorization (Envoy: 403 upgrade_failed)
            out.details = "upgrade_failed"
            return simple_response(403, "")
        if req.header("x-forwarded-client-cert") is not None:
            # Envoy sanitizes XFCC before any filter: a client must not hand the app (or a policy on
            # headers) an identity of its choosing; it is set below only when the Gateway asks for it
            req.set_headers([(k, v) for k, v in req.headers if k != "x-forwarded-client-cert"])
        denied = await self._authorize(snap, req, down, out)
        if denied is not None:
            return denied
        if svc.routes:
            route = select_route(svc.routes, req, down.port, down.peer.identity.namespace)
        else:
            route = default_route(svc, down.port)
        if route is None:
            out.flags, out.details = "NR", "route_not_found"
            return simple_response(404, "")
        out.route = route.name
        local = await self._local_reply(route, req, out)
        if local is not None:
            return local
        if route.rewrite is not None:
            rewrite_request(route, route.rewrite, req)
        if route.request_headers:
            req.set_headers(route.request_headers.apply(req.headers))
        if snap.xfcc_client_identity:  # the Gateway asked to pass the client identity to the app
            req.set_header("x-forwarded-client-cert", f"By={self.identity};URI={down.peer.identity.uri}")
        backend = pick_backend(route, self.rng)
        cluster = snap.cluster_for(backend.cluster, svc, down.port) if backend else None
        if backend is None or cluster is None or cluster.name.startswith("invalid-backend|"):
            # istiod points unresolvable backendRefs at "invalid-backend|..." (Gateway API: answer 500)
            out.flags, out.details = "NC", "invalid_backend" if backend else "no_backend"
            return simple_response(500 if backend else 503, "invalid backend")
        if backend.request_headers:
            req.set_headers(backend.request_headers.apply(req.headers))
        out.cluster = cluster
        for mirror, percent in route.mirrors:
            self.forwarder.mirror(snap, mirror, percent, req, down.peer.address[0])
        port = svc.port(down.port)
        if req.http2 and port is not None and port.protocol == "HTTP":
            req.http2 = False  # an HTTP (1.1) port: Istio speaks HTTP/1.1 upstream whatever the client used
        if req.upgrade:
            resp = await self.forwarder.upgrade(cluster, req, down.peer.address[0], out)
        else:
            resp = await self.forwarder.forward(route, cluster, req, down.peer.address[0], out)
        if backend.response_headers:
            resp.headers = backend.response_headers.apply(resp.headers)
        if route.response_headers:
            resp.headers = route.response_headers.apply(resp.headers)
        return resp

    async def _authorize(
        self, snap: rec.Snapshot, req: Request, down: Downstream, out: Outcome
    ) -> Response | None:
        jwt_rules = JwtRules(snap.jwt.providers + down.service.jwt.providers)
        principal: str | None = None
        claims: Mapping[str, Any] = {}
        if jwt_rules:
            spoofable = {p.output_payload_to_header.lower() for p in jwt_rules.providers} - {""}
            if spoofable and any(k in spoofable for k, _ in req.headers):
                # only a verified token may fill the payload header: drop what the client sent in it
                req.set_headers([(k, v) for k, v in req.headers if k not in spoofable])
            try:
                result = jwt_rules.authenticate(req.header_map(), req.query)
            except JwtFailure as exc:
                out.flags, out.details = "-", "jwt_authn_access_denied"
                return simple_response(401, str(exc))
            principal, claims = result.principal, result.claims
            provider = result.provider
            if provider is not None and provider.output_payload_to_header:
                payload = base64.urlsafe_b64encode(json.dumps(dict(claims)).encode()).rstrip(b"=").decode()
                req.set_header(provider.output_payload_to_header.lower(), payload)
            if provider is not None and not provider.forward_original_token:
                _strip_token(req, result.location)
        policies = snap.policies + down.service.policies
        if not policies:
            return None
        ctx = AuthzContext(
            down.principal,
            down.peer.address[0],
            down.peer.local_address[0],
            down.port,
            req.authority,
            req.method,
            req.path,
            req.header_map(),
            principal,
            claims,
        )
        decision = evaluate(policies, ctx)
        if decision.audited:  # AUDIT policies only mark the request in the access log
            out.extra["audit_policies"] = ",".join(decision.audited)
        if decision.custom:
            denied = await self._custom(decision, req, down, out)
            if denied is not None:
                return denied
        if not decision.allowed:
            out.flags, out.details = (
                "RBAC",
                "rbac_access_denied_matched_policy[" + (decision.policy or "none") + "]",
            )
            return simple_response(403, "RBAC: access denied")
        return None

    async def _custom(
        self, decision: AuthzDecision, req: Request, down: Downstream, out: Outcome
    ) -> Response | None:
        check = self._ext_authz or self._ext_authz_http
        for policy in decision.custom:
            if policy.provider is None:
                out.flags, out.details = "UAEX", "ext_authz_error"
                return simple_response(403, "RBAC: access denied")
            denied = await check(policy, req, down)
            if denied is not None:
                out.flags, out.details = "UAEX", "ext_authz_denied"
                return denied
        return None

    async def _ext_authz_http(self, policy: Policy, req: Request, down: Downstream) -> Response | None:
        """envoyExtAuthzHttp-style check over HBONE to the provider's Service: 200 allows, else its answer."""
        p = policy.provider
        assert p is not None
        denied = None if p.fail_open else simple_response(403, "RBAC: access denied")
        cluster = self.store.snapshot.clusters.get(f"inbound-vip|{p.port}|http|{p.service}")
        ep = self.balancer.pick(cluster, req, down.peer.address[0]) if cluster else None
        if ep is None:
            log.warning("ext_authz provider has no endpoint", extra=kv(provider=p.name, service=p.service))
            return denied
        wanted = {"authorization", *p.include_request_headers}
        headers = [("host", req.authority), *((k, v) for k, v in req.headers if k in wanted)]
        check = Request(req.method, p.path_prefix + req.path, req.query, headers)
        try:
            async with asyncio.timeout(p.timeout_s):
                resp = await self.upstreams.exchange(ep.address, ep.port, serialize_request(check))
        except (UpstreamError, TimeoutError) as exc:
            log.warning("ext_authz check failed", extra=kv(provider=p.name, error=str(exc)))
            return denied
        if resp.status == 200:
            return None
        return Response(
            resp.status, [(k, v) for k, v in resp.headers if k not in {"content-length"}], resp.body
        )

    async def _local_reply(self, route: rec.Route, req: Request, out: Outcome) -> Response | None:
        if route.direct_response is not None:
            out.details = "direct_response"
            status, body = route.direct_response
            return simple_response(status, body)
        if route.redirect is not None:
            out.details = "redirect"
            location = redirect_location(route, route.redirect, req)
            return Response(route.redirect.status_code, [("location", location)], b"")
        fault = route.fault
        if fault is None:
            return None
        if fault.delay_s and self.rng.random() * 100 < fault.delay_percent:
            out.flags = "DI"
            await asyncio.sleep(fault.delay_s)
        if (fault.abort_status or fault.abort_grpc_status) and self.rng.random() * 100 < fault.abort_percent:
            out.flags, out.details = "FI", "fault_filter_abort"
            extra = [("grpc-status", str(fault.abort_grpc_status))] if fault.abort_grpc_status else []
            return simple_response(fault.abort_status or 503, "fault filter abort", extra)
        return None

    # -- telemetry --------------------------------------------------------------------------------------

    def _finish(  # noqa: PLR0917
        self,
        req: Request,
        resp: Response,
        down: Downstream,
        out: Outcome,
        span: RequestSpan,
        start: float,
        req_bytes: int,
        request_id: str,
    ) -> None:
        duration_ms = (time.monotonic() - start) * 1000.0
        grpc = (req.header("content-type") or "").startswith("application/grpc")
        grpc_status = ""
        if grpc:
            found = next((v for k, v in [*resp.headers, *resp.trailers] if k == "grpc-status"), None)
            local = str(grpc_status_for(resp.status)) if resp.local and resp.status != 200 else ""
            grpc_status = found or local
        labels = request_labels(
            down,
            out.cluster,
            out.endpoint,
            "grpc" if grpc else "http",
            str(resp.status),
            out.flags,
            grpc_status,
        )
        self.metrics.record(labels, duration_ms, req_bytes, len(resp.body))
        if grpc:
            self.metrics.record_grpc(labels, grpc_messages(req.body), grpc_messages(resp.body))
        ep = out.endpoint
        fields: dict[str, object] = {
            "src.addr": f"{down.peer.address[0]}:{down.peer.address[1]}",
            "src.identity": down.peer.identity.uri,
            "src.workload": down.source.workload or UNKNOWN,
            "dst.service": down.service.hostname,
            "method": req.method,
            "path": req.target,
            "authority": req.authority,
            "protocol": "HTTP/2" if req.http2 else "HTTP/1.1",
            "response_code": resp.status,
            "response_flags": out.flags,
            "response_code_details": out.details,
            "route_name": out.route or "-",
            "upstream_cluster": out.cluster.name if out.cluster else "-",
            "upstream_host": f"{ep.address}:{ep.port}" if ep else "-",
            "attempts": out.attempts,
            "bytes_received": req_bytes,
            "bytes_sent": len(resp.body),
            "duration": f"{duration_ms:.1f}ms",
            "x_request_id": request_id,
            "trace_id": span.trace_id,
        }
        fields.update(out.extra)
        if out.error:
            fields["error"] = out.error
        log_access(fields, error=bool(out.error) and resp.status >= 500)
        span.end(resp.status, {"upstream_cluster": fields["upstream_cluster"], "response_flags": out.flags})  # type: ignore[dict-item]

    def config_changed(self, snap: rec.Snapshot) -> None:
        self.forwarder.config_changed(snap)

    async def close(self) -> None:
        self.forwarder.close()
        await self._owner.close()


def _looks_like_http1(first: bytes) -> bool:
    head = first[:16]
    space = head.find(b" ")
    return space > 2 and all(c in _METHOD_CHARS for c in head[:space])


def _replace(req: Request, name: str, value: str) -> None:
    for i, (k, _) in enumerate(req.headers):
        if k == name:
            req.headers[i] = (name, value)
            req._map = None
            return
    req.headers.append((name, value))
    req._map = None


def _strip_token(req: Request, location: str) -> None:
    if location and not location.startswith("?"):
        req.set_headers([(k, v) for k, v in req.headers if k != location])
