"""Sans-IO delta xDS client bookkeeping, as ztunnel does it (wire-contracts.md §3.3-3.4).

:class:`ClientCore` builds the initial requests of each (re)connect, turns every response into typed
upserts and removals for the one :class:`Updater`, and answers with an ACK or a NACK. It remembers the
version of every resource it applied, per type, so the next connection resumes with
``initial_resource_versions`` (rejected resources are left out, so the server sends them again).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from google.protobuf.message import DecodeError, Message
from meshproto.envoy.config.core.v3 import base_pb2
from meshproto.envoy.service.discovery.v3 import discovery_pb2
from meshproto.google.rpc import status_pb2
from meshproto.istio.security import authorization_pb2
from meshproto.istio.workload import workload_pb2

from meshkit.logs import kv
from meshkit.xds.types import ADDRESS_TYPE, AUTHORIZATION_TYPE

__all__ = ["DECODERS", "ClientCore", "Rejected", "Updater"]

log = logging.getLogger("xds")

DECODERS: dict[str, type[Message]] = {
    ADDRESS_TYPE: workload_pb2.Address,
    AUTHORIZATION_TYPE: authorization_pb2.Authorization,
}


@dataclass(frozen=True, slots=True)
class Rejected:
    """A resource the updater (or the decoder) refused, and why; it goes into the NACK message."""

    name: str
    reason: str


class Updater(Protocol):
    """The single place xDS updates enter the stores (STYLE.md practices 5 and 7).

    ``apply`` must apply every good upsert and removal and return the ones it refused; it must not raise for
    a bad resource. Upserts arrive decoded (``workload_pb2.Address`` / ``authorization_pb2.Authorization``).
    """

    def apply(
        self, type_url: str, upserts: list[tuple[str, Message]], removes: list[str]
    ) -> list[Rejected]: ...


class ClientCore:
    def __init__(
        self,
        node: base_pb2.Node,
        updater: Updater,
        *,
        types: Sequence[str] = (ADDRESS_TYPE, AUTHORIZATION_TYPE),
        on_demand: bool = False,
        decoders: Mapping[str, type[Message]] = DECODERS,
    ) -> None:
        self.node = node
        self.updater = updater
        self.types = tuple(types)
        self.on_demand = on_demand
        self.decoders = dict(decoders)
        self.versions: dict[str, dict[str, str]] = {t: {} for t in self.types}
        self.acked_types: set[str] = set()
        self.requested: set[str] = set()  # on-demand keys asked for (resent with version "" on reconnect)

    def initial_requests(self) -> list[discovery_pb2.DeltaDiscoveryRequest]:
        """One request per type, Address first, each carrying the node and what we already hold."""
        out = []
        for type_url in self.types:
            req = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, node=self.node)
            versions = dict(self.versions[type_url])
            if type_url == ADDRESS_TYPE and self.on_demand:
                # subscribe and unsubscribe "*" together: "nothing yet", the Istio convention (§3.4)
                req.resource_names_subscribe.append("*")
                req.resource_names_unsubscribe.append("*")
                for key in sorted(self.requested):
                    versions.setdefault(key, "")
            req.initial_resource_versions.update(versions)
            out.append(req)
        return out

    def on_demand_request(self, key: str) -> discovery_pb2.DeltaDiscoveryRequest:
        self.requested.add(key)
        return discovery_pb2.DeltaDiscoveryRequest(type_url=ADDRESS_TYPE, resource_names_subscribe=[key])

    @property
    def synced(self) -> bool:
        """Every wildcard type has been answered and applied at least once (ztunnel's xDS readiness)."""
        wildcard = [t for t in self.types if not (t == ADDRESS_TYPE and self.on_demand)]
        return all(t in self.acked_types for t in wildcard)

    def handle(self, resp: discovery_pb2.DeltaDiscoveryResponse) -> discovery_pb2.DeltaDiscoveryRequest:
        """Apply one response; returns the ACK or NACK to send."""
        type_url = resp.type_url
        decoder = self.decoders.get(type_url)
        if decoder is None or type_url not in self.versions:
            log.warning("response of unknown type; acking", extra=kv(type_url=type_url))
            return discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, response_nonce=resp.nonce)
        rejected: list[Rejected] = []
        upserts: list[tuple[str, Message]] = []
        versions: dict[str, str] = {}
        for res in resp.resources:
            try:
                upserts.append((res.name, decoder.FromString(res.resource.value)))
                versions[res.name] = res.version
            except DecodeError as exc:
                rejected.append(Rejected(res.name, f"cannot decode: {exc}"))
        removes = list(resp.removed_resources)
        rejected += self._apply(type_url, upserts, removes)
        refused = {r.name for r in rejected}
        held = self.versions[type_url]
        for name in removes:
            held.pop(name, None)
        for name, version in versions.items():
            if name in refused:
                held.pop(name, None)  # not recorded: the server re-sends it on reconnect
            else:
                held[name] = version
        self.acked_types.add(type_url)
        ack = discovery_pb2.DeltaDiscoveryRequest(type_url=type_url, response_nonce=resp.nonce)
        if rejected:
            message = "; ".join(f"{r.name}: {r.reason}" for r in rejected)
            ack.error_detail.CopyFrom(status_pb2.Status(message=message))
        return ack

    def _apply(self, type_url: str, upserts: list[tuple[str, Message]], removes: list[str]) -> list[Rejected]:
        try:
            return list(self.updater.apply(type_url, upserts, removes))
        except Exception as exc:  # the updater broke its contract: reject the whole batch, keep running
            log.exception("xds updater failed", extra=kv(type_url=type_url))
            return [Rejected(name, f"updater error: {exc}") for name, _ in upserts]
