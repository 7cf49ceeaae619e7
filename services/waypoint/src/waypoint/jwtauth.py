"""RequestAuthentication at the waypoint: find a JWT, validate it against the issuer's JWKS (pyjwt).

Semantics (upstream's Envoy jwt_authn as Istio configures it):

* No token in any configured location: the request passes unauthenticated (no request principal); an
  AuthorizationPolicy with ``requestPrincipals`` is what rejects it, with 403.
* A token that is present but invalid (malformed, bad signature, expired, not yet valid, unknown issuer,
  wrong audience) is rejected with **401** and a short reason body (``Jwt verification fails``, ...).
* A valid token yields the request principal ``<iss>/<sub>`` and its claims for policies.

Token locations: the provider's ``from_headers`` (``Authorization`` strips a ``Bearer`` prefix), its
``from_params``; by default ``Authorization: Bearer`` and the ``access_token`` query parameter.
JWKS: inline (``jwks``) or fetched from ``jwks_uri`` by :class:`JwksCache` (the shell refreshes it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import jwt
from jwt import PyJWKSet
from meshproto.ambient.waypoint.v1 import waypoint_pb2 as pb

__all__ = ["JwtFailure", "JwtProvider", "JwtResult", "JwtRules", "compile_rules"]

log = logging.getLogger("waypoint.jwt")
ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA"]


class JwtFailure(Exception):
    """A present token failed validation: answer 401 with ``str(self)`` as the body."""


@dataclass(slots=True)
class JwtProvider:
    issuer: str
    audiences: tuple[str, ...]
    jwks_uri: str
    from_headers: tuple[str, ...]
    from_params: tuple[str, ...]
    forward_original_token: bool
    output_payload_to_header: str
    origin: str
    keys: PyJWKSet | None = None

    def set_jwks(self, text: str) -> None:
        """Install a JWKS document (inline or fetched); a bad document leaves the old keys in place."""
        try:
            self.keys = PyJWKSet.from_dict(json.loads(text))
        except (ValueError, jwt.PyJWTError) as exc:
            log.warning("bad JWKS", extra={"kv": {"issuer": self.issuer, "error": str(exc)}})

    def token_from(self, headers: Mapping[str, str], query: str) -> tuple[str, str] | None:
        """(location, token) of the first token found in this provider's locations."""
        names = self.from_headers or ("authorization",)
        for name in names:
            value = headers.get(name.lower())
            if value:
                if name.lower() == "authorization":
                    scheme, _, rest = value.partition(" ")
                    if scheme.lower() != "bearer" or not rest.strip():
                        continue
                    value = rest.strip()
                return name.lower(), value
        params = self.from_params or (() if self.from_headers else ("access_token",))
        if params and query:
            for key, value in parse_qsl(query, keep_blank_values=False):
                if key in params:
                    return f"?{key}", value
        return None


@dataclass(frozen=True, slots=True)
class JwtResult:
    principal: str | None = None
    claims: Mapping[str, Any] = field(default_factory=dict)
    provider: JwtProvider | None = None
    location: str = ""


@dataclass(frozen=True, slots=True)
class JwtRules:
    """The providers that apply to one request (Gateway-level plus Service-level)."""

    providers: tuple[JwtProvider, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.providers)

    def authenticate(self, headers: Mapping[str, str], query: str, *, now: float | None = None) -> JwtResult:
        """Validate the token if there is one; raise :class:`JwtFailure` for a bad one."""
        found: tuple[str, str] | None = None
        for candidate in self.providers:
            found = candidate.token_from(headers, query)
            if found:
                break
        if found is None:
            return JwtResult()
        location, token = found
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise JwtFailure("Jwt is not in the form of Header.Payload.Signature") from None
        issuer = unverified.get("iss")
        provider = next((p for p in self.providers if p.issuer == issuer), None)
        if provider is None:
            raise JwtFailure("Jwt issuer is not configured")
        claims = _verify(provider, token, now)
        principal = f"{claims.get('iss', '')}/{claims.get('sub', '')}"
        return JwtResult(principal, claims, provider, location)


def _verify(provider: JwtProvider, token: str, now: float | None) -> dict[str, Any]:
    if provider.keys is None:
        raise JwtFailure("Jwks remote fetch is failed")
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.PyJWTError:
        raise JwtFailure("Jwt is not in the form of Header.Payload.Signature") from None
    candidates = [k for k in provider.keys.keys if kid is None or k.key_id == kid] or list(provider.keys.keys)
    options: dict[str, Any] = {"verify_aud": bool(provider.audiences), "require": ["iss"]}
    last: Exception | None = None
    for key in candidates:
        try:
            return dict(
                jwt.decode(
                    token,
                    key=key.key,
                    algorithms=ALGORITHMS,
                    audience=list(provider.audiences) or None,
                    issuer=provider.issuer,
                    options=options,  # type: ignore[arg-type]
                    leeway=60 if now is None else 0,
                )
            )
        except jwt.ExpiredSignatureError:
            raise JwtFailure("Jwt is expired") from None
        except jwt.ImmatureSignatureError:
            raise JwtFailure("Jwt not yet valid") from None
        except jwt.InvalidAudienceError:
            raise JwtFailure("Audiences in Jwt are not allowed") from None
        except jwt.MissingRequiredClaimError as exc:
            if exc.claim == "aud":  # audiences configured and the token names none: Envoy's audience error
                raise JwtFailure("Audiences in Jwt are not allowed") from None
            last = exc
        except jwt.PyJWTError as exc:
            last = exc
    raise JwtFailure("Jwt verification fails") from last


def compile_provider(msg: pb.JwtProvider) -> JwtProvider:
    provider = JwtProvider(
        issuer=msg.issuer,
        audiences=tuple(msg.audiences),
        jwks_uri=msg.jwks_uri,
        from_headers=tuple(h.lower() for h in msg.from_headers),
        from_params=tuple(msg.from_params),
        forward_original_token=msg.forward_original_token,
        output_payload_to_header=msg.output_payload_to_header,
        origin=msg.origin,
    )
    if msg.jwks:
        provider.set_jwks(msg.jwks)
    return provider


def compile_rules(msgs: Sequence[pb.JwtRules]) -> JwtRules:
    return JwtRules(tuple(compile_provider(p) for m in msgs for p in m.providers))
