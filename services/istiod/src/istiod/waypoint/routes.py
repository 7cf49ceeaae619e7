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

__all__ = ["ClusterFor", "Converted", "convert_httproute", "convert_tcproute", "parse_duration_ms"]

INVALID = "invalid-backend"


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


def regex(value: str) -> str:
    """``value`` if it compiles as a regex, else :class:`Unsupported`."""
    try:
        re.compile(value)
    except re.error as exc:
        raise Unsupported(f"bad regex {value!r}: {exc}") from None
    return value


def _gw_string(kind: str, value: str) -> pb.StringMatch:
    if kind in {"", "Exact"}:
        return pb.StringMatch(exact=value)
    if kind == "RegularExpression":
        return pb.StringMatch(regex=regex(value))
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
        out.path.CopyFrom(pb.StringMatch(regex=regex(f"/{svc or '[^/]+'}/{name or '[^/]+'}")))
    elif svc and name:
        out.path.CopyFrom(pb.StringMatch(exact=f"/{svc}/{name}"))
    elif svc:
        out.path.CopyFrom(pb.StringMatch(prefix=f"/{svc}/"))
    elif name:
        out.path.CopyFrom(pb.StringMatch(regex=regex(f"/[^/]+/{re.escape(name)}")))
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
