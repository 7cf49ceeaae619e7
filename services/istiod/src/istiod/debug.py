"""istiod's monitoring port (15014): ``/metrics`` for everyone, ``/debug/*`` for localhost only.

* ``/debug/index`` — the ambient index outputs (Address and Authorization records) as sorted JSON;
* ``/debug/clients`` — every connected xDS client and the resources/versions it holds (per-client view);
* ``/debug/inputs`` — object counts per watched kind and whether each informer has synced.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web
from meshkit.metrics import add_metrics_routes
from prometheus_client import CollectorRegistry

from istiod.index.ambient import AmbientIndex
from istiod.xds.server import DiscoveryServer


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, bytes):
        return str(ipaddress.ip_address(value)) if len(value) in (4, 16) else value.hex()
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return value


def _local_only(handler: Callable[[web.Request], Any]) -> Callable[[web.Request], Any]:
    async def guarded(request: web.Request) -> web.StreamResponse:
        remote = request.remote or ""
        try:
            loopback = ipaddress.ip_address(remote.split("%")[0]).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            return web.Response(status=403, text="debug endpoints are served to localhost only\n")
        return web.json_response(handler(request), dumps=lambda v: json.dumps(v, indent=1, sort_keys=True))

    return guarded


def monitoring_app(
    registry: CollectorRegistry, index: AmbientIndex, server: DiscoveryServer,
    synced: Callable[[], dict[str, bool]],
) -> web.Application:  # fmt: skip
    app = web.Application()
    add_metrics_routes(app, registry)
    app.router.add_get("/debug/index", _local_only(lambda _r: {
        "addresses": {k: _jsonable(v) for k, v in sorted(index.addresses.items())},
        "authorizations": {k: _jsonable(v) for k, v in sorted(index.authorizations.items())},
        "policy_status": {k: _jsonable(v) for k, v in sorted(index.policy_statuses().items())},
    }))  # fmt: skip
    app.router.add_get("/debug/clients", _local_only(lambda _r: server.debug_clients()))
    app.router.add_get("/debug/inputs", _local_only(lambda _r: {
        kind: {"objects": len(index.inputs[kind]), "synced": ok} for kind, ok in synced().items()
    }))  # fmt: skip
    return app
