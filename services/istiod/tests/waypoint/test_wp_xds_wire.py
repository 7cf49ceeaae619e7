"""WaypointConfig over the wire: istiod's delta ADS server (our type registered) → the waypoint's xDS client.

Contract test between the two halves of issue #9: what ``istiod.waypoint.publish`` serves, the waypoint's
config source decodes and installs, and a change is pushed.
"""

from __future__ import annotations

import asyncio

from istiod.app import build
from istiod.settings import Settings
from istiod.waypoint.publish import register_waypoint_type
from meshkit.drain import TaskOwner
from meshproto.ambient.waypoint.v1 import waypoint_pb2 as pb
from waypoint.config import ConfigStore
from waypoint.settings import Settings as WaypointSettings
from waypoint.xds import xds_source

SETTINGS = Settings(
    secure_xds_addr="",
    plaintext_xds_addr="127.0.0.1:0",
    monitoring_addr="127.0.0.1:0",
    readiness_addr="127.0.0.1:0",
    ca_enabled=False,
    leader_election=False,
    debounce_s=0.01,
)


def _config(vip: str) -> pb.WaypointConfig:
    return pb.WaypointConfig(
        name="waypoint",
        namespace="app",
        services=[
            pb.Service(hostname="reviews.app.svc.cluster.local", vips=[vip], ports=[pb.ServicePort(port=80)])
        ],
    )


async def test_waypoint_config_is_served_and_updated_over_delta_ads() -> None:
    istiod = await build(SETTINGS)
    owner = TaskOwner("test-xds")
    try:
        publisher = register_waypoint_type(istiod.server.cache)
        publisher.update({"app/waypoint": _config("10.79.0.10"), "other/waypoint": _config("10.79.0.99")})
        store = ConfigStore("app/waypoint")
        changed = asyncio.Event()
        store.subscribe(lambda _snap: changed.set())
        synced = asyncio.Event()
        wp_settings = WaypointSettings(
            waypoint_name="waypoint",
            pod_namespace="app",
            pod_ip="10.79.1.20",
            xds_address=f"http://127.0.0.1:{istiod.addresses['xds_plaintext']}",  # plaintext: http://
        )
        owner.spawn(xds_source(wp_settings, "", "")(store, synced.set), name="xds")
        await asyncio.wait_for(synced.wait(), 10)
        await asyncio.wait_for(changed.wait(), 10)
        assert store.snapshot.find_service("10.79.0.10", 80) is not None
        assert store.snapshot.find_service("10.79.0.99", 80) is None  # another waypoint's config is ignored

        changed.clear()
        publisher.update({"app/waypoint": _config("10.79.0.11")})
        await asyncio.wait_for(changed.wait(), 10)
        assert store.snapshot.find_service("10.79.0.11", 80) is not None
        assert store.snapshot.find_service("10.79.0.10", 80) is None
    finally:
        await owner.close()
        await istiod.shutdown()
