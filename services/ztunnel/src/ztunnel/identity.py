"""Identity glue: the CA client ztunnel uses to get workload certificates (wire-contracts.md §4).

:class:`LiteCaClient` makes the same ``CreateCertificate`` call as ``meshkit.identity.caclient.CaClient``
(CSR from ``meshkit.identity.csr``, ``ImpersonatedIdentity`` metadata in shared mode, the response checked by
``certificate_from_response``) but over :mod:`ztunnel.grpclite` instead of a grpcio channel, to stay inside
ztunnel's memory budget. Settings are ``meshkit``'s ``CaClientSettings`` (``CA_ADDRESS``, ``CA_ROOT_CA``,
``AUTH_TOKEN``, ``SECRET_TTL``, ``PROXY_MODE``, ...).

TLS follows ``CA_ADDRESS``'s scheme (:func:`ztunnel.grpclite.parse_address`): https (the default) needs a
usable ``CA_ROOT_CA`` and fails with a clear :class:`~ztunnel.grpclite.ConfigError` without one, at
construction when it is empty; only an explicit ``http://`` address is plaintext, and then no token is sent.
"""

from __future__ import annotations

import asyncio
import logging

from google.protobuf import struct_pb2
from meshkit.identity.caclient import CaClientError, CaClientSettings, token_source
from meshkit.identity.certs import WorkloadCertificate
from meshkit.identity.csr import create_csr
from meshkit.identity.pem import ChainError, certificate_from_response
from meshkit.identity.spiffe import Identity
from meshproto.istio.v1.auth import ca_pb2

from ztunnel.grpclite import Channel, ConfigError, GrpcError, parse_address, read_root, require_root

__all__ = ["CREATE_CERTIFICATE", "LiteCaClient"]

log = logging.getLogger("identity")

CREATE_CERTIFICATE = "/istio.v1.auth.IstioCertificateService/CreateCertificate"


class LiteCaClient:
    """``CertificateFetcher`` for the certificate manager; one shared HTTP/2 connection to the CA."""

    def __init__(self, settings: CaClientSettings, timeout_s: float = 10.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self._token = token_source(settings.auth_token)
        _, self.tls = parse_address(settings.address)
        if self.tls:  # fail at start-up, not at the first certificate
            require_root(settings.root_ca, "CA_ROOT_CA", settings.address)
        self._channel: Channel | None = None
        self._lock = asyncio.Lock()

    async def _connect(self) -> Channel:
        async with self._lock:
            if self._channel is None or self._channel.error is not None:
                s = self.settings
                # re-read on every connect: a rotated root is picked up
                root = read_root(s.root_ca, "CA_ROOT_CA", s.address) if self.tls else None
                self._channel = await Channel.open(s.address, root, s.alt_hostname, self.timeout_s)
            return self._channel

    def _metadata(self) -> list[tuple[str, str]]:
        token = self._token() if self.tls else None  # never over plaintext (grpclite drops it too)
        if not token:
            return []
        return [("authorization", f"Bearer {token}"), ("clusterid", self.settings.cluster_id)]

    def _request(self, identity: Identity, csr_pem: bytes) -> ca_pb2.IstioCertificateRequest:
        request = ca_pb2.IstioCertificateRequest(
            csr=csr_pem.decode(), validity_duration=int(self.settings.secret_ttl)
        )
        if self.settings.proxy_mode != "dedicated":
            meta = struct_pb2.Struct()
            meta.update({"ImpersonatedIdentity": identity.uri})
            request.metadata.CopyFrom(meta)
        return request

    async def fetch(self, identity: Identity) -> WorkloadCertificate:
        bundle = create_csr(identity)
        request = self._request(identity, bundle.csr_pem)
        try:
            channel = await self._connect()
            reply = await channel.unary(
                CREATE_CERTIFICATE, request.SerializeToString(), self._metadata(), self.timeout_s
            )
        except (GrpcError, ConfigError, OSError, TimeoutError) as exc:
            raise CaClientError(f"CreateCertificate for {identity} failed: {exc}") from None
        response = ca_pb2.IstioCertificateResponse.FromString(reply)
        try:
            return certificate_from_response(identity, list(response.cert_chain), bundle.private_key_pem)
        except ChainError as exc:
            raise CaClientError(f"invalid CreateCertificate response for {identity}: {exc}") from None

    async def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None
