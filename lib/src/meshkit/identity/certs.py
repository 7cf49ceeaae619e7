"""The workload certificate record shared by the certificate manager (producer) and HBONE (consumer)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from meshkit.identity.spiffe import Identity


@dataclass(frozen=True, slots=True)
class WorkloadCertificate:
    """A leaf certificate, its chain and private key, and the trust roots, all PEM.

    ``chain_pem`` is the leaf followed by any intermediates (the CreateCertificate response minus its last
    element); ``roots_pem`` is the last element of that response: the mesh trust anchors used to verify peers.
    """

    identity: Identity
    chain_pem: bytes
    private_key_pem: bytes
    roots_pem: bytes
    not_before: datetime
    not_after: datetime
    serial: int = 0

    def refresh_at(self) -> datetime:
        """Half-life, as ztunnel refreshes: not_before + (not_after - not_before) / 2."""
        return self.not_before + (self.not_after - self.not_before) / 2
