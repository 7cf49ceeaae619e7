"""Glue between ztunnel's state and its config sources: the delta xDS client, or a static JSON file.

:class:`StateUpdater` is the one updater interface the xDS client drives:
``apply(type_url, upserts, removes) -> rejected``, ``upserts`` being ``(resource name, Any.value bytes)``
(or decoded messages) and ``rejected`` is ``[(name, reason)]`` for the NACK. :func:`load_static` reads
``LOCAL_XDS_PATH``: ``{"workloads": [...], "services": [...], "policies": [...]}`` with each element in
protobuf JSON form (``istio.workload.Workload``, ``istio.workload.Service``,
``istio.security.Authorization``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from meshkit.logs import kv
from meshproto.istio.security import authorization_pb2 as authz_pb2
from meshproto.istio.workload import workload_pb2 as wl_pb2

from ztunnel.state.state import ADDRESS_TYPE, AUTHORIZATION_TYPE, Rejected, State

__all__ = ["TYPE_URLS", "StateUpdater", "load_static", "static_config"]

log = logging.getLogger("xds")

TYPE_URLS = (ADDRESS_TYPE, AUTHORIZATION_TYPE)


class StateUpdater:
    """The xDS client's updater: every resource goes through :meth:`State.apply` (one updater)."""

    def __init__(self, state: State) -> None:
        self.state = state

    def apply(
        self, type_url: str, upserts: Sequence[tuple[str, Any]], removes: Sequence[str]
    ) -> list[Rejected]:
        raw: list[tuple[str, bytes]] = []
        for name, value in upserts:
            if isinstance(value, bytes | bytearray | memoryview):
                raw.append((name, bytes(value)))
            elif hasattr(value, "value") and isinstance(value.value, bytes):  # google.protobuf.Any
                raw.append((name, value.value))
            else:
                raw.append((name, value.SerializeToString()))
        rejected = self.state.apply(type_url, raw, removes)
        if rejected:
            log.warning("rejected resources", extra=kv(type_url=type_url, rejected=rejected))
        return rejected


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
    rejected = state.apply_addresses(list(addresses), [])
    rejected += state.apply_authorizations(list(policies), [])
    log.info("static config loaded", extra=kv(path=path, addresses=len(addresses), policies=len(policies)))
    return rejected
