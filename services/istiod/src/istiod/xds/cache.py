"""Encoded xDS resources, kept in step with the ambient index's output collections.

Each record that changes is encoded once (protobuf ``Any`` bytes, content version, the serialized envoy
``Resource``) and compared with what the cache holds: only a real change of bytes reaches ``on_change``, so
a Kubernetes update that does not alter what ztunnel would receive never causes a push (STYLE.md
practice 6). Implements :class:`meshkit.xds.server_core.ResourceSource` for the streams.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TypeVar

from meshkit.logs import kv
from meshkit.xds.server_core import Resource
from meshkit.xds.types import ADDRESS_TYPE, AUTHORIZATION_TYPE, content_version
from meshkit.xds.wire import any_bytes

from istiod.index.ambient import Address, address_aliases
from istiod.index.encode import encode_address, encode_authorization
from istiod.index.krt import Change, Collection
from istiod.index.records import Authorization

OnChange = Callable[[str, set[str]], None]
log = logging.getLogger("xds")
R = TypeVar("R")


def address_resource(record: Address) -> Resource:
    body = any_bytes(ADDRESS_TYPE, encode_address(record).SerializeToString(deterministic=True))
    return Resource.build(record.resource_name, content_version(body), body, address_aliases(record))


def authorization_resource(record: Authorization) -> Resource:
    body = any_bytes(AUTHORIZATION_TYPE, encode_authorization(record).SerializeToString(deterministic=True))
    # upstream sends Authorization resources without a version (wire-contracts.md §3.5)
    return Resource.build(record.resource_name, content_version(body), body, send_version=False)


def _current(collection: Collection[R]) -> list[Change[R]]:
    return [Change(key, None, value) for key, value in collection.items()]


class ResourceCache:
    def __init__(self, on_change: OnChange | None = None) -> None:
        self.resources: dict[str, dict[str, Resource]] = {ADDRESS_TYPE: {}, AUTHORIZATION_TYPE: {}}
        self.on_change = on_change
        self._alias_lookup: Callable[[str], Iterable[str]] = lambda _key: ()
        self.encodes = 0

    def watch(self, addresses: Collection[Address], authorizations: Collection[Authorization],
              alias_lookup: Callable[[str], Iterable[str]]) -> None:  # fmt: skip
        """Follow both output collections (loading what they hold now); ``alias_lookup`` maps an IP key to
        resource names for on-demand requests."""
        self._alias_lookup = alias_lookup
        self._update(ADDRESS_TYPE, _current(addresses), address_resource)
        self._update(AUTHORIZATION_TYPE, _current(authorizations), authorization_resource)
        addresses.subscribe(lambda changes: self._update(ADDRESS_TYPE, changes, address_resource))
        authorizations.subscribe(
            lambda changes: self._update(AUTHORIZATION_TYPE, changes, authorization_resource)
        )

    def _update(self, type_url: str, changes: list[Change[R]], encode: Callable[[R], Resource]) -> None:
        table = self.resources[type_url]
        changed: set[str] = set()
        for change in changes:
            if change.new is None:
                if table.pop(change.key, None) is not None:
                    changed.add(change.key)
                continue
            try:
                resource = encode(change.new)
            except (
                Exception
            ):  # e.g. a value out of range for its proto field: this resource alone is withheld
                log.exception(
                    "encoding failed; resource withheld", extra=kv(type_url=type_url, name=change.key)
                )
                if table.pop(change.key, None) is not None:
                    changed.add(change.key)
                continue
            self.encodes += 1
            old = table.get(change.key)
            if old is not None and old.version == resource.version and old.aliases == resource.aliases:
                continue  # same bytes on the wire: no push
            table[change.key] = resource
            changed.add(change.key)
        if changed and self.on_change is not None:
            self.on_change(type_url, changed)

    # ---- ResourceSource ----

    def get(self, type_url: str, name: str) -> Resource | None:
        return self.resources.get(type_url, {}).get(name)

    def names(self, type_url: str) -> Iterable[str]:
        return self.resources.get(type_url, {}).keys()

    def lookup(self, type_url: str, key: str) -> list[Resource]:
        if type_url != ADDRESS_TYPE:
            return []
        table = self.resources[ADDRESS_TYPE]
        return [table[name] for name in self._alias_lookup(key) if name in table]
