from __future__ import annotations

from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from meshkit.identity.csr import KeyType, create_csr
from meshkit.identity.pem import ChainError, certificate_from_response, split_pem, uri_sans
from meshkit.identity.spiffe import Identity

Signer = Callable[[bytes, list[str]], list[str]]
ALICE = Identity("cluster.local", "ns1", "alice")
BOB = Identity("cluster.local", "ns1", "bob")


def test_csr_is_ecdsa_p256_with_one_critical_spiffe_san() -> None:
    bundle = create_csr(ALICE)
    csr = x509.load_pem_x509_csr(bundle.csr_pem)
    assert csr.is_signature_valid
    assert len(csr.subject) == 0
    key = csr.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.curve.name == "secp256r1"
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert uri_sans(csr) == [ALICE.uri]
    assert bundle.private_key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    assert isinstance(load_pem_private_key(bundle.private_key_pem, None), ec.EllipticCurvePrivateKey)


def test_csr_rsa_option() -> None:
    bundle = create_csr(ALICE, KeyType.RSA, rsa_key_size=2048)
    key = x509.load_pem_x509_csr(bundle.csr_pem).public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    assert key.key_size == 2048


def test_each_csr_has_a_fresh_key() -> None:
    assert create_csr(ALICE).private_key_pem != create_csr(ALICE).private_key_pem


def test_split_pem_keeps_order_and_blocks() -> None:
    text = (
        "junk\n-----BEGIN CERTIFICATE-----\nAAA\n-----END CERTIFICATE-----\n"
        "-----BEGIN CERTIFICATE-----\nBBB\n-----END CERTIFICATE-----"
    )
    blocks = split_pem(text)
    assert [b.splitlines()[1] for b in blocks] == [b"AAA", b"BBB"]
    assert all(b.endswith(b"\n") for b in blocks)


def test_response_becomes_a_record(sign: Signer) -> None:
    bundle = create_csr(ALICE)
    chain = sign(bundle.csr_pem, [ALICE.uri])
    cert = certificate_from_response(ALICE, chain, bundle.private_key_pem)
    assert cert.identity == ALICE
    assert cert.chain_pem == chain[0].encode()
    assert cert.roots_pem == chain[1].encode()
    assert cert.not_before < cert.refresh_at() < cert.not_after
    assert cert.serial > 0


def test_single_element_response_has_no_root(sign: Signer) -> None:
    bundle = create_csr(ALICE)
    chain = sign(bundle.csr_pem, [ALICE.uri])
    with pytest.raises(ChainError, match="no root certificate present"):
        certificate_from_response(ALICE, chain[:1], bundle.private_key_pem)


def test_leaf_for_another_identity_is_refused(sign: Signer) -> None:
    bundle = create_csr(ALICE)
    chain = sign(bundle.csr_pem, [BOB.uri])
    with pytest.raises(ChainError, match=r"issued a certificate for spiffe://cluster.local/ns/ns1/sa/bob"):
        certificate_from_response(ALICE, chain, bundle.private_key_pem)


def test_leaf_with_extra_identity_is_refused(sign: Signer) -> None:
    bundle = create_csr(ALICE)
    chain = sign(bundle.csr_pem, [ALICE.uri, BOB.uri])
    with pytest.raises(ChainError):
        certificate_from_response(ALICE, chain, bundle.private_key_pem)


def test_leaf_for_another_key_is_refused(sign: Signer) -> None:
    """A CA answer carrying someone else's key (a confused or replayed response) is not usable."""
    ours, theirs = create_csr(ALICE), create_csr(ALICE)
    chain = sign(theirs.csr_pem, [ALICE.uri])
    with pytest.raises(ChainError, match="to a key other than the one we sent"):
        certificate_from_response(ALICE, chain, ours.private_key_pem)
