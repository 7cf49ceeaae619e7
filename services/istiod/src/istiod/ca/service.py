"""``istio.v1.auth.IstioCertificateService/CreateCertificate`` as a grpc.aio servicer (wire-contracts.md §4).

Per request: authenticate the caller (bearer JWT + clusterid) -> decide the identity (the caller's own, or the
``ImpersonatedIdentity`` the node authorizer allows) -> validate the CSR and TTL -> sign -> answer with the
chain leaf first, root bundle last. Each refusal becomes the gRPC status its error class carries.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import grpc
from istiod.ca.authority import CertificateAuthority
from istiod.ca.errors import CaError, ImpersonationDenied
from istiod.ca.metrics import CaMetrics
from istiod.ca.nodeauth import NodeAuthorizer
from istiod.security.authn import AuthenticationError, Authenticator, Caller
from meshkit.identity.spiffe import Identity
from meshkit.logs import kv
from meshproto.istio.v1.auth import ca_pb2, ca_pb2_grpc

if TYPE_CHECKING:
    from meshproto.istio.v1.auth.ca_pb2_grpc import _ServicerContext

__all__ = ["IMPERSONATED_IDENTITY", "CertificateServicer"]

log = logging.getLogger("ca.server")

IMPERSONATED_IDENTITY = "ImpersonatedIdentity"
CERT_SIGNER = "CertSigner"


class CertificateServicer(ca_pb2_grpc.IstioCertificateServiceServicer):
    """Add to a grpc.aio server with ``ca_pb2_grpc.add_IstioCertificateServiceServicer_to_server``."""

    def __init__(
        self,
        ca: CertificateAuthority,
        authenticator: Authenticator,
        node_authorizer: NodeAuthorizer | None = None,
        metrics: CaMetrics | None = None,
    ) -> None:
        self.ca = ca
        self._authn = authenticator
        self._nodes = node_authorizer
        self._metrics = metrics

    async def CreateCertificate(
        self, request: ca_pb2.IstioCertificateRequest, context: _ServicerContext
    ) -> ca_pb2.IstioCertificateResponse:
        if self._metrics:
            self._metrics.csr.inc()
        try:
            caller = await self._authn.authenticate(context.invocation_metadata() or ())
        except AuthenticationError as exc:
            if self._metrics:
                self._metrics.authn_failures.inc()
            log.info("CSR refused", extra=kv(peer=context.peer(), reason=exc.message))
            await context.abort(exc.code, exc.message)
            raise  # unreachable: abort raises
        try:
            identity = await self._identity(caller, request)
            issued = self.ca.sign(request.csr, uris=[identity.uri], ttl_s=request.validity_duration)
        except CaError as exc:
            self._count_error(exc)
            log.info("CSR refused", extra=kv(caller=caller.identity, reason=exc.message))
            await context.abort(exc.code, exc.message)
            raise
        if self._metrics:
            self._metrics.issued.inc()
        log.debug("certificate issued", extra=kv(caller=caller.identity, identity=identity))
        return ca_pb2.IstioCertificateResponse(cert_chain=issued.chain)

    async def _identity(self, caller: Caller, request: ca_pb2.IstioCertificateRequest) -> Identity:
        fields = request.metadata.fields if request.HasField("metadata") else {}
        impersonated = fields[IMPERSONATED_IDENTITY].string_value if IMPERSONATED_IDENTITY in fields else ""
        if not impersonated:
            return caller.identity
        if self._nodes is None:
            raise ImpersonationDenied("impersonation is disabled: no node authorizer is configured")
        return await self._nodes.authorize(caller, impersonated)

    def _count_error(self, exc: CaError) -> None:
        if not self._metrics:
            return
        if exc.code is grpc.StatusCode.INVALID_ARGUMENT:
            self._metrics.csr_parsing_errors.inc()
        elif exc.code is grpc.StatusCode.UNAUTHENTICATED:
            self._metrics.authn_failures.inc()
        else:
            self._metrics.sign_errors.labels(error_type=type(exc).__name__).inc()
