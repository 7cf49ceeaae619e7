"""RequestAuthentication: token discovery, validation, 401 reasons, principal and claims."""

from __future__ import annotations

import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from meshproto.ambient.waypoint.v1 import waypoint_pb2 as pb
from waypoint.jwtauth import JwtFailure, compile_rules

ISS = "testing@secure.istio.io"


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwks(key: rsa.RSAPrivateKey, kid: str = "k1") -> str:
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid=kid, alg="RS256", use="sig")
    return json.dumps({"keys": [jwk]})


def _token(key: rsa.RSAPrivateKey, **claims: object) -> str:
    body = {"iss": ISS, "sub": "sub-1", "exp": int(time.time()) + 600, **claims}
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": "k1"})


def _rules(key: rsa.RSAPrivateKey, **kw: object):  # type: ignore[no-untyped-def]
    return compile_rules([pb.JwtRules(providers=[pb.JwtProvider(issuer=ISS, jwks=_jwks(key), **kw)])])  # type: ignore[arg-type]


def test_valid_token_gives_principal_and_claims(key: rsa.RSAPrivateKey) -> None:
    res = _rules(key).authenticate({"authorization": f"Bearer {_token(key, groups=['g1'])}"}, "")
    assert res.principal == f"{ISS}/sub-1"
    assert res.claims["groups"] == ["g1"]


def test_no_token_passes_unauthenticated(key: rsa.RSAPrivateKey) -> None:
    assert _rules(key).authenticate({}, "").principal is None


def test_query_param_default_location(key: rsa.RSAPrivateKey) -> None:
    assert _rules(key).authenticate({}, f"access_token={_token(key)}").principal == f"{ISS}/sub-1"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda k: _token(k, exp=int(time.time()) - 3600), "expired"),
        (
            lambda k: _token(rsa.generate_private_key(public_exponent=65537, key_size=2048)),
            "verification fails",
        ),
        (lambda k: _token(k, iss="someone-else"), "issuer is not configured"),
        (lambda _k: "not.a.jwt", "not in the form"),
    ],
)
def test_bad_tokens_fail_with_reason(key: rsa.RSAPrivateKey, make, reason: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(JwtFailure, match=reason):
        _rules(key).authenticate({"authorization": f"Bearer {make(key)}"}, "")


def test_audience_and_custom_header(key: rsa.RSAPrivateKey) -> None:
    rules = _rules(key, audiences=["bookinfo"], from_headers=["x-jwt"])
    assert rules.authenticate({"x-jwt": _token(key, aud="bookinfo")}, "").principal
    with pytest.raises(JwtFailure, match="Audiences"):
        rules.authenticate({"x-jwt": _token(key, aud="other")}, "")
    # A custom header location replaces the default Authorization header.
    assert rules.authenticate({"authorization": f"Bearer {_token(key, aud='other')}"}, "").principal is None


def test_missing_jwks_fails_closed(key: rsa.RSAPrivateKey) -> None:
    rules = compile_rules([pb.JwtRules(providers=[pb.JwtProvider(issuer=ISS, jwks_uri="http://jwks/keys")])])
    with pytest.raises(JwtFailure, match="Jwks"):
        rules.authenticate({"authorization": f"Bearer {_token(key)}"}, "")
