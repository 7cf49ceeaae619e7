"""HTTPRoute (GAMMA: Service parentRefs) and VirtualService → ``ambient.waypoint.v1.Route`` lists (pure).

Each converter takes a :data:`ClusterFor` callback that names (and creates) the backend cluster for a
``(hostname, port, subset)``, or returns None when the backend does not exist. A rule that cannot be
converted (bad regex, unsupported match) is dropped and reported; the other rules of the same object and
every other object still apply (STYLE.md practice 7).

HTTPRoute rules are flattened to one Route per match and ordered by Gateway API precedence: Exact path,
then longer PathPrefix, then RegularExpression, then method, then more header matches, then more query
matches, then older route, then name. VirtualService http routes keep their order (first match wins).
Unresolvable backends keep their weight and point at an ``invalid-backend|...`` cluster, which the waypoint
answers with 500 (upstream's behaviour for an invalid backendRef).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from meshproto.ambient.waypoint.v1 import waypoint_pb2 as pb

Obj = dict[str, Any]
ClusterFor = Callable[[str, int, str], "str | None"]

__all__ = ["ClusterFor", "Converted", "convert_httproute", "convert_virtualservice", "parse_duration_ms"]

INVALID = "invalid-backend"
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


class Unsupported(ValueError):
    """A rule uses something we cannot express; the rule is dropped with this reason."""


@dataclass
class Converted:
    routes: list[tuple[tuple[Any, ...], pb.Route]] = field(default_factory=list)  # (precedence key, route)
    problems: list[str] = field(default_factory=list)
    unresolved: list[str] = field(default_factory=list)


def parse_duration_ms(text: str | None) -> int:
    """``"5s"``, ``"100ms"``, ``"1m"``, ``"1.5s"``, Gateway API ``"1h2m3s"``; 0 for unset."""
    if not text:
        return 0
    total = 0.0
    for value, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", str(text)):
        total += float(value) * {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}[unit]
    if total == 0 and str(text).strip() not in {"0", "0s"}:
        raise Unsupported(f"bad duration {text!r}")
    return int(total)


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise Unsupported(f"bad regex {value!r}: {exc}") from None
    return value


def _gw_string(kind: str, value: str) -> pb.StringMatch:
    if kind in {"", "Exact"}:
        return pb.StringMatch(exact=value)
    if kind == "RegularExpression":
        return pb.StringMatch(regex=_regex(value))
    raise Unsupported(f"match type {kind!r}")


def _gw_path(path: Obj) -> pb.StringMatch:
    kind, value = path.get("type", "PathPrefix"), str(path.get("value", "/"))
    if kind == "PathPrefix":
        return pb.StringMatch(path_prefix=value)
    return _gw_string(kind, value)


def _gw_match(m: Obj, port: int) -> tuple[pb.RouteMatch, tuple[Any, ...]]:
    out = pb.RouteMatch(port=port)
    path = m.get("path") or {"type": "PathPrefix", "value": "/"}
    out.path.CopyFrom(_gw_path(path))
    for h in m.get("headers") or []:
        out.headers.append(
            pb.HeaderMatch(
                name=str(h["name"]).lower(), value=_gw_string(h.get("type", "Exact"), str(h["value"]))
            )
        )
    for q in m.get("queryParams") or []:
        out.query_params.append(
            pb.HeaderMatch(name=str(q["name"]), value=_gw_string(q.get("type", "Exact"), str(q["value"])))
        )
    if m.get("method"):
        out.method = str(m["method"]).upper()
    ptype = path.get("type", "PathPrefix")
    rank = {"Exact": 0, "PathPrefix": 1, "RegularExpression": 2}.get(ptype, 3)
    key = (
        rank,
        -len(str(path.get("value", ""))),
        0 if out.method else 1,
        -len(out.headers),
        -len(out.query_params),
    )
    return out, key


def _gw_headers(f: Obj) -> pb.HeaderMutation:
    out = pb.HeaderMutation()
    for h in f.get("set") or []:
        out.set[str(h["name"]).lower()] = str(h["value"])
    for h in f.get("add") or []:
        out.add[str(h["name"]).lower()] = str(h["value"])
    out.remove.extend(str(h).lower() for h in f.get("remove") or [])
    return out


def _gw_path_modifier(mod: Obj, target: pb.Redirect | pb.Rewrite) -> None:
    kind = mod.get("type")
    if kind == "ReplaceFullPath":
        target.path = str(mod.get("replaceFullPath", "/"))
    elif kind == "ReplacePrefixMatch":
        target.replace_prefix = True
        target.prefix_replace = str(mod.get("replacePrefixMatch", "/"))
    else:
        raise Unsupported(f"path modifier {kind!r}")


def _gw_filters(filters: list[Obj], route: pb.Route, ns: str, cluster_for: ClusterFor) -> None:
    for f in filters:
        kind = f.get("type")
        if kind == "RequestHeaderModifier":
            route.request_headers.MergeFrom(_gw_headers(f.get("requestHeaderModifier") or {}))
        elif kind == "ResponseHeaderModifier":
            route.response_headers.MergeFrom(_gw_headers(f.get("responseHeaderModifier") or {}))
        elif kind == "RequestRedirect":
            rd = f.get("requestRedirect") or {}
            route.redirect.CopyFrom(
                pb.Redirect(
                    scheme=str(rd.get("scheme") or ""),
                    hostname=str(rd.get("hostname") or ""),
                    port=int(rd.get("port") or 0),
                    status_code=int(rd.get("statusCode") or 302),
                )
            )
            if rd.get("path"):
                _gw_path_modifier(rd["path"], route.redirect)
        elif kind == "URLRewrite":
            rw = f.get("urlRewrite") or {}
            route.rewrite.authority = str(rw.get("hostname") or "")
            if rw.get("path"):
                _gw_path_modifier(rw["path"], route.rewrite)
        elif kind == "RequestMirror":
            ref = (f.get("requestMirror") or {}).get("backendRef") or {}
            name = _backend_cluster(ref, ns, cluster_for)
            if name and not name.startswith(INVALID):
                mirror = f.get("requestMirror") or {}
                pct = mirror.get("percent")
                fraction = mirror.get("fraction") or {}
                if pct is None and fraction:
                    pct = (
                        100.0
                        * float(fraction.get("numerator", 0))
                        / float(fraction.get("denominator") or 100)
                    )
                route.mirrors.append(pb.Mirror(cluster=name, percent=float(pct if pct is not None else 100)))
        else:
            raise Unsupported(f"filter {kind!r}")


def _backend_cluster(ref: Obj, ns: str, cluster_for: ClusterFor, domain: str = "cluster.local") -> str | None:
    if ref.get("kind", "Service") != "Service" or ref.get("group", "") not in {"", "core"}:
        return None
    host = f"{ref['name']}.{ref.get('namespace') or ns}.svc.{domain}"
    return cluster_for(host, int(ref.get("port") or 0), "")


def _grpc_match(m: Obj, port: int) -> tuple[pb.RouteMatch, tuple[Any, ...]]:
    """GRPCRoute ``method`` (service and/or method, Exact or RegularExpression) → a ``:path`` match."""
    out = pb.RouteMatch(port=port, method="POST")
    method = m.get("method") or {}
    svc, name = str(method.get("service") or ""), str(method.get("method") or "")
    if method.get("type", "Exact") == "RegularExpression":
        out.path.CopyFrom(pb.StringMatch(regex=_regex(f"/{svc or '[^/]+'}/{name or '[^/]+'}")))
    elif svc and name:
        out.path.CopyFrom(pb.StringMatch(exact=f"/{svc}/{name}"))
    elif svc:
        out.path.CopyFrom(pb.StringMatch(prefix=f"/{svc}/"))
    elif name:
        out.path.CopyFrom(pb.StringMatch(regex=_regex(f"/[^/]+/{re.escape(name)}")))
    for h in m.get("headers") or []:
        out.headers.append(
            pb.HeaderMatch(
                name=str(h["name"]).lower(), value=_gw_string(h.get("type", "Exact"), str(h["value"]))
            )
        )
    key = (0 if svc and name else 1, -len(svc) - len(name), -len(out.headers))
    return out, key


def convert_httproute(
    obj: Obj, parent_port: int, cluster_for: ClusterFor, domain: str, kind: str = "HTTPRoute"
) -> Converted:
    """Routes of one HTTPRoute (or GRPCRoute) for one Service parent (``parent_port`` 0: every port)."""
    match_of = _grpc_match if kind == "GRPCRoute" else _gw_match
    meta = obj.get("metadata") or {}
    ns = str(meta.get("namespace", ""))
    created = str(meta.get("creationTimestamp", ""))
    out = Converted()
    for i, rule in enumerate((obj.get("spec") or {}).get("rules") or []):
        try:
            base = pb.Route(name=f"{kind}/{ns}/{meta.get('name')}#{i}")
            _gw_filters(rule.get("filters") or [], base, ns, cluster_for)
            for ref in rule.get("backendRefs") or []:
                wc = pb.WeightedCluster(weight=int(ref.get("weight", 1)))
                name = _backend_cluster(ref, ns, cluster_for, domain)
                if name is None:
                    out.unresolved.append(f"backend {ref.get('kind', 'Service')} {ref.get('name')} not found")
                    name = f"{INVALID}|{ns}/{ref.get('name')}"
                    cluster_for(name, 0, "")
                wc.cluster = name
                for f in ref.get("filters") or []:
                    if f.get("type") == "RequestHeaderModifier":
                        wc.request_headers.MergeFrom(_gw_headers(f.get("requestHeaderModifier") or {}))
                    elif f.get("type") == "ResponseHeaderModifier":
                        wc.response_headers.MergeFrom(_gw_headers(f.get("responseHeaderModifier") or {}))
                if wc.weight > 0:
                    base.backends.append(wc)
            if rule.get("backendRefs") and not base.backends and not base.HasField("redirect"):
                base.direct_response.CopyFrom(pb.DirectResponse(status=500))  # every weight was 0
            timeouts = rule.get("timeouts") or {}
            base.timeout_ms = parse_duration_ms(timeouts.get("request"))
            if timeouts.get("backendRequest"):
                base.retries.CopyFrom(
                    pb.RetryPolicy(
                        attempts=2,
                        per_try_timeout_ms=parse_duration_ms(timeouts["backendRequest"]),
                        retry_on=[
                            "connect-failure",
                            "refused-stream",
                            "unavailable",
                            "cancelled",
                            "retriable-status-codes",
                        ],
                        retriable_status_codes=[503],
                    )
                )
            for m in rule.get("matches") or [{}]:
                match, key = match_of(m, parent_port)
                route = pb.Route()
                route.CopyFrom(base)
                route.matches.append(match)
                out.routes.append(((*key, created, str(meta.get("name", "")), i), route))
        except (Unsupported, KeyError, ValueError, TypeError) as exc:
            out.problems.append(f"rule {i}: {exc}")
    return out


def convert_tcproute(
    obj: Obj, parent_port: int, cluster_for: ClusterFor, domain: str
) -> tuple[list[pb.TcpRoute], Converted]:
    """TCPRoute rules (backendRefs with weights only) for one Service parent."""
    meta = obj.get("metadata") or {}
    ns = str(meta.get("namespace", ""))
    out = Converted()
    routes = []
    for i, rule in enumerate((obj.get("spec") or {}).get("rules") or []):
        route = pb.TcpRoute(name=f"TCPRoute/{ns}/{meta.get('name')}#{i}", port=parent_port)
        for ref in rule.get("backendRefs") or []:
            name = _backend_cluster(ref, ns, cluster_for, domain)
            if name is None:
                out.unresolved.append(f"backend {ref.get('kind', 'Service')} {ref.get('name')} not found")
                continue
            if int(ref.get("weight", 1)) > 0:
                route.backends.append(pb.WeightedCluster(cluster=name, weight=int(ref.get("weight", 1))))
        if route.backends:
            routes.append(route)
        break  # upstream uses the first rule of a TCPRoute
    return routes, out


# -- VirtualService -------------------------------------------------------------------------------------


def _vs_string(m: Obj, ignore_case: bool = False) -> pb.StringMatch:
    if "exact" in m:
        return pb.StringMatch(exact=str(m["exact"]), ignore_case=ignore_case)
    if "prefix" in m:
        return pb.StringMatch(prefix=str(m["prefix"]), ignore_case=ignore_case)
    if "regex" in m:
        return pb.StringMatch(regex=_regex(str(m["regex"])))
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
