"""VirtualService ``http`` routes → ``ambient.waypoint.v1.Route`` lists (pure), for the waypoint (Alpha).

Routes keep their order (first match wins). Supported: matches (uri, method, authority, headers,
withoutHeaders, queryParams, port, ignoreUriCase), weighted destinations with subsets and header operations,
route headers, timeout, retries (attempts, perTryTimeout, retryOn with status codes), fault delay/abort
(HTTP or gRPC status), redirect, rewrite (uri, authority), mirror/mirrorPercentage and mirrors[],
directResponse. A ``http`` entry that cannot be converted is dropped and reported; ``tcp``/``tls`` routes
are reported as unsupported.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from meshproto.ambient.waypoint.v1 import waypoint_pb2 as pb

from istiod.waypoint.routes import INVALID, ClusterFor, Converted, Unsupported, parse_duration_ms, regex

Obj = dict[str, Any]

__all__ = ["convert_virtualservice", "vs_hosts"]

GRPC_CODES = {
    name: code
    for code, name in enumerate(
        [
            "OK",
            "CANCELLED",
            "UNKNOWN",
            "INVALID_ARGUMENT",
            "DEADLINE_EXCEEDED",
            "NOT_FOUND",
            "ALREADY_EXISTS",
            "PERMISSION_DENIED",
            "RESOURCE_EXHAUSTED",
            "FAILED_PRECONDITION",
            "ABORTED",
            "OUT_OF_RANGE",
            "UNIMPLEMENTED",
            "INTERNAL",
            "UNAVAILABLE",
            "DATA_LOSS",
            "UNAUTHENTICATED",
        ]
    )
}


def _vs_string(m: Obj, ignore_case: bool = False) -> pb.StringMatch:
    if "exact" in m:
        return pb.StringMatch(exact=str(m["exact"]), ignore_case=ignore_case)
    if "prefix" in m:
        return pb.StringMatch(prefix=str(m["prefix"]), ignore_case=ignore_case)
    if "regex" in m:
        return pb.StringMatch(regex=regex(str(m["regex"])))
    raise Unsupported(f"string match {m!r}")


def _vs_match(m: Obj) -> pb.RouteMatch:
    out = pb.RouteMatch(port=int(m.get("port") or 0))
    ignore = bool(m.get("ignoreUriCase"))
    if m.get("uri"):
        out.path.CopyFrom(_vs_string(m["uri"], ignore))
    if m.get("method"):
        method = m["method"]
        if "exact" not in method:
            raise Unsupported("only exact method matches")
        out.method = str(method["exact"]).upper()
    if m.get("authority"):
        out.authority.CopyFrom(_vs_string(m["authority"], True))
    for name, value in (m.get("headers") or {}).items():
        hm = pb.HeaderMatch(name=str(name).lower())
        if value:
            hm.value.CopyFrom(_vs_string(value))
        out.headers.append(hm)
    for name in m.get("withoutHeaders") or {}:
        out.headers.append(pb.HeaderMatch(name=str(name).lower(), invert=True))
    for name, value in (m.get("queryParams") or {}).items():
        hm = pb.HeaderMatch(name=str(name))
        if value:
            hm.value.CopyFrom(_vs_string(value))
        out.query_params.append(hm)
    unsupported = set(m) - {
        "uri",
        "method",
        "authority",
        "headers",
        "withoutHeaders",
        "queryParams",
        "port",
        "ignoreUriCase",
        "name",
    }
    if unsupported:
        raise Unsupported(f"match fields {sorted(unsupported)}")
    return out


def _vs_headers(h: Obj) -> pb.HeaderMutation:
    out = pb.HeaderMutation()
    for k, v in (h.get("set") or {}).items():
        out.set[str(k).lower()] = str(v)
    for k, v in (h.get("add") or {}).items():
        out.add[str(k).lower()] = str(v)
    out.remove.extend(str(k).lower() for k in h.get("remove") or [])
    return out


def _pct(obj: Obj | None, default: float = 100.0) -> float:
    if not obj or "percentage" not in obj:
        return default
    return float((obj.get("percentage") or {}).get("value", default))


def _vs_destination(dest: Obj, host_of: Callable[[str], str], cluster_for: ClusterFor) -> str | None:
    host = host_of(str(dest.get("host", "")))
    port = int((dest.get("port") or {}).get("number") or 0)
    return cluster_for(host, port, str(dest.get("subset") or ""))


def _vs_route(
    http: Obj, name: str, host_of: Callable[[str], str], cluster_for: ClusterFor, out: Converted
) -> pb.Route:
    route = pb.Route(name=name)
    for m in http.get("match") or []:
        route.matches.append(_vs_match(m))
    for dest in http.get("route") or []:
        cluster = _vs_destination(dest.get("destination") or {}, host_of, cluster_for)
        if cluster is None:
            out.unresolved.append(f"destination {(dest.get('destination') or {}).get('host')} not found")
            cluster = f"{INVALID}|{(dest.get('destination') or {}).get('host')}"
            cluster_for(cluster, 0, "")
        wc = pb.WeightedCluster(
            cluster=cluster, weight=int(dest.get("weight", 100 if len(http["route"]) == 1 else 0))
        )
        headers = dest.get("headers") or {}
        wc.request_headers.CopyFrom(_vs_headers(headers.get("request") or {}))
        wc.response_headers.CopyFrom(_vs_headers(headers.get("response") or {}))
        if wc.weight > 0:
            route.backends.append(wc)
    headers = http.get("headers") or {}
    route.request_headers.CopyFrom(_vs_headers(headers.get("request") or {}))
    route.response_headers.CopyFrom(_vs_headers(headers.get("response") or {}))
    route.timeout_ms = parse_duration_ms(http.get("timeout"))
    if "retries" in http:
        r = http.get("retries") or {}
        route.retries.CopyFrom(
            pb.RetryPolicy(
                attempts=int(r.get("attempts") or 0),
                per_try_timeout_ms=parse_duration_ms(r.get("perTryTimeout")),
                retry_on=[
                    t.strip()
                    for t in str(
                        r.get("retryOn") or "connect-failure,refused-stream,unavailable,cancelled,503"
                    ).split(",")
                    if t.strip() and not t.strip().isdigit()
                ]
                + (
                    ["retriable-status-codes"]
                    if any(t.strip().isdigit() for t in str(r.get("retryOn") or "503").split(","))
                    else []
                ),
                retriable_status_codes=[
                    int(t) for t in str(r.get("retryOn") or "503").split(",") if t.strip().isdigit()
                ],
            )
        )
    fault = http.get("fault") or {}
    if fault:
        f = pb.Fault()
        if fault.get("delay"):
            f.delay_percent = _pct(fault["delay"])
            f.delay_ms = parse_duration_ms(fault["delay"].get("fixedDelay"))
        if fault.get("abort"):
            abort = fault["abort"]
            f.abort_percent = _pct(abort)
            if abort.get("grpcStatus"):
                f.abort_grpc_status = GRPC_CODES.get(str(abort["grpcStatus"]).upper(), 2)
                f.abort_status = 200  # trailers-only gRPC answer
            else:
                f.abort_status = int(abort.get("httpStatus") or 503)
        route.fault.CopyFrom(f)
    if http.get("redirect"):
        rd = http["redirect"]
        route.redirect.CopyFrom(
            pb.Redirect(
                path=str(rd.get("uri") or ""),
                hostname=str(rd.get("authority") or ""),
                scheme=str(rd.get("scheme") or ""),
                port=int(rd.get("port") or 0),
                status_code=int(rd.get("redirectCode") or 301),
            )
        )
    if http.get("rewrite"):
        rw = http["rewrite"]
        if rw.get("uriRegexRewrite"):
            raise Unsupported("rewrite.uriRegexRewrite")
        route.rewrite.authority = str(rw.get("authority") or "")
        if (
            rw.get("uri") is not None
            and route.matches
            and route.matches[0].path.WhichOneof("kind") == "prefix"
        ):
            route.rewrite.replace_prefix = True
            route.rewrite.prefix_replace = str(rw["uri"])
        elif rw.get("uri"):
            route.rewrite.path = str(rw["uri"])
    if http.get("mirror"):
        cluster = _vs_destination(http["mirror"], host_of, cluster_for)
        if cluster:
            pct = float((http.get("mirrorPercentage") or {}).get("value", 100.0))
            route.mirrors.append(pb.Mirror(cluster=cluster, percent=pct))
    for mirror in http.get("mirrors") or []:  # the newer plural form
        cluster = _vs_destination(mirror.get("destination") or {}, host_of, cluster_for)
        if cluster:
            pct = float((mirror.get("percentage") or {}).get("value", 100.0))
            route.mirrors.append(pb.Mirror(cluster=cluster, percent=pct))
    if http.get("directResponse"):
        dr = http["directResponse"]
        route.direct_response.CopyFrom(
            pb.DirectResponse(
                status=int(dr.get("status", 200)), body=str((dr.get("body") or {}).get("string", ""))
            )
        )
    return route


def convert_virtualservice(obj: Obj, cluster_for: ClusterFor, domain: str) -> Converted:
    meta = obj.get("metadata") or {}
    ns = str(meta.get("namespace", ""))

    def host_of(host: str) -> str:
        if "." not in host:
            return f"{host}.{ns}.svc.{domain}"
        if host.endswith(".svc"):
            return f"{host}.{domain}"
        parts = host.split(".")
        return f"{host}.svc.{domain}" if len(parts) == 2 else host

    out = Converted()
    for i, http in enumerate((obj.get("spec") or {}).get("http") or []):
        try:
            route = _vs_route(
                http,
                f"VirtualService/{ns}/{meta.get('name')}#{http.get('name') or i}",
                host_of,
                cluster_for,
                out,
            )
            out.routes.append(((i,), route))
        except (Unsupported, KeyError, ValueError, TypeError) as exc:
            out.problems.append(f"http[{i}]: {exc}")
    if (obj.get("spec") or {}).get("tcp") or (obj.get("spec") or {}).get("tls"):
        out.problems.append("tcp/tls routes are not supported at the waypoint (ignored)")
    return out


def vs_hosts(obj: Obj, domain: str) -> set[str]:
    ns = (obj.get("metadata") or {}).get("namespace", "")
    out = set()
    for entry in (obj.get("spec") or {}).get("hosts") or []:
        host = str(entry)
        out.add(f"{host}.{ns}.svc.{domain}" if "." not in host else host)
    return out
