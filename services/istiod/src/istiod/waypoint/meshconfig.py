"""MeshConfig ``extensionProviders`` for CUSTOM AuthorizationPolicies, read from ConfigMap ``istio`` (key
``mesh``, YAML) in the root namespace, as upstream istiod reads its mesh config.

Only ``envoyExtAuthzHttp`` providers are understood (the waypoint checks over HTTP); others are ignored with a
log line. ``service`` may be ``<host>`` or ``<namespace>/<host>``; a short name is qualified with the root
namespace.
"""

from __future__ import annotations

import logging
from typing import Any

import yaml
from meshproto.ambient.waypoint.v1 import waypoint_pb2 as pb

from istiod.waypoint.routes import parse_duration_ms

__all__ = ["ext_authz_providers"]

log = logging.getLogger("istiod.waypoint")


def _host(service: str, root_namespace: str, domain: str) -> str:
    _ns, _, host = service.rpartition("/")
    if "." not in host:
        return f"{host}.{_ns or root_namespace}.svc.{domain}"
    return host


def ext_authz_providers(
    configmap: dict[str, Any] | None, root_namespace: str, domain: str
) -> dict[str, pb.ExtAuthz]:
    if not configmap:
        return {}
    try:
        mesh = yaml.safe_load(((configmap.get("data") or {}).get("mesh")) or "") or {}
    except yaml.YAMLError as exc:
        log.warning("cannot parse mesh config", extra={"kv": {"error": str(exc)}})
        return {}
    out: dict[str, pb.ExtAuthz] = {}
    for provider in mesh.get("extensionProviders") or []:
        http = provider.get("envoyExtAuthzHttp")
        name = str(provider.get("name", ""))
        if not http or not name:
            continue
        try:
            out[name] = pb.ExtAuthz(
                name=name,
                service=_host(str(http["service"]), root_namespace, domain),
                port=int(http["port"]),
                path_prefix=str(http.get("pathPrefix") or ""),
                include_request_headers=[
                    str(h).lower() for h in http.get("includeRequestHeadersInCheck") or []
                ],
                timeout_ms=parse_duration_ms(http.get("timeout")) or 600,
                fail_open=bool(http.get("failOpen", False)),
            )
        except (KeyError, ValueError, TypeError) as exc:
            log.warning("bad extension provider", extra={"kv": {"provider": name, "error": str(exc)}})
    return out
