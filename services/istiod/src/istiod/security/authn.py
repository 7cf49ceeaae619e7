"""Authenticate gRPC callers by their Kubernetes ServiceAccount JWT (wire-contracts.md §4.3).

The token comes from the ``authorization: Bearer <jwt>`` metadata, the cluster from ``clusterid`` (empty means
the local cluster). Before asking the API server, the token's own claims are read (not trusted) so the
common mistakes get a precise message: expired, wrong audience. The API server's TokenReview is the authority;
a positive answer is cached for a short TTL (never past the token's expiry). Every failure is one
:class:`AuthenticationError` carrying gRPC ``UNAUTHENTICATED`` and a message that says what was wrong.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import grpc
from meshkit.identity.spiffe import DEFAULT_TRUST_DOMAIN, Identity
from meshkit.logs import kv

__all__ = [
    "AUTHN_FAILURE",
    "AuthenticationError",
    "Authenticator",
    "Caller",
    "KubeJwtAuthenticator",
    "KubeTokenReviewer",
    "TokenReviewResult",
    "TokenReviewer",
    "bearer_token",
]

log = logging.getLogger("security.authn")

#: Upstream's message; ours appends the reason after a colon.
AUTHN_FAILURE = "request authenticate failure"
_POD_NAME = "authentication.kubernetes.io/pod-name"
_POD_UID = "authentication.kubernetes.io/pod-uid"
_SA_PREFIX = "system:serviceaccount:"

Metadata = Iterable[tuple[str, str | bytes]]


class AuthenticationError(Exception):
    """The caller could not be authenticated. ``code`` and ``message`` go on the wire as the gRPC status."""

    def __init__(self, reason: str, code: grpc.StatusCode = grpc.StatusCode.UNAUTHENTICATED) -> None:
        self.code = code
        self.message = f"{AUTHN_FAILURE}: {reason}"
        super().__init__(self.message)


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller: its mesh identity and what its token says about where it runs."""

    identity: Identity
    service_account_namespace: str
    service_account_name: str
    pod_name: str | None
    pod_uid: str | None
    cluster_id: str

    @property
    def service_account(self) -> str:
        """``<namespace>/<name>``: the form CA_TRUSTED_NODE_ACCOUNTS lists."""
        return f"{self.service_account_namespace}/{self.service_account_name}"


class Authenticator(Protocol):
    async def authenticate(self, metadata: Metadata) -> Caller: ...


@dataclass(frozen=True, slots=True)
class TokenReviewResult:
    """The parts of a TokenReview status we use."""

    authenticated: bool
    username: str = ""
    audiences: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    error: str = ""


class TokenReviewer(Protocol):
    async def review(self, token: str, audiences: Sequence[str]) -> TokenReviewResult: ...


class KubeTokenReviewer:
    """TokenReview through the ``kubernetes`` client; the blocking call runs in a worker thread."""

    def __init__(self, api_client: Any, timeout_s: float = 10.0) -> None:
        from kubernetes import client

        self._api = client.AuthenticationV1Api(api_client)
        self._client = client
        self._timeout_s = timeout_s

    def _review_blocking(self, token: str, audiences: Sequence[str]) -> TokenReviewResult:
        c = self._client
        body = c.V1TokenReview(spec=c.V1TokenReviewSpec(token=token, audiences=list(audiences)))
        status = self._api.create_token_review(body, _request_timeout=self._timeout_s).status
        if status is None:
            return TokenReviewResult(
                authenticated=False, error="the API server returned no TokenReview status"
            )
        user = status.user
        extra = {k: tuple(v) for k, v in ((user.extra if user else None) or {}).items()}
        return TokenReviewResult(
            authenticated=bool(status.authenticated),
            username=(user.username if user else "") or "",
            audiences=tuple(status.audiences or ()),
            extra=extra,
            error=status.error or "",
        )

    async def review(self, token: str, audiences: Sequence[str]) -> TokenReviewResult:
        return await asyncio.to_thread(self._review_blocking, token, audiences)


def bearer_token(metadata: Metadata) -> tuple[str, str]:
    """(token, cluster id) from gRPC metadata; raises :class:`AuthenticationError` without a bearer token."""
    values = {k.lower(): v.decode() if isinstance(v, bytes) else v for k, v in metadata}
    header = values.get("authorization", "")
    if not header:
        raise AuthenticationError("no bearer token: the 'authorization' metadata is missing")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError("the 'authorization' metadata is not of the form 'Bearer <token>'")
    return token.strip(), values.get("clusterid", "")


def unverified_claims(token: str) -> dict[str, Any] | None:
    """The JWT payload, NOT verified: only used to explain a rejection early. None if not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def _audiences(claims: Mapping[str, Any]) -> list[str]:
    aud = claims.get("aud", [])
    return [aud] if isinstance(aud, str) else [str(a) for a in aud]


class KubeJwtAuthenticator:
    """Upstream's KubeJWTAuthenticator with explicit failure reasons (see the module docstring).

    ``reviewer`` is a :class:`TokenReviewer`, or a ``kubernetes`` ApiClient (wrapped in
    :class:`KubeTokenReviewer`). ``remote_reviewers`` maps other cluster ids to their TokenReviewers
    (multi-cluster); any other non-empty ``clusterid`` is rejected as unknown.
    """

    def __init__(
        self,
        reviewer: TokenReviewer | Any,
        *,
        audiences: Sequence[str] = ("istio-ca",),
        cluster_id: str = "Kubernetes",
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        remote_reviewers: Mapping[str, TokenReviewer] | None = None,
        cache_ttl_s: float = 60.0,
        cache_size: int = 4096,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not hasattr(reviewer, "review"):
            reviewer = KubeTokenReviewer(reviewer)
        self._reviewers = {cluster_id: reviewer, **(remote_reviewers or {})}
        self._local = cluster_id
        self._audiences = tuple(audiences)
        self._trust_domain = trust_domain
        self._ttl = cache_ttl_s
        self._size = cache_size
        self._now = wall_clock
        self._cache: OrderedDict[tuple[str, str], tuple[float, Caller]] = OrderedDict()

    async def authenticate(self, metadata: Metadata) -> Caller:
        token, cluster = bearer_token(metadata)
        cluster = cluster or self._local
        reviewer = self._reviewers.get(cluster)
        if reviewer is None:
            known = ", ".join(sorted(self._reviewers))
            raise AuthenticationError(
                f"unknown cluster {cluster!r} in the 'clusterid' metadata (known: {known})"
            )
        cached = self._cached(cluster, token)
        if cached is not None:
            return cached
        claims = unverified_claims(token)
        if claims is not None:
            self._precheck(claims)
        caller = self._caller(await self._review(reviewer, token), cluster)
        self._remember(cluster, token, caller, claims)
        return caller

    def _precheck(self, claims: Mapping[str, Any]) -> None:
        exp = claims.get("exp")
        if isinstance(exp, int | float) and exp <= self._now():
            when = datetime.fromtimestamp(exp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            raise AuthenticationError(f"the token expired at {when}")
        if "aud" in claims and not set(_audiences(claims)) & set(self._audiences):
            raise AuthenticationError(
                f"bad token audience {_audiences(claims)}: istiod accepts {list(self._audiences)}"
            )

    async def _review(self, reviewer: TokenReviewer, token: str) -> TokenReviewResult:
        try:
            result = await reviewer.review(token, self._audiences)
        except Exception as exc:
            log.warning("token review call failed", extra=kv(error=str(exc)))
            raise AuthenticationError(f"token review against the API server failed: {exc}") from None
        if not result.authenticated:
            reason = result.error or "not authenticated"
            if "expired" in reason:
                raise AuthenticationError(f"the token is expired (API server: {reason})")
            if "audience" in reason:
                raise AuthenticationError(
                    f"bad token audience: istiod accepts {list(self._audiences)} (API server: {reason})"
                )
            raise AuthenticationError(f"the API server rejected the token: {reason}")
        if result.error:  # as upstream: an error in the review voids a positive answer
            raise AuthenticationError(f"the API server rejected the token: {result.error}")
        # The TokenReview API asks clients that set spec.audiences to check status.audiences: an empty list
        # means "valid for the API server's own audience", e.g. a pod's default token, not one for istio-ca.
        if not set(result.audiences) & set(self._audiences):
            got = list(result.audiences) or "none confirmed by the API server"
            raise AuthenticationError(f"bad token audience {got}: istiod accepts {list(self._audiences)}")
        return result

    def _caller(self, result: TokenReviewResult, cluster: str) -> Caller:
        parts = result.username.split(":")
        if not result.username.startswith(_SA_PREFIX) or len(parts) != 4 or not all(parts):
            raise AuthenticationError(f"not a service account token (user {result.username!r})")
        namespace, name = parts[2], parts[3]
        return Caller(
            identity=Identity(self._trust_domain, namespace, name),
            service_account_namespace=namespace,
            service_account_name=name,
            pod_name=next(iter(result.extra.get(_POD_NAME, ())), None),
            pod_uid=next(iter(result.extra.get(_POD_UID, ())), None),
            cluster_id=cluster,
        )

    def _cached(self, cluster: str, token: str) -> Caller | None:
        hit = self._cache.get((cluster, token))
        if hit is None:
            return None
        if hit[0] <= self._now():
            del self._cache[(cluster, token)]
            return None
        return hit[1]

    def _remember(self, cluster: str, token: str, caller: Caller, claims: Mapping[str, Any] | None) -> None:
        until = self._now() + self._ttl
        exp = (claims or {}).get("exp")
        if isinstance(exp, int | float):
            until = min(until, float(exp))
        self._cache[(cluster, token)] = (until, caller)
        while len(self._cache) > self._size:
            self._cache.popitem(last=False)
