"""SPIFFE identities as used by Istio: ``spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>``.

The parser is as strict as ztunnel's: exactly the five path segments ``td/ns/<ns>/sa/<sa>``
(wire-contracts.md §4.4). Identities are values: frozen, hashable, comparable.
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEME = "spiffe://"
DEFAULT_TRUST_DOMAIN = "cluster.local"


class InvalidIdentity(ValueError):
    """A string is not an Istio SPIFFE identity."""


@dataclass(frozen=True, slots=True, order=True)
class Identity:
    trust_domain: str
    namespace: str
    service_account: str

    @classmethod
    def parse(cls, uri: str) -> Identity:
        if not uri.startswith(SCHEME):
            raise InvalidIdentity(f"identity {uri!r} does not start with {SCHEME}")
        parts = uri[len(SCHEME) :].split("/")
        if len(parts) != 5 or parts[1] != "ns" or parts[3] != "sa" or not all(parts):
            raise InvalidIdentity(f"identity {uri!r} is not of the form spiffe://<td>/ns/<ns>/sa/<sa>")
        return cls(parts[0], parts[2], parts[4])

    @property
    def uri(self) -> str:
        return f"{SCHEME}{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @property
    def principal(self) -> str:
        """The identity without its scheme: the form AuthorizationPolicy principals use."""
        return self.uri[len(SCHEME) :]

    def __str__(self) -> str:
        return self.uri
