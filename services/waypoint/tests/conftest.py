"""Shared helpers for the waypoint unit tests: build WaypointConfig protos tersely."""

from __future__ import annotations

from meshproto.ambient.waypoint.v1 import waypoint_pb2 as pb


def cluster(
    host: str, port: int, endpoints: list[tuple[str, int]], *, subset: str = "", lb: int = 0
) -> pb.Cluster:
    name = f"inbound-vip|{port}|{subset or 'http'}|{host}"
    return pb.Cluster(
        name=name,
        hostname=host,
        port=port,
        subset=subset,
        lb=lb,  # type: ignore[arg-type]
        endpoints=[pb.Endpoint(address=a, port=p, weight=1, healthy=True) for a, p in endpoints],
    )
