"""The CA core: certificate profile, TTL rules, CSR validation, plug-in intermediate chains."""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from istiod.ca.authority import CertificateAuthority, KeyCertBundle
from istiod.ca.errors import CsrError, RootOfTrustError, TtlError
from meshkit.identity.csr import KeyType, create_csr
from meshkit.identity.pem import load_certificates
from meshkit.identity.spiffe import Identity

from .conftest import PluggedCa, make_plugged_ca

ALICE = Identity("cluster.local", "ns1", "alice")
NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)


def fixed(ca: CertificateAuthority) -> CertificateAuthority:
    return CertificateAuthority(ca.bundle, clock=lambda: NOW)


def test_certificate_profile(ca: CertificateAuthority) -> None:
    issued = fixed(ca).sign(create_csr(ALICE).csr_pem, uris=[ALICE.uri])
    cert = issued.certificate
    assert len(cert.subject) == 0
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [ALICE.uri]
    assert san.value.get_values_for_type(x509.DNSName) == []
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature
    assert ku.key_encipherment
    assert not ku.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert cert.not_valid_before_utc == NOW - dt.timedelta(minutes=2)
    assert cert.not_valid_after_utc == NOW + dt.timedelta(hours=24)
    cert.verify_directly_issued_by(ca.bundle.signing_cert)


def test_self_signed_chain_is_leaf_then_root(ca: CertificateAuthority) -> None:
    chain = ca.sign(create_csr(ALICE).csr_pem, uris=[ALICE.uri]).chain
    assert len(chain) == 2
    assert load_certificates(chain[1]) == [ca.bundle.signing_cert]


def _csr_with_cn(cn: str) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(name)
        .sign(key, hashes.SHA256())
        .public_bytes(Encoding.PEM)
    )


def test_cn_only_when_csr_has_one_and_then_it_is_the_san(ca: CertificateAuthority) -> None:
    """Upstream's dual-use rule: a CSR CN becomes CN=<first SAN>; its own text is never copied.

    A workload asking for CN=istiod.istio-system.svc must not get a leaf that a CN-fallback hostname check
    (a leaf without DNS SANs) would take for istiod's serving certificate.
    """
    cert = ca.sign(_csr_with_cn("istiod.istio-system.svc"), uris=[ALICE.uri]).certificate
    assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == [ALICE.uri]
    no_cn = ca.sign(create_csr(ALICE).csr_pem, uris=[ALICE.uri]).certificate
    assert len(no_cn.subject) == 0
    long_id = Identity("cluster.local", "n" * 30, "s" * 30)  # > 64 characters: omitted, as upstream
    long_cert = ca.sign(_csr_with_cn("x"), uris=[long_id.uri]).certificate
    assert len(long_cert.subject) == 0


def test_ttl_rules(ca: CertificateAuthority) -> None:
    c = fixed(ca)
    csr = create_csr(ALICE).csr_pem
    assert c.sign(csr, uris=[ALICE.uri], ttl_s=3600).certificate.not_valid_after_utc == NOW + dt.timedelta(
        hours=1
    )
    assert c.sign(csr, uris=[ALICE.uri], ttl_s=0).certificate.not_valid_after_utc == NOW + dt.timedelta(
        hours=24
    )
    ninety = 90 * 86400
    assert c.sign(csr, uris=[ALICE.uri], ttl_s=ninety).certificate.not_valid_after_utc == NOW + dt.timedelta(
        days=90
    )
    with pytest.raises(TtlError, match="greater than the max allowed TTL"):
        c.sign(csr, uris=[ALICE.uri], ttl_s=ninety + 1)


def test_not_after_clamped_to_signing_cert(plugged: PluggedCa) -> None:
    bundle = KeyCertBundle.from_pem(
        plugged.ca_cert_pem, plugged.ca_key_pem, plugged.cert_chain_pem, plugged.root_pem, source="t"
    )
    ca = CertificateAuthority(bundle)
    cert = ca.sign(create_csr(ALICE).csr_pem, uris=[ALICE.uri], ttl_s=60 * 86400).certificate
    assert cert.not_valid_after_utc == bundle.signing_cert.not_valid_after_utc


def test_rsa_csr_accepted(ca: CertificateAuthority) -> None:
    ca.sign(create_csr(ALICE, KeyType.RSA).csr_pem, uris=[ALICE.uri])


@pytest.mark.parametrize(
    ("san", "message"),
    [
        (
            x509.UniformResourceIdentifier("spiffe://cluster.local/ns/kube-system/sa/admin"),
            "CSR asks for SAN",
        ),
        (x509.DNSName("evil.example.com"), "CSR asks for SAN 'evil.example.com'"),
    ],
)
def test_csr_san_must_match_identity(ca: CertificateAuthority, san: x509.GeneralName, message: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    sans = x509.SubjectAlternativeName([x509.UniformResourceIdentifier(ALICE.uri), san])
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).add_extension(sans, True)
    from cryptography.hazmat.primitives.serialization import Encoding

    pem = csr.sign(key, hashes.SHA256()).public_bytes(Encoding.PEM)
    with pytest.raises(CsrError, match=message):
        ca.sign(pem, uris=[ALICE.uri])


def test_csr_with_bad_signature_refused(ca: CertificateAuthority) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    csr = x509.load_pem_x509_csr(create_csr(ALICE).csr_pem)
    der = bytearray(csr.public_bytes(Encoding.DER))
    der[-5] ^= 0xFF  # inside the signature
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(Encoding.PEM)
    with pytest.raises(CsrError):
        ca.sign(tampered, uris=[ALICE.uri])


def test_garbage_csr_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(CsrError, match="CSR parsing error"):
        ca.sign(b"not a csr", uris=[ALICE.uri])


def _verify(chain: list[str], identity: Identity) -> None:
    """Path validation as a strict X.509 verifier does it: leaf -> intermediates -> a trusted root."""
    roots = load_certificates(chain[-1])
    leaf, *middle = [c for element in chain[:-1] for c in load_certificates(element)]
    store = verification.Store(roots)
    verifier = verification.PolicyBuilder().store(store).build_client_verifier()
    verified = verifier.verify(leaf, middle)
    assert verified.subjects is not None
    assert x509.UniformResourceIdentifier(identity.uri) in verified.subjects


def test_plugged_intermediate_chain_validates_to_its_root(plugged: PluggedCa) -> None:
    bundle = KeyCertBundle.from_pem(
        plugged.ca_cert_pem, plugged.ca_key_pem, plugged.cert_chain_pem, plugged.root_pem, source="cacerts"
    )
    assert [c.subject for c in bundle.intermediates] == [bundle.signing_cert.subject]
    chain = CertificateAuthority(bundle).sign(create_csr(ALICE).csr_pem, uris=[ALICE.uri]).chain
    assert len(chain) == 3  # leaf, intermediate, root bundle
    assert chain[-1].encode() == plugged.root_pem
    _verify(chain, ALICE)


def test_chain_from_another_root_does_not_validate(plugged: PluggedCa) -> None:
    bundle = KeyCertBundle.from_pem(
        plugged.ca_cert_pem, plugged.ca_key_pem, plugged.cert_chain_pem, plugged.root_pem, source="cacerts"
    )
    chain = CertificateAuthority(bundle).sign(create_csr(ALICE).csr_pem, uris=[ALICE.uri]).chain
    chain[-1] = make_plugged_ca("foreign").root_pem.decode()
    with pytest.raises(verification.VerificationError):
        _verify(chain, ALICE)


def test_plugged_bundle_checks(plugged: PluggedCa) -> None:
    other = make_plugged_ca("other")
    with pytest.raises(RootOfTrustError, match="does not belong"):
        KeyCertBundle.from_pem(plugged.ca_cert_pem, other.ca_key_pem, b"", plugged.root_pem, source="t")
    with pytest.raises(RootOfTrustError, match=r"does not lead to any certificate in root-cert\.pem"):
        KeyCertBundle.from_pem(plugged.ca_cert_pem, plugged.ca_key_pem, b"", other.root_pem, source="t")
    with pytest.raises(RootOfTrustError, match="no PEM certificate"):
        KeyCertBundle.from_pem(b"", plugged.ca_key_pem, source="t")
