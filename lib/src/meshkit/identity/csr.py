"""Certificate signing requests as ztunnel makes them (wire-contracts.md §4.2).

A fresh key per request, SHA-256 signature, an empty subject and exactly one SAN: the SPIFFE URI, marked
critical (as the boring/openssl ztunnel builds do; istiod does not care). ECDSA P-256 is the default, RSA an
option. The private key is returned as PKCS#8 PEM, the form :mod:`ssl` and ztunnel both load.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from meshkit.identity.spiffe import Identity

__all__ = ["CsrBundle", "KeyType", "create_csr", "generate_private_key"]

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class KeyType(enum.Enum):
    EC_P256 = "ec-p256"
    RSA = "rsa"


@dataclass(frozen=True, slots=True)
class CsrBundle:
    csr_pem: bytes
    private_key_pem: bytes


def generate_private_key(key_type: KeyType = KeyType.EC_P256, rsa_key_size: int = 2048) -> PrivateKey:
    if key_type is KeyType.RSA:
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_key_size)
    return ec.generate_private_key(ec.SECP256R1())


def create_csr(
    identity: Identity, key_type: KeyType = KeyType.EC_P256, rsa_key_size: int = 2048
) -> CsrBundle:
    """A CSR for ``identity`` with a new private key."""
    key = generate_private_key(key_type, rsa_key_size)
    san = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(identity.uri)])
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .add_extension(san, critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return CsrBundle(csr_pem=csr.public_bytes(serialization.Encoding.PEM), private_key_pem=key_pem)
