"""RequestAuthentication: token discovery, validation, 401 reasons, principal and claims."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
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


def _forge(header: dict[str, object], claims: dict[str, object], sig: bytes = b"") -> str:
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return ".".join([b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), b64(sig)])


def _claims() -> dict[str, object]:
    return {"iss": ISS, "sub": "attacker", "exp": int(time.time()) + 600}


def test_alg_none_and_hmac_with_the_rsa_public_key_are_refused(key: rsa.RSAPrivateKey) -> None:
    rules = _rules(key)
    unsigned = _forge({"alg": "none", "typ": "JWT", "kid": "k1"}, _claims())
    # alg confusion: HS256 "signed" with the RSA public key (PEM and JWK forms) as the HMAC secret
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing = _forge({"alg": "HS256", "typ": "JWT", "kid": "k1"}, _claims()).rsplit(".", 1)[0]
    macs = [
        hmac.new(secret, signing.encode(), hashlib.sha256).digest() for secret in (pem, _jwks(key).encode())
    ]
    forged = [
        unsigned,
        *(f"{signing}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}" for mac in macs),
    ]
    for token in forged:
        with pytest.raises(JwtFailure, match="verification fails"):
            rules.authenticate({"authorization": f"Bearer {token}"}, "")


def test_tampered_payload_and_not_yet_valid_are_refused(key: rsa.RSAPrivateKey) -> None:
    rules = _rules(key)
    head, _payload, sig = _token(key).split(".")
    evil = base64.urlsafe_b64encode(json.dumps(_claims()).encode()).rstrip(b"=").decode()
    with pytest.raises(JwtFailure, match="verification fails"):
        rules.authenticate({"authorization": f"Bearer {head}.{evil}.{sig}"}, "")
    with pytest.raises(JwtFailure, match="not yet valid"):
        rules.authenticate({"authorization": f"Bearer {_token(key, nbf=int(time.time()) + 3600)}"}, "")
    with pytest.raises(JwtFailure, match="Audiences"):  # audiences configured: a token without aud fails
        _rules(key, audiences=["bookinfo"]).authenticate({"authorization": f"Bearer {_token(key)}"}, "")
