"""Serve ``ambient.waypoint.v1.WaypointConfig`` over istiod's delta ADS, next to Address and Authorization.

:func:`register_waypoint_type` adds our type URL to the :class:`~istiod.xds.cache.ResourceCache` (the
streams' :class:`~meshkit.xds.server_core.ResourceSource`) and returns a :class:`WaypointPublisher`; its
:meth:`~WaypointPublisher.update` takes the complete set of configs (one per waypoint, ``<ns>/<name>``),
encodes each once, and reports only names whose bytes changed to the cache's ``on_change`` (the server's
debounced push), exactly as the cache does for its own types. Waypoints subscribe as wildcard clients and
keep the resource named after them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from meshkit.xds.server_core import Resource
from meshkit.xds.types import content_version
from meshkit.xds.wire import any_bytes
from meshproto.ambient.waypoint.v1 import waypoint_pb2 as pb

__all__ = ["WAYPOINT_TYPE", "WaypointPublisher", "register_waypoint_type"]

WAYPOINT_TYPE = "type.googleapis.com/ambient.waypoint.v1.WaypointConfig"


def encode(name: str, cfg: pb.WaypointConfig) -> Resource:
    body = any_bytes(WAYPOINT_TYPE, cfg.SerializeToString(deterministic=True))
    return Resource.build(name, content_version(body), body)


class WaypointPublisher:
    """Keeps the cache's WaypointConfig table equal to the last :meth:`update`."""

    def __init__(self, table: dict[str, Resource], notify: Callable[[str, set[str]], None] | None) -> None:
        self._table = table
        self._notify = notify

    def update(self, configs: Mapping[str, pb.WaypointConfig]) -> set[str]:
        """Replace the whole set; returns the names that changed (and were pushed)."""
        changed: set[str] = set()
        for name in list(self._table):
            if name not in configs:
                del self._table[name]
                changed.add(name)
        for name, cfg in configs.items():
            resource = encode(name, cfg)
            old = self._table.get(name)
            if old is not None and old.version == resource.version:
                continue
            self._table[name] = resource
            changed.add(name)
        if changed and self._notify is not None:
            self._notify(WAYPOINT_TYPE, changed)
        return changed


def register_waypoint_type(cache: Any) -> WaypointPublisher:
    """Add our type to ``cache`` (an ``istiod.xds.cache.ResourceCache``: ``resources`` + ``on_change``)."""
    table: dict[str, Resource] = cache.resources.setdefault(WAYPOINT_TYPE, {})

    def notify(type_url: str, names: set[str]) -> None:
        if cache.on_change is not None:  # read at call time: the app sets on_change after building the cache
            cache.on_change(type_url, names)

    return WaypointPublisher(table, notify)
