"""meshkit.hbone.testing.TestCA: the test CA's CSR signing and its hand-over to another process."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from meshkit.hbone.testing import TestCA
from meshkit.identity.csr import create_csr
from meshkit.identity.pem import certificate_from_response
from meshkit.identity.spiffe import Identity

ALICE = Identity("cluster.local", "ns1", "alice")


def _leaf(pem: bytes | str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)


def test_sign_csr_answers_like_create_certificate(ca: TestCA) -> None:
    csr = create_csr(ALICE)
    chain = ca.sign_csr(csr.csr_pem, [ALICE.uri])
    assert chain[1].encode() == ca.roots_pem
    cert = certificate_from_response(ALICE, chain, csr.private_key_pem)  # key and identity checked there
    assert cert.identity == ALICE
    _leaf(chain[0]).verify_directly_issued_by(ca.root)


def test_saved_ca_loads_in_another_place(tmp_path: Path) -> None:
    ca = TestCA(name="handed over")
    ca.save(tmp_path)
    again = TestCA.load(tmp_path)
    assert again.roots_pem == ca.roots_pem
    _leaf(again.issue(ALICE).chain_pem).verify_directly_issued_by(ca.root)
