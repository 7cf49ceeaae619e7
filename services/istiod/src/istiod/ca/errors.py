"""The CA's error classes. Each carries the gRPC status it becomes on the wire (STYLE.md practice 8)."""

from __future__ import annotations

import grpc

__all__ = ["CaError", "CsrError", "ImpersonationDenied", "RootOfTrustError", "SigningError", "TtlError"]

#: Upstream's message for every impersonation failure; ours appends which check failed.
IMPERSONATION_FAILURE = "request impersonation authentication failure"


class CaError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class CsrError(CaError):
    """The CSR is unreadable, badly signed, or asks for names the caller may not have."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class TtlError(CaError):
    """The requested lifetime is above MAX_WORKLOAD_CERT_TTL."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class SigningError(CaError):
    code = grpc.StatusCode.INTERNAL


class ImpersonationDenied(CaError):
    """A node proxy asked for an identity it may not have (wire-contracts.md §4.3)."""

    code = grpc.StatusCode.UNAUTHENTICATED

    def __init__(self, reason: str) -> None:
        super().__init__(f"{IMPERSONATION_FAILURE}: {reason}")
        self.reason = reason


class RootOfTrustError(CaError):
    """The CA key material (cacerts / istio-ca-secret) is missing pieces or inconsistent."""
