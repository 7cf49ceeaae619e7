"""A small OTLP/HTTP span exporter using the protocol's JSON encoding (``POST <endpoint>/v1/traces``).

Why not ``opentelemetry-exporter-otlp-proto-http``: it pulls in ``googleapis-common-protos``, whose
``google/rpc/status.proto`` collides in the protobuf descriptor pool with ours (proto/README.md). OTLP/HTTP
accepts JSON, which needs nothing beyond the SDK and the standard library. Export runs on the SDK's batch
thread, so a blocking ``urllib`` call is fine there.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

__all__ = ["OtlpJsonExporter", "encode_spans"]

log = logging.getLogger("waypoint.otlp")


def _attrs(attributes: Any) -> list[dict[str, Any]]:
    out = []
    for key, value in (attributes or {}).items():
        if isinstance(value, bool):
            out.append({"key": key, "value": {"boolValue": value}})
        elif isinstance(value, int):
            out.append({"key": key, "value": {"intValue": str(value)}})
        else:
            out.append({"key": key, "value": {"stringValue": str(value)}})
    return out


def encode_spans(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    """The ExportTraceServiceRequest JSON for ``spans`` (one resource, one scope)."""
    encoded = []
    resource = spans[0].resource.attributes if spans else {}
    for span in spans:
        ctx = span.context
        assert ctx is not None
        item: dict[str, Any] = {
            "traceId": f"{ctx.trace_id:032x}",
            "spanId": f"{ctx.span_id:016x}",
            "name": span.name,
            "kind": int(span.kind.value) + 1,  # OTLP's SpanKind is the SDK's + 1 (0 is UNSPECIFIED)
            "startTimeUnixNano": str(span.start_time),
            "endTimeUnixNano": str(span.end_time),
            "attributes": _attrs(span.attributes),
            "status": {"code": int(span.status.status_code.value)},
        }
        if span.parent is not None:
            item["parentSpanId"] = f"{span.parent.span_id:016x}"
        encoded.append(item)
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": _attrs(resource)},
                "scopeSpans": [{"scope": {"name": "waypoint"}, "spans": encoded}],
            }
        ]
    }


class OtlpJsonExporter(SpanExporter):
    def __init__(self, endpoint: str, timeout_s: float = 5.0) -> None:
        self.url = endpoint.rstrip("/") + "/v1/traces"
        self.timeout_s = timeout_s

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        body = json.dumps(encode_spans(spans)).encode()
        req = urllib.request.Request(self.url, body, {"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                resp.read()
        except OSError as exc:
            log.warning("OTLP export failed", extra={"kv": {"url": self.url, "error": str(exc)}})
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None
