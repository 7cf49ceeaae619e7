"""istiod's own serving certificate for port 15012, issued by the mesh CA itself.

ztunnel verifies istiod against the mesh root (the ``istio-ca-root-cert`` ConfigMap) and the host of its
XDS/CA address, ``istiod.<ns>.svc`` (wire-contracts.md §3.1), so the certificate carries that DNS name (plus
``istiod-<rev>.<ns>.svc`` for a revision and any ``ISTIOD_CUSTOM_HOST``). :class:`RotatingServerCredentials`
re-issues it at half-life; gRPC asks for it on each new handshake, so rotation needs no restart.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
from istiod.ca.authority import CertificateAuthority
from meshkit.identity.csr import KeyType, create_csr
from meshkit.identity.spiffe import Identity
from meshkit.logs import kv

__all__ = ["RotatingServerCredentials", "ServingCertificate", "issue_serving_certificate", "istiod_dns_names"]

log = logging.getLogger("ca.serving")

# The CSR helper wants an identity for its SAN; the CA replaces SANs with the DNS names anyway.
_PLACEHOLDER = Identity("cluster.local", "istio-system", "istiod")


def istiod_dns_names(
    namespace: str, revision: str = "default", custom_hosts: Sequence[str] = ()
) -> list[str]:
    names = [f"istiod.{namespace}.svc"]
    if revision and revision != "default":
        names.append(f"istiod-{revision}.{namespace}.svc")
    names += [h for h in custom_hosts if h and h not in names]
    return names


@dataclass(frozen=True, slots=True)
class ServingCertificate:
    private_key_pem: bytes
    chain_pem: bytes  # leaf + intermediates
    roots_pem: bytes
    dns_names: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime

    def refresh_at(self) -> dt.datetime:
        return self.not_before + (self.not_after - self.not_before) / 2

    def key_cert_pair(self) -> tuple[bytes, bytes]:
        """The ``(private_key, certificate_chain)`` pair grpc.ssl_server_credentials takes."""
        return self.private_key_pem, self.chain_pem

    def server_credentials(self) -> grpc.ServerCredentials:
        """Static credentials (no rotation); see :class:`RotatingServerCredentials` for the rotating kind."""
        return grpc.ssl_server_credentials([self.key_cert_pair()])


def issue_serving_certificate(
    ca: CertificateAuthority, dns_names: Sequence[str], ttl_s: int = 0, key_type: KeyType = KeyType.EC_P256
) -> ServingCertificate:
    bundle = create_csr(_PLACEHOLDER, key_type)
    # Our own CSR: its placeholder SAN is ignored and exactly the DNS names are issued.
    issued = ca.sign(bundle.csr_pem, dns=dns_names, ttl_s=ttl_s, check_csr_sans=False)
    cert = issued.certificate
    return ServingCertificate(
        private_key_pem=bundle.private_key_pem,
        chain_pem="".join(issued.chain[:-1]).encode(),
        roots_pem=ca.roots_pem,
        dns_names=tuple(dns_names),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )


class RotatingServerCredentials:
    """Server credentials that re-issue istiod's certificate at half-life (checked on each handshake)."""

    def __init__(
        self,
        ca: CertificateAuthority,
        dns_names: Sequence[str],
        ttl_s: int = 0,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._ca = ca
        self._names = list(dns_names)
        self._ttl = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._issuer = ca.bundle
        self.current = issue_serving_certificate(ca, self._names, ttl_s)

    def _config(self) -> grpc.ServerCertificateConfiguration:
        return grpc.ssl_server_certificate_configuration([self.current.key_cert_pair()])

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        # Runs on a gRPC core thread for every new connection: cheap unless it is time to rotate.
        with self._lock:
            # Re-issue at half-life, or at once when the CA's key material was swapped (cacerts rotation).
            if self._clock() < self.current.refresh_at() and self._ca.bundle is self._issuer:
                return None
            self._issuer = self._ca.bundle
            self.current = issue_serving_certificate(self._ca, self._names, self._ttl)
            log.info(
                "istiod serving certificate rotated", extra=kv(expires=self.current.not_after.isoformat())
            )
            return self._config()

    def credentials(self) -> grpc.ServerCredentials:
        # grpc-stubs type the fetcher as never returning None, but None means "keep the current one".
        return grpc.dynamic_ssl_server_credentials(self._config(), self._fetch)  # type: ignore[arg-type]
