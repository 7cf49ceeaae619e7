"""Request telemetry: Istio's standard metrics, one access-log record per request, OpenTelemetry spans.

Metrics (behaviour.md §6.3, ``reporter="waypoint"``): ``istio_requests_total``,
``istio_request_duration_milliseconds``, ``istio_request_bytes``, ``istio_response_bytes`` and, for TCP
passthrough, ``istio_tcp_connections_{opened,closed}_total`` / ``istio_tcp_{sent,received}_bytes_total``.
Label names and the peer → labels mapping are Istio's standard ones, shared with ztunnel
(:mod:`meshkit.istio_labels`). Source labels come from the CONNECT ``baggage`` (what the source ztunnel
knows) and the TLS peer identity; destination labels from the chosen endpoint and the intended Service.
prometheus-client's ``labels()`` costs tens of µs with 25 labels, so children are cached per label tuple.

Tracing: the W3C ``traceparent`` of the request is continued (same trace id, new span id) and forwarded
upstream. Spans go through an OpenTelemetry ``TracerProvider`` when an exporter is configured
(``OTEL_EXPORTER_OTLP_ENDPOINT`` → :class:`waypoint.otlp.OtlpJsonExporter`, or any ``SpanExporter`` passed
in, e.g. the SDK's in-memory one in tests); without one, only the header is rewritten (cheap).
"""

from __future__ import annotations

import logging
import operator
import secrets
from collections.abc import Mapping

from meshkit.hbone.request import SourceMetadata, parse_baggage
from meshkit.istio_labels import REQUEST_LABELS, REQUEST_TCP_LABELS, Peer
from meshkit.logs import kv
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["RequestMetrics", "Tracing", "parse_traceparent", "source_peer", "tcp_labels"]

access_log = logging.getLogger("access")

DURATION_BUCKETS = (
    0.5,
    1,
    5,
    10,
    25,
    50,
    100,
    250,
    500,
    1000,
    2500,
    5000,
    10000,
    30000,
    60000,
    300000,
    600000,
    1800000,
    3600000,
)
BYTES_BUCKETS = (1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000)
_TCP_VALUES = operator.itemgetter(*(REQUEST_LABELS.index(name) for name in REQUEST_TCP_LABELS))


def tcp_labels(labels: tuple[str, ...]) -> tuple[str, ...]:
    """The TCP metrics' share of request label values (those of ``REQUEST_TCP_LABELS``)."""
    values: tuple[str, ...] = _TCP_VALUES(labels)
    return values


def source_peer(baggage: str | None, principal: str | None) -> Peer:
    """The source peer of a tunnel: workload metadata from the CONNECT ``baggage`` (behaviour.md §2.6), the
    principal from the TLS peer identity. Without ``service.name`` the canonical service is the workload."""
    meta = parse_baggage(baggage) or SourceMetadata()
    return Peer(
        workload=meta.workload_name,
        namespace=meta.namespace,
        principal=principal or "",
        canonical_service=meta.canonical_name or meta.workload_name,
        canonical_revision=meta.canonical_revision,
        cluster=meta.cluster_id,
    )


class RequestMetrics:
    """The waypoint's Istio request and TCP metrics on one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "istio_requests_total", "Requests handled by the waypoint.", REQUEST_LABELS, registry=registry
        )
        self.duration = Histogram(
            "istio_request_duration_milliseconds",
            "Request duration, ms.",
            REQUEST_LABELS,
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.request_bytes = Histogram(
            "istio_request_bytes",
            "Request sizes, bytes.",
            REQUEST_LABELS,
            buckets=BYTES_BUCKETS,
            registry=registry,
        )
        self.response_bytes = Histogram(
            "istio_response_bytes",
            "Response sizes, bytes.",
            REQUEST_LABELS,
            buckets=BYTES_BUCKETS,
            registry=registry,
        )
        self.request_messages = Counter(
            "istio_request_messages",
            "gRPC messages received from the client.",
            REQUEST_LABELS,
            registry=registry,
        )
        self.response_messages = Counter(
            "istio_response_messages", "gRPC messages sent to the client.", REQUEST_LABELS, registry=registry
        )
        self.tcp_opened = Counter(
            "istio_tcp_connections_opened", "TCP connections opened.", REQUEST_TCP_LABELS, registry=registry
        )
        self.tcp_closed = Counter(
            "istio_tcp_connections_closed", "TCP connections closed.", REQUEST_TCP_LABELS, registry=registry
        )
        self.tcp_sent = Counter(
            "istio_tcp_sent_bytes", "Bytes sent to the downstream.", REQUEST_TCP_LABELS, registry=registry
        )
        self.tcp_received = Counter(
            "istio_tcp_received_bytes",
            "Bytes received from the downstream.",
            REQUEST_TCP_LABELS,
            registry=registry,
        )
        self._children: dict[tuple[str, ...], tuple[Counter, Histogram, Histogram, Histogram]] = {}

    def record(self, labels: tuple[str, ...], duration_ms: float, req_bytes: int, resp_bytes: int) -> None:
        children = self._children.get(labels)
        if children is None:
            if len(self._children) > 10_000:  # bound the cache, not the series (Prometheus keeps those)
                self._children.clear()
            children = (
                self.requests.labels(*labels),
                self.duration.labels(*labels),
                self.request_bytes.labels(*labels),
                self.response_bytes.labels(*labels),
            )
            self._children[labels] = children
        req, dur, rq, rs = children
        req.inc()
        dur.observe(duration_ms)
        rq.observe(req_bytes)
        rs.observe(resp_bytes)

    def record_grpc(self, labels: tuple[str, ...], request_messages: int, response_messages: int) -> None:
        self.request_messages.labels(*labels).inc(request_messages)
        self.response_messages.labels(*labels).inc(response_messages)

    def record_tcp(self, labels: tuple[str, ...], sent: int, received: int) -> None:
        self.tcp_opened.labels(*labels).inc()
        self.tcp_closed.labels(*labels).inc()
        self.tcp_sent.labels(*labels).inc(sent)
        self.tcp_received.labels(*labels).inc(received)


def grpc_messages(body: bytes) -> int:
    """Length-prefixed gRPC messages in a body (1 byte flags + 4 bytes big-endian length each)."""
    count, offset = 0, 0
    while offset + 5 <= len(body):
        offset += 5 + int.from_bytes(body[offset + 1 : offset + 5], "big")
        count += 1
    return count


def log_access(fields: Mapping[str, object], error: bool) -> None:
    """One record per request (logger ``access``): INFO on success, ERROR with ``error=`` on failure."""
    if error:
        access_log.error("request complete", extra=kv(**fields))
    elif access_log.isEnabledFor(logging.INFO):
        access_log.info("request complete", extra=kv(**fields))


def parse_traceparent(value: str | None) -> tuple[str, str, int] | None:
    """``(trace_id, parent_span_id, flags)`` of a valid W3C traceparent, else None."""
    if not value:
        return None
    parts = value.strip().split("-")
    if len(parts) < 4 or len(parts[0]) != 2 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        int(parts[1], 16)
        int(parts[2], 16)
        flags = int(parts[3][:2], 16)
    except ValueError:
        return None
    if parts[1] == "0" * 32 or parts[2] == "0" * 16 or parts[0] == "ff":
        return None
    return parts[1], parts[2], flags


class Tracing:
    """Continue or start a trace per request; optionally record spans with the OpenTelemetry SDK."""

    def __init__(
        self, exporter: SpanExporter | None = None, *, service_name: str = "waypoint", batch: bool = True
    ) -> None:
        self.provider: TracerProvider | None = None
        self._tracer: trace.Tracer | None = None
        if exporter is not None:
            self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
            processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
            self.provider.add_span_processor(processor)
            self._tracer = self.provider.get_tracer("waypoint")

    def start(self, traceparent: str | None, name: str, attributes: Mapping[str, str]) -> RequestSpan:
        parsed = parse_traceparent(traceparent)
        trace_id, parent_id, flags = parsed if parsed else (secrets.token_hex(16), "", 1)
        if self._tracer is None:
            return RequestSpan(trace_id, secrets.token_hex(8), flags, None)
        ctx = None
        if parent_id:
            parent = SpanContext(
                int(trace_id, 16), int(parent_id, 16), is_remote=True, trace_flags=TraceFlags(flags)
            )
            ctx = trace.set_span_in_context(NonRecordingSpan(parent))
        elif parsed is None:
            ctx = None
        span = self._tracer.start_span(name, context=ctx, kind=SpanKind.CLIENT, attributes=dict(attributes))
        sc = span.get_span_context()
        return RequestSpan(f"{sc.trace_id:032x}", f"{sc.span_id:016x}", int(sc.trace_flags), span)

    def shutdown(self) -> None:
        if self.provider is not None:
            self.provider.shutdown()


class RequestSpan:
    """The waypoint's span of one request; ``traceparent`` is what goes upstream."""

    __slots__ = ("flags", "span", "span_id", "trace_id")

    def __init__(self, trace_id: str, span_id: str, flags: int, span: trace.Span | None) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.flags = flags
        self.span = span

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags:02x}"

    def end(self, status: int, attributes: Mapping[str, str | int]) -> None:
        if self.span is None:
            return
        self.span.set_attributes(dict(attributes))
        self.span.set_attribute("http.response.status_code", status)
        if status >= 500:
            self.span.set_status(Status(StatusCode.ERROR))
        self.span.end()
