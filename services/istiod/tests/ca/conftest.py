"""Fixtures for the CA tests: CAs (self-signed and plug-in intermediate), fake JWTs, a fake TokenReview and
a fake pod index. The fakes stand in for the API server only in unit tests; the cluster test uses the real
one.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from istiod.ca.authority import CertificateAuthority, KeyCertBundle, ca_certificate, generate_self_signed_root
from istiod.ca.nodeauth import PodInfo
from istiod.ca.rootoftrust import AlreadyExists
from istiod.security.authn import TokenReviewResult

AUDIENCE = "istio-ca"


def make_jwt(claims: Mapping[str, object]) -> str:
    def b64(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'RS256'})}.{b64(dict(claims))}.c2lnbmF0dXJl"


def sa_token(  # noqa: PLR0917 - reads like the claims it builds
    namespace: str,
    name: str,
    pod: str | None = None,
    uid: str | None = None,
    aud: Sequence[str] = (AUDIENCE,),
    exp_in: float = 3600,
) -> str:
    claims: dict[str, object] = {
        "aud": list(aud),
        "exp": int(time.time() + exp_in),
        "sub": f"system:serviceaccount:{namespace}:{name}",
        "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name}},
    }
    if pod:
        claims["kubernetes.io"]["pod"] = {"name": pod, "uid": uid}  # type: ignore[index]
    return make_jwt(claims)


class FakeReviewer:
    """Answers TokenReview from the (unsigned) claims, the way the API server would for a genuine token."""

    def __init__(self) -> None:
        self.calls = 0
        self.forced: dict[str, TokenReviewResult] = {}

    async def review(self, token: str, audiences: Sequence[str]) -> TokenReviewResult:
        self.calls += 1
        if token in self.forced:
            return self.forced[token]
        payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
        if not set(payload["aud"]) & set(audiences):
            return TokenReviewResult(False, error="token audiences is invalid for the target audiences")
        if payload["exp"] < time.time():
            return TokenReviewResult(False, error="service account token has expired")
        k8s = payload["kubernetes.io"]
        extra = {}
        if "pod" in k8s:
            extra = {
                "authentication.kubernetes.io/pod-name": (k8s["pod"]["name"],),
                "authentication.kubernetes.io/pod-uid": (k8s["pod"]["uid"],),
            }
        return TokenReviewResult(True, payload["sub"], tuple(payload["aud"]), extra)


@dataclass
class FakePods:
    pods: list[PodInfo] = field(default_factory=list)

    def add(self, ns: str, name: str, sa: str, node: str, phase: str = "Running") -> PodInfo:
        pod = PodInfo(ns, name, f"uid-{name}", sa, node, phase)
        self.pods.append(pod)
        return pod

    async def get_pod(self, namespace: str, name: str) -> PodInfo | None:
        return next((p for p in self.pods if (p.namespace, p.name) == (namespace, name)), None)

    async def pods_on_node(self, node: str, namespace: str, service_account: str) -> Sequence[PodInfo]:
        return [
            p
            for p in self.pods
            if (p.node_name, p.namespace, p.service_account) == (node, namespace, service_account)
        ]


@pytest.fixture
def pods() -> FakePods:
    """Two nodes: ztunnel, web and api (and a Failed job) on node-a; ztunnel and db on node-b."""
    p = FakePods()
    p.add("istio-system", "zt-a", "ztunnel", "node-a")
    p.add("istio-system", "zt-b", "ztunnel", "node-b")
    p.add("app", "web-1", "web", "node-a")
    p.add("app", "api-1", "api", "node-a")
    p.add("app", "db-1", "db", "node-b")
    p.add("app", "job-1", "job", "node-a", phase="Failed")
    return p


@pytest.fixture(scope="session")
def self_signed_pems() -> tuple[bytes, bytes]:
    return generate_self_signed_root("cluster.local")


@pytest.fixture
def ca(self_signed_pems: tuple[bytes, bytes]) -> CertificateAuthority:
    cert, key = self_signed_pems
    return CertificateAuthority(KeyCertBundle.from_pem(cert, key, source="test"))


@dataclass(frozen=True)
class PluggedCa:
    """A root and an intermediate signed by it: the four files of a ``cacerts`` Secret."""

    root_pem: bytes
    ca_cert_pem: bytes
    ca_key_pem: bytes
    cert_chain_pem: bytes


def make_plugged_ca(name: str = "plugged") -> PluggedCa:
    pem = serialization.Encoding.PEM
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = ca_certificate(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} root")]),
        root_key,
        ttl=dt.timedelta(days=30),
    )
    inter_key = ec.generate_private_key(ec.SECP256R1())
    inter = ca_certificate(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} intermediate")]),
        inter_key,
        issuer=root,
        issuer_key=root_key,
        ttl=dt.timedelta(days=10),
    )
    key_pem = inter_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return PluggedCa(
        root_pem=root.public_bytes(pem),
        ca_cert_pem=inter.public_bytes(pem),
        ca_key_pem=key_pem,
        cert_chain_pem=inter.public_bytes(pem) + root.public_bytes(pem),
    )


@pytest.fixture(scope="session")
def plugged() -> PluggedCa:
    return make_plugged_ca()


class MemorySecrets:
    """An API server's Secret semantics: create is atomic and fails with AlreadyExists."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], dict[str, bytes]] = {}
        self.types: dict[tuple[str, str], str] = {}
        self.creates = 0

    async def get(self, namespace: str, name: str) -> Mapping[str, bytes] | None:
        await asyncio.sleep(0)  # let a racing replica interleave here
        return self.data.get((namespace, name))

    async def create(self, namespace: str, name: str, data: Mapping[str, bytes], secret_type: str) -> None:
        await asyncio.sleep(0)
        self.creates += 1
        if (namespace, name) in self.data:
            raise AlreadyExists(name)
        self.data[(namespace, name)] = dict(data)
        self.types[(namespace, name)] = secret_type
