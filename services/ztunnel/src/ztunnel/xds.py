"""Glue between ztunnel's state and its config sources: the delta xDS client, or a static JSON file.

:class:`StateUpdater` is the one updater the xDS client drives (``meshkit.xds.client_core.Updater``):
``apply(type_url, upserts, removes) -> rejected``, ``upserts`` being ``(resource name, decoded message)``
(bytes and ``Any`` are accepted too) and ``rejected`` the ``(name, reason)`` pairs for the NACK.
:func:`xds_source` runs ``meshkit.xds``'s client against istiod; :func:`load_static` reads ``LOCAL_XDS_PATH``:
``{"workloads": [...], "services": [...], "policies": [...]}`` with each element in protobuf JSON form
(``istio.workload.Workload``, ``istio.workload.Service``, ``istio.security.Authorization``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from google.protobuf import json_format, struct_pb2
from meshkit.logs import kv
from meshkit.xds.client_core import ClientCore
from meshkit.xds.client_core import Rejected as XdsRejected
from meshkit.xds.metrics import XdsClientMetrics
from meshkit.xds.types import DELTA_METHOD, NodeId, short_type
from meshproto.envoy.config.core.v3 import base_pb2
from meshproto.envoy.service.discovery.v3 import discovery_pb2
from meshproto.istio.security import authorization_pb2 as authz_pb2
from meshproto.istio.workload import workload_pb2 as wl_pb2
from prometheus_client import CollectorRegistry

from ztunnel.grpclite import Channel, ConfigError, GrpcError, parse_address, read_root, require_root
from ztunnel.settings import Settings
from ztunnel.state.state import ADDRESS_TYPE, AUTHORIZATION_TYPE, Rejected, State

__all__ = ["TYPE_URLS", "ConfigSource", "StateUpdater", "load_static", "node", "static_config", "xds_source"]

log = logging.getLogger("xds")

TYPE_URLS = (ADDRESS_TYPE, AUTHORIZATION_TYPE)

#: Runs for the app's lifetime keeping ``state`` current; calls ``synced()`` once the first full config is in.
ConfigSource = Callable[[State, Callable[[], None]], Coroutine[Any, Any, None]]


class StateUpdater:
    """The xDS client's updater: every resource goes through :meth:`State.apply` (one updater)."""

    def __init__(self, state: State) -> None:
        self.state = state

    def apply(
        self, type_url: str, upserts: Sequence[tuple[str, Any]], removes: Sequence[str]
    ) -> list[XdsRejected]:
        return [XdsRejected(name, reason) for name, reason in self.apply_raw(type_url, upserts, removes)]

    def apply_raw(
        self, type_url: str, upserts: Sequence[tuple[str, Any]], removes: Sequence[str]
    ) -> list[Rejected]:
        if type_url == ADDRESS_TYPE and all(isinstance(v, wl_pb2.Address) for _, v in upserts):
            rejected = self.state.apply_addresses(upserts, removes)  # already decoded: no second parse
        elif type_url == AUTHORIZATION_TYPE and all(
            isinstance(v, authz_pb2.Authorization) for _, v in upserts
        ):
            rejected = self.state.apply_authorizations(upserts, removes)
        else:
            rejected = self.state.apply(type_url, self._raw(upserts), removes)
        if rejected:
            log.warning("rejected resources", extra=kv(type_url=type_url, rejected=rejected))
        return rejected

    @staticmethod
    def _raw(upserts: Sequence[tuple[str, Any]]) -> list[tuple[str, bytes]]:
        raw: list[tuple[str, bytes]] = []
        for name, value in upserts:
            if isinstance(value, bytes | bytearray | memoryview):
                raw.append((name, bytes(value)))
            elif hasattr(value, "type_url") and hasattr(value, "value"):  # google.protobuf.Any
                raw.append((name, value.value))
            else:
                raw.append((name, value.SerializeToString()))
        return raw


def static_config(
    doc: dict[str, Any],
) -> tuple[list[tuple[str, wl_pb2.Address]], list[tuple[str, authz_pb2.Authorization]]]:
    addresses: list[tuple[str, wl_pb2.Address]] = []
    for item in doc.get("workloads", []):
        wl = json_format.ParseDict(item, wl_pb2.Workload())
        addresses.append((wl.uid, wl_pb2.Address(workload=wl)))
    for item in doc.get("services", []):
        svc = json_format.ParseDict(item, wl_pb2.Service())
        addresses.append((f"{svc.namespace}/{svc.hostname}", wl_pb2.Address(service=svc)))
    policies = []
    for item in doc.get("policies", []):
        pol = json_format.ParseDict(item, authz_pb2.Authorization())
        policies.append((f"{pol.namespace}/{pol.name}", pol))
    return addresses, policies


def load_static(path: str, state: State) -> list[Rejected]:
    """Apply a static config file; returns what was rejected."""
    doc = json.loads(Path(path).read_text())
    addresses, policies = static_config(doc)
    rejected = state.apply_addresses(addresses, [])
    rejected += state.apply_authorizations(policies, [])
    log.info("static config loaded", extra=kv(path=path, addresses=len(addresses), policies=len(policies)))
    return rejected


def node(settings: Settings) -> base_pb2.Node:
    """The xDS node of wire-contracts.md §3.3: id ``ztunnel~ip~pod.ns~ns.svc.cluster.local`` + metadata."""
    node_id = NodeId.ztunnel(settings.instance_ip, settings.pod_name, settings.pod_namespace)
    metadata = struct_pb2.Struct()
    metadata.update(
        {
            "NAME": settings.pod_name,
            "NAMESPACE": settings.pod_namespace,
            "INSTANCE_IPS": settings.instance_ip,
            "NODE_NAME": settings.node_name,
            "CLUSTER_ID": settings.cluster_id,
            **{
                k.removeprefix("ISTIO_META_"): v for k, v in os.environ.items() if k.startswith("ISTIO_META_")
            },
        }
    )
    return base_pb2.Node(id=str(node_id), metadata=metadata)


class LiteXdsClient:
    """The delta xDS stream over :mod:`ztunnel.grpclite` around ``meshkit.xds``'s sans-IO ``ClientCore``.

    Same policy as ``meshkit.xds.client.XdsClient`` (wire-contracts.md §3.1): initial requests on every
    connect (resuming with the versions held), ACK/NACK each response, reconnect with back-off doubling from
    10 ms to 15 s (reset once a response arrived); the stores are never cleared while istiod is away.
    """

    def __init__(self, settings: Settings, core: ClientCore, metrics: XdsClientMetrics | None = None) -> None:
        _, self.tls = parse_address(settings.xds_address)
        if self.tls:  # an https istiod with no root is a start-up error, never a plaintext fall-back
            require_root(settings.xds_root_ca, "XDS_ROOT_CA", settings.xds_address)
        self.settings = settings
        self.core = core
        self.metrics = metrics
        self.synced = asyncio.Event()
        self.connections = 0

    def _metadata(self) -> list[tuple[str, str]]:
        if not self.tls:  # the token only ever travels over TLS (grpclite drops it too)
            return []
        token = self.settings.auth_token
        path = Path(token)
        if token and path.is_file():
            token = path.read_text().strip()
        elif token.startswith("/"):
            token = ""  # a token path that does not exist (yet): send none
        return (
            [("authorization", f"Bearer {token}"), ("clusterid", self.settings.cluster_id)] if token else []
        )

    async def run(self) -> None:
        backoff = 0.01
        while True:
            got = await self._connect_once()
            backoff = 0.01 if got else min(backoff * 2, 15.0)
            await asyncio.sleep(backoff)  # reconnect back-off

    async def _connect_once(self) -> bool:
        s = self.settings
        got = False
        channel: Channel | None = None
        try:
            root = read_root(s.xds_root_ca, "XDS_ROOT_CA", s.xds_address) if self.tls else None  # rotation
            channel = await Channel.open(s.xds_address, root)
            call = channel.stream(DELTA_METHOD, self._metadata())
            self.connections += 1
            for req in self.core.initial_requests():
                await call.send(req.SerializeToString())
            while (raw := await call.recv()) is not None:
                got = True
                resp = discovery_pb2.DeltaDiscoveryResponse.FromString(raw)
                if self.metrics is not None:
                    url = short_type(resp.type_url)
                    self.metrics.messages.labels(url=url).inc()
                    self.metrics.message_bytes.labels(url=url).inc(len(raw))
                ack = self.core.handle(resp)
                if ack.HasField("error_detail"):
                    log.warning("xds NACK", extra=kv(error=ack.error_detail.message))
                await call.send(ack.SerializeToString())
                if self.core.synced:
                    self.synced.set()
            reason = "clean end"
        except (GrpcError, ConfigError, OSError, TimeoutError) as exc:
            reason = str(exc)
        finally:
            if channel is not None:
                channel.close()
        if self.metrics is not None:
            self.metrics.terminations.labels(reason=reason.split(":")[0]).inc()
        log.info("xds stream ended; reconnecting", extra=kv(reason=reason))
        return got


def xds_source(settings: Settings, registry: CollectorRegistry | None = None) -> ConfigSource:
    """The delta xDS client against ``XDS_ADDRESS``: https (the default scheme) verified by ``XDS_ROOT_CA``,
    which must then be set (else :class:`~ztunnel.grpclite.ConfigError` here, at start-up); plaintext only for
    an explicit ``http://`` address, and then without the token.

    ``ZTUNNEL_GRPC=lite`` (default) uses :class:`LiteXdsClient`; ``grpcio`` uses ``meshkit.xds``'s client.
    """
    _, tls = parse_address(settings.xds_address)
    if tls:
        require_root(settings.xds_root_ca, "XDS_ROOT_CA", settings.xds_address)

    async def run_lite(state: State, synced: Callable[[], None]) -> None:
        metrics = XdsClientMetrics(registry) if registry is not None else None
        client = LiteXdsClient(settings, ClientCore(node(settings), StateUpdater(state)), metrics)
        async with asyncio.TaskGroup() as group:
            group.create_task(client.run())
            await client.synced.wait()
            synced()

    if settings.grpc_client == "lite":
        return run_lite

    async def run(state: State, synced: Callable[[], None]) -> None:
        from meshkit.xds.client import XdsClient, XdsClientConfig  # grpcio channel: only if chosen

        root = read_root(settings.xds_root_ca, "XDS_ROOT_CA", settings.xds_address) if tls else None
        core = ClientCore(node(settings), StateUpdater(state))
        config = XdsClientConfig(
            address=settings.xds_address,  # its scheme picks TLS there too
            root_cert_pem=root,
            token=settings.auth_token,
            cluster_id=settings.cluster_id,
        )
        client = XdsClient(
            config, core, XdsClientMetrics(registry) if registry is not None else None
        )  # grpcio
        async with asyncio.TaskGroup() as group:
            group.create_task(client.run())
            await client.synced.wait()
            synced()

    return run
