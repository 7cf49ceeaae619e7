"""Client of istiod's ``IstioCertificateService/CreateCertificate`` (wire-contracts.md §4.1-4.2).

One grpc.aio channel over TLS: the server cert is verified against the mesh root from ``CA_ROOT_CA``; no
client cert. Each call re-reads the bearer token file and the root file, so a rotated projected token is
picked up at once and a changed root rebuilds the channel (ztunnel hot-reloads it too). In shared (node) mode
every request carries ``ImpersonatedIdentity``. The response is validated before it is handed out (>= 2
elements, leaf SAN == the identity asked for). :class:`CaClient` satisfies :class:`CertificateFetcher`, which
is what the certificate manager consumes.

grpc is imported when a :class:`CaClient` first connects, not with this module: ztunnel imports the settings
and errors from here but calls istiod with its own small client, and grpcio costs it over 10 MB of RSS.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from google.protobuf import struct_pb2
from meshproto.istio.v1.auth import ca_pb2

from meshkit.identity.certs import WorkloadCertificate
from meshkit.identity.csr import KeyType, create_csr
from meshkit.identity.pem import ChainError, certificate_from_response, load_certificates
from meshkit.identity.spiffe import Identity
from meshkit.logs import kv
from meshkit.settings import env, parse_duration

if TYPE_CHECKING:
    import grpc
    from meshproto.istio.v1.auth.ca_pb2_grpc import IstioCertificateServiceAsyncStub

__all__ = [
    "CaClient",
    "CaClientConfig",
    "CaClientError",
    "CaClientSettings",
    "CertificateFetcher",
    "extra_headers_from_env",
    "token_source",
]

log = logging.getLogger("identity.caclient")

DEFAULT_ADDRESS = "https://istiod.istio-system.svc:15012"
DEFAULT_ROOT = "/var/run/secrets/istio/root-cert.pem"
DEFAULT_TOKEN = "/var/run/secrets/tokens/istio-token"


class CertificateFetcher(Protocol):
    """Anything that can obtain a fresh certificate for an identity (the CA client, or a fake in tests)."""

    async def fetch(self, identity: Identity) -> WorkloadCertificate: ...


class CaClientError(Exception):
    """A CreateCertificate call failed; ``code`` is the gRPC status when the server answered."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class CaClientSettings:
    """The CA client's environment, named as ztunnel names it (wire-contracts.md §3.1, §4.1)."""

    address: str = env("CA_ADDRESS", DEFAULT_ADDRESS, "istiod CA address; https:// is added when missing.")
    root_ca: str = env("CA_ROOT_CA", DEFAULT_ROOT, "PEM file (or inline PEM) of the root verifying istiod.")
    alt_hostname: str = env("ALT_CA_HOSTNAME", "", "Server name to verify instead of the address host.")
    auth_token: str = env("AUTH_TOKEN", DEFAULT_TOKEN, "Token file (re-read per call) or a literal token.")
    cluster_id: str = env("ISTIO_META_CLUSTER_ID", "Kubernetes", "Sent as the clusterid header.")
    secret_ttl: float = env("SECRET_TTL", 86400.0, "Requested certificate lifetime.", parse=parse_duration)
    proxy_mode: str = env(
        "PROXY_MODE", "shared", "shared: impersonate each workload; dedicated: own identity."
    )


def extra_headers_from_env(
    environ: Mapping[str, str] | None = None, prefix: str = "CA_HEADER_"
) -> dict[str, str]:
    """``CA_HEADER_<NAME>=<value>`` variables as extra request headers (gRPC wants lowercase names)."""
    source = os.environ if environ is None else environ
    return {k[len(prefix) :].lower(): v for k, v in source.items() if k.startswith(prefix) and k != prefix}


def token_source(value: str | None) -> Callable[[], str | None]:
    """ztunnel's AUTH_TOKEN rule: a path if that file exists (re-read per call), else the literal token."""
    if not value:
        return lambda: None
    path = Path(value)

    def read() -> str | None:
        try:
            return path.read_text().strip() or None
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CaClientError(f"cannot read token file {path}: {exc}") from None

    return read if path.exists() or value.startswith("/") else (lambda: value)


def _root_source(value: str | bytes) -> Callable[[], bytes]:
    """A root PEM given inline, or a path re-read per call (CA_ROOT_CA semantics)."""
    if isinstance(value, bytes):
        return lambda: value
    if "-----BEGIN" in value:
        return value.encode
    path = Path(value)
    return path.read_bytes


def _target(address: str) -> str:
    """The gRPC target ``host:port`` from ``https://host:port`` or ``host:port``."""
    bare = address.split("://", 1)[1] if "://" in address else address
    return bare.rstrip("/")


@dataclass(frozen=True, slots=True)
class CaClientConfig:
    """Everything the client needs; build it from :class:`CaClientSettings` with :meth:`from_settings`."""

    address: str
    root_ca: str | bytes
    token: Callable[[], str | None] = field(default=lambda: None)
    cluster_id: str = "Kubernetes"
    server_name: str = ""
    extra_headers: Mapping[str, str] = field(default_factory=dict)
    impersonate: bool = True
    ttl_seconds: int = 86400
    key_type: KeyType = KeyType.EC_P256
    timeout_s: float = 10.0

    @classmethod
    def from_settings(
        cls, s: CaClientSettings, extra_headers: Mapping[str, str] | None = None
    ) -> CaClientConfig:
        return cls(
            address=s.address,
            root_ca=s.root_ca,
            token=token_source(s.auth_token),
            cluster_id=s.cluster_id,
            server_name=s.alt_hostname,
            extra_headers=dict(extra_headers_from_env() if extra_headers is None else extra_headers),
            impersonate=s.proxy_mode != "dedicated",
            ttl_seconds=int(s.secret_ttl),
        )


class CaClient:
    """Fetches workload certificates from istiod. Safe to share; calls may run concurrently."""

    def __init__(self, config: CaClientConfig) -> None:
        self._config = config
        self._target = _target(config.address)
        self._roots = _root_source(config.root_ca)
        inline = isinstance(config.root_ca, bytes) or "-----BEGIN" in config.root_ca
        self._root_name = "(inline PEM)" if inline else repr(config.root_ca)
        self._channel: grpc.aio.Channel | None = None
        self._channel_roots: bytes | None = None
        self._stub: IstioCertificateServiceAsyncStub | None = None
        self._lock = asyncio.Lock()

    async def _stub_for_current_roots(self) -> IstioCertificateServiceAsyncStub:
        import grpc  # on first use (module docstring)
        from meshproto.istio.v1.auth import ca_pb2_grpc

        try:
            roots = self._roots()
            load_certificates(roots)
        except OSError as exc:
            raise CaClientError(f"cannot read CA root {self._root_name}: {exc}") from None
        except ChainError as exc:
            # Say so plainly rather than fail the handshake opaquely; and never come near gRPC's "no roots
            # given = trust the system roots" default.
            raise CaClientError(f"CA root {self._root_name} holds no usable certificate: {exc}") from None
        async with self._lock:
            if self._stub is None or roots != self._channel_roots:
                if self._channel is not None:
                    log.info("CA root changed; reconnecting", extra=kv(target=self._target))
                    await self._channel.close(grace=None)
                options: list[tuple[str, str | int]] = []
                if self._config.server_name:
                    options.append(("grpc.ssl_target_name_override", self._config.server_name))
                creds = grpc.ssl_channel_credentials(root_certificates=roots)
                self._channel = grpc.aio.secure_channel(self._target, creds, options=options)
                self._channel_roots = roots
                self._stub = ca_pb2_grpc.IstioCertificateServiceStub(self._channel)
            return self._stub

    def _metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        md: list[tuple[str, str | bytes]] = []
        token = self._config.token()
        if token:
            md.append(("authorization", f"Bearer {token}"))
            md.append(("clusterid", self._config.cluster_id))
        md.extend(self._config.extra_headers.items())
        return tuple(md)

    def _request(self, identity: Identity, csr_pem: bytes) -> ca_pb2.IstioCertificateRequest:
        request = ca_pb2.IstioCertificateRequest(
            csr=csr_pem.decode(), validity_duration=self._config.ttl_seconds
        )
        if self._config.impersonate:
            meta = struct_pb2.Struct()
            meta.update({"ImpersonatedIdentity": identity.uri})
            request.metadata.CopyFrom(meta)
        return request

    async def fetch(self, identity: Identity) -> WorkloadCertificate:
        """Create a CSR for ``identity``, have istiod sign it, validate and return the result."""
        import grpc  # loaded by now: _stub_for_current_roots imported it

        bundle = create_csr(identity, self._config.key_type)
        stub = await self._stub_for_current_roots()
        request = self._request(identity, bundle.csr_pem)
        try:
            response = await stub.CreateCertificate(
                request, metadata=self._metadata(), timeout=self._config.timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            raise CaClientError(
                f"CreateCertificate for {identity} failed: {exc.code().name}: {exc.details()}", exc.code()
            ) from None
        return self._validate(identity, list(response.cert_chain), bundle.private_key_pem)

    @staticmethod
    def _validate(identity: Identity, chain: Sequence[str], key_pem: bytes) -> WorkloadCertificate:
        try:
            return certificate_from_response(identity, chain, key_pem)
        except ChainError as exc:
            raise CaClientError(f"invalid CreateCertificate response for {identity}: {exc}") from None

    async def close(self) -> None:
        async with self._lock:
            if self._channel is not None:
                await self._channel.close(grace=None)
            self._channel = self._stub = None
