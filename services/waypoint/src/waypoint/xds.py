"""The waypoint's production config source: istiod's delta ADS, type ``ambient.waypoint.v1.WaypointConfig``.

The waypoint subscribes as a wildcard client to our type only. istiod may send the configs of every waypoint
(one resource per waypoint, ``<ns>/<name>``); :class:`~waypoint.config.ConfigStore` keeps the one named after
this waypoint and ignores the rest, so the server needs no per-node filtering to be correct.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from google.protobuf import struct_pb2
from google.protobuf.message import Message
from meshkit.xds.client import XdsClient, XdsClientConfig, XdsClientMetrics
from meshkit.xds.client_core import ClientCore, Rejected
from meshproto.ambient.waypoint.v1 import waypoint_pb2 as pb
from meshproto.envoy.config.core.v3 import base_pb2

from waypoint.config import TYPE_URL, ConfigStore
from waypoint.settings import Settings

__all__ = ["node_for", "xds_source"]


class _Updater:
    """Feeds the store; the first response (even one without our resource) counts as synced."""

    def __init__(self, store: ConfigStore, synced: Callable[[], None]) -> None:
        self.store = store
        self.synced = synced

    def apply(self, type_url: str, upserts: list[tuple[str, Message]], removes: list[str]) -> list[Rejected]:
        rejected = [Rejected(n, r) for n, r in self.store.apply(type_url, upserts, removes)]
        self.synced()
        return rejected


def node_for(settings: Settings) -> base_pb2.Node:
    """``waypoint~<ip>~<pod>.<ns>~<ns>.svc.cluster.local`` plus metadata naming the Gateway."""
    ns = settings.pod_namespace
    pod = settings.pod_name or settings.waypoint_name
    meta = struct_pb2.Struct()
    meta.update(
        {
            "WAYPOINT_NAME": settings.waypoint_name,
            "NAMESPACE": ns,
            "SERVICE_ACCOUNT": settings.service_account,
        }
    )
    return base_pb2.Node(
        id=f"waypoint~{settings.pod_ip}~{pod}.{ns}~{ns}.svc.cluster.local",
        cluster=f"{settings.waypoint_name}.{ns}",
        metadata=meta,
    )


def xds_source(settings: Settings, root_cert_path: str, token: str, registry: object | None = None):  # type: ignore[no-untyped-def]
    """A ConfigSource for :func:`waypoint.app.build` running the delta xDS client."""

    async def run(store: ConfigStore, synced: Callable[[], None]) -> None:
        root = Path(root_cert_path).read_bytes() if root_cert_path and Path(root_cert_path).exists() else None  # noqa: ASYNC240
        core = ClientCore(
            node_for(settings),
            _Updater(store, synced),
            types=(TYPE_URL,),
            decoders={TYPE_URL: pb.WaypointConfig},
        )
        metrics = XdsClientMetrics(registry) if registry is not None else None  # type: ignore[arg-type]
        client = XdsClient(XdsClientConfig(settings.xds_address, root, token=token), core, metrics)
        await client.run()

    return run
