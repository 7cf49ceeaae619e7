"""Sans-IO bookkeeping of one delta xDS stream on the server side (wire-contracts.md §3.4-3.5).

:class:`ServerStream` takes each ``DeltaDiscoveryRequest`` and answers with the responses to send; the shell
calls :meth:`ServerStream.push` when resources changed. It keeps, per type URL: whether the client is a
wildcard subscriber, its explicit names, and the version of every resource it has been sent. That last map
is what makes pushes minimal:

* a resource is sent only when its version differs from what the client has (initially the client's
  ``initial_resource_versions``), so a reconnecting client receives only what changed meanwhile, plus
  ``removed_resources`` for names it still holds that no longer exist;
* a NACKed resource keeps its recorded version, so it is not resent until it changes (the NACK is
  reported to the caller, which logs it);
* the first request of a type is always answered, even with nothing in it (ztunnel's readiness waits for it).

On-demand (non-wildcard) subscriptions may name a resource or an alias (``<network>/<ip>``); an alias is
answered with the resource under its primary name and the alias in ``aliases``, and a name that does not
exist is answered in ``removed_resources`` so the waiting client is released.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from meshproto.envoy.service.discovery.v3 import discovery_pb2

from meshkit.xds import wire

__all__ = ["Nack", "Received", "Resource", "ResourceSource", "Response", "ServerStream"]

WILDCARD = "*"


@dataclass(frozen=True, slots=True)
class Resource:
    """One encoded resource. ``version`` is the content version the server compares; ``entry`` is the
    serialized envoy ``Resource`` (its wire ``version`` may be empty, as for Authorization upstream)."""

    name: str
    version: str
    any_bytes: bytes
    entry: bytes
    aliases: tuple[str, ...] = ()
    wire_version: str = ""

    @classmethod
    def build(cls, name: str, version: str, any_bytes: bytes, aliases: Iterable[str] = (),
              *, send_version: bool = True) -> Resource:  # fmt: skip
        wire_version = version if send_version else ""
        entry = wire.resource_entry(name, wire_version, any_bytes)
        return cls(name, version, any_bytes, entry, tuple(aliases), wire_version)

    def with_aliases(self) -> bytes:
        return wire.resource_entry(self.name, self.wire_version, self.any_bytes, self.aliases)


class ResourceSource(Protocol):
    """The current resources the stream serves (the server's cache)."""

    def get(self, type_url: str, name: str) -> Resource | None: ...
    def names(self, type_url: str) -> Iterable[str]: ...
    def lookup(self, type_url: str, key: str) -> list[Resource]: ...


@dataclass(slots=True)
class Response:
    type_url: str
    nonce: str
    resources: list[bytes]
    removed: list[str]
    names: list[str]

    def encode(self) -> bytes:
        return wire.response_bytes(self.type_url, self.nonce, self.resources, self.removed)


@dataclass(frozen=True, slots=True)
class Nack:
    type_url: str
    nonce: str
    message: str


@dataclass(slots=True)
class Received:
    """What one request produced: responses to send, and an ACK/NACK of an earlier response."""

    responses: list[Response] = field(default_factory=list)
    acked: str | None = None
    nack: Nack | None = None
    initial: bool = False


@dataclass(slots=True)
class _TypeState:
    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    sent: dict[str, str] = field(default_factory=dict)
    pending: dict[str, list[str]] = field(default_factory=dict)  # nonce -> names sent in it


class ServerStream:
    def __init__(self, source: ResourceSource) -> None:
        self.source = source
        self.types: dict[str, _TypeState] = {}
        self._prefix = secrets.token_hex(4)
        self._counter = itertools.count(1)

    def _nonce(self) -> str:
        return f"{self._prefix}-{next(self._counter)}"

    def subscribed(self, type_url: str, name: str) -> bool:
        state = self.types.get(type_url)
        return state is not None and (state.wildcard or name in state.names)

    def receive(self, req: discovery_pb2.DeltaDiscoveryRequest) -> Received:
        type_url = req.type_url
        out = Received()
        state = self.types.get(type_url)
        if req.response_nonce and state is not None:
            state.pending.pop(req.response_nonce, None)
            if req.HasField("error_detail"):
                out.nack = Nack(type_url, req.response_nonce, req.error_detail.message)
            else:
                out.acked = req.response_nonce
        if state is None:
            out.initial = True
            state = self.types[type_url] = _TypeState(wildcard=not req.resource_names_subscribe)
            state.sent.update(req.initial_resource_versions)
        added = self._subscribe(state, req)
        if out.initial and not state.wildcard:
            # what the client already holds stays subscribed, as istiod's deltaWatchedResources does: an
            # on-demand client resumes its earlier lookups this way (names it asked for carry version "")
            state.names.update(n for n in req.initial_resource_versions if n != WILDCARD)
        if out.initial:
            out.responses.append(self._initial_response(type_url, state))
        elif added:
            response = self._on_demand(type_url, state, added)
            if response is not None:
                out.responses.append(response)
        return out

    def _subscribe(self, state: _TypeState, req: discovery_pb2.DeltaDiscoveryRequest) -> list[str]:
        added = []
        for name in req.resource_names_subscribe:
            if name == WILDCARD:
                state.wildcard = True
            elif name not in state.names:
                state.names.add(name)
                added.append(name)
        for name in req.resource_names_unsubscribe:
            if name == WILDCARD:
                state.wildcard = False  # subscribe ["*"] + unsubscribe ["*"]: nothing, non-wildcard (§3.4)
            else:
                state.names.discard(name)
                state.sent.pop(name, None)  # a later re-subscribe must send it again
        return added

    def _initial_response(self, type_url: str, state: _TypeState) -> Response:
        names = set(self.source.names(type_url)) if state.wildcard else set()
        resolved: set[str] = set()  # requested keys (names or aliases) that exist
        for key in list(state.names):
            found = [r.name for r in self._resolve(type_url, key)]
            if found:
                resolved.add(key)
            names.update(found)
        if not state.wildcard:
            state.names.update(names)  # follow the primary names the keys resolved to
        known = dict(state.sent)
        state.sent = {}
        response = self._diff(type_url, state, sorted(names), known)
        # names the client holds or asked for that no longer exist (§3.5, reconnect)
        response.removed.extend(
            sorted(
                n for n in known
                if n not in names and n not in resolved and self.source.get(type_url, n) is None
            )
        )  # fmt: skip
        return self._record(state, response)

    def _resolve(self, type_url: str, key: str) -> list[Resource]:
        found = self.source.get(type_url, key)
        return [found] if found is not None else self.source.lookup(type_url, key)

    def _on_demand(self, type_url: str, state: _TypeState, keys: list[str]) -> Response | None:
        response = Response(type_url, "", [], [], [])
        for key in keys:
            resources = self._resolve(type_url, key)
            if not resources:
                response.removed.append(key)  # lets a waiting client give up at once
            for res in resources:
                state.names.add(res.name)
                if state.sent.get(res.name) != res.version:
                    response.resources.append(res.with_aliases() if res.name != key else res.entry)
                    response.names.append(res.name)
                    state.sent[res.name] = res.version
        if not response.resources and not response.removed:
            return None
        return self._record(state, response)

    def _diff(
        self, type_url: str, state: _TypeState, names: Iterable[str], known: dict[str, str]
    ) -> Response:
        response = Response(type_url, "", [], [], [])
        for name in names:
            res = self.source.get(type_url, name)
            if res is None:
                if name in known:
                    response.removed.append(name)
                continue
            state.sent[name] = res.version
            if known.get(name) != res.version:
                response.resources.append(res.entry)
                response.names.append(name)
        return response

    def _record(self, state: _TypeState, response: Response) -> Response:
        response.nonce = self._nonce()
        state.pending[response.nonce] = response.names
        return response

    def push(self, type_url: str, names: Iterable[str]) -> Response | None:
        """The response bringing the client up to date on ``names`` (changed or removed), if any."""
        state = self.types.get(type_url)
        if state is None:
            return None
        response = Response(type_url, "", [], [], [])
        for name in names:
            if not (state.wildcard or name in state.names):
                continue
            res = self.source.get(type_url, name)
            if res is None:
                if state.sent.pop(name, None) is not None:
                    response.removed.append(name)
            elif state.sent.get(name) != res.version:
                state.sent[name] = res.version
                response.resources.append(res.entry)
                response.names.append(name)
        if not response.resources and not response.removed:
            return None
        return self._record(state, response)

    def pending_nonces(self, type_url: str) -> list[str]:
        state = self.types.get(type_url)
        return list(state.pending) if state else []
