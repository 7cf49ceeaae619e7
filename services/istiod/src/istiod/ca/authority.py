"""The CA core: key material (:class:`KeyCertBundle`) and signing (:class:`CertificateAuthority`).

Pure and synchronous: no Kubernetes, no gRPC. Issued certificates follow upstream istiod (wire-contracts.md
§4.4): empty subject (a CN only when the CSR had one, and then it is the first SAN, never the CSR's
text, as upstream's dual-use rule does), critical SAN, KeyUsage DigitalSignature +
KeyEncipherment, ExtKeyUsage ServerAuth + ClientAuth, CA=false, NotBefore = now - 2 min, NotAfter = now +
TTL clamped to the signing certificate. The response chain is leaf, intermediates (one PEM each), then the
root bundle.

Beyond upstream (which ignores CSR SANs), a CSR is checked: its signature must verify and every SAN it carries
must be one the CA is about to issue.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from istiod.ca.errors import CsrError, RootOfTrustError, SigningError, TtlError
from meshkit.identity.pem import ChainError, load_certificates, to_pem

__all__ = ["CertificateAuthority", "IssuedCertificate", "KeyCertBundle", "generate_self_signed_root"]

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
CLOCK_SKEW = dt.timedelta(minutes=2)
DEFAULT_TTL_S = 24 * 3600
MAX_TTL_S = 90 * 24 * 3600


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _load_key(pem: bytes) -> SigningKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise RootOfTrustError(f"unreadable CA key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise RootOfTrustError(f"unsupported CA key type {type(key).__name__}: use RSA or ECDSA")
    return key


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


@dataclass(frozen=True, slots=True)
class KeyCertBundle:
    """The CA's signing certificate and key, the chain above it and the trust roots.

    ``intermediates`` runs from the signing certificate up to (not including) a root; it is empty when the
    signing certificate is itself the root (the self-signed case).
    """

    signing_cert: x509.Certificate
    signing_key: SigningKey
    intermediates: tuple[x509.Certificate, ...]
    roots: tuple[x509.Certificate, ...]
    source: str

    @classmethod
    def from_pem(
        cls, ca_cert: bytes, ca_key: bytes, cert_chain: bytes = b"", root_cert: bytes = b"", *, source: str
    ) -> KeyCertBundle:
        """Load and check the four files of a plug-in CA (``cacerts``), or the two of a self-signed one."""
        try:
            signing = load_certificates(ca_cert)[0]
            roots = load_certificates(root_cert) if root_cert.strip() else [signing]
            chain = load_certificates(cert_chain) if cert_chain.strip() else []
        except ChainError as exc:
            raise RootOfTrustError(f"{source}: {exc}") from None
        key = _load_key(ca_key)
        if key.public_key().public_numbers() != signing.public_key().public_numbers():  # type: ignore[union-attr]
            raise RootOfTrustError(f"{source}: ca-key.pem does not belong to ca-cert.pem")
        if not _is_ca(signing):
            raise RootOfTrustError(
                f"{source}: ca-cert.pem is not a CA certificate (BasicConstraints CA=false)"
            )
        # cert-chain.pem conventionally repeats ca-cert and the root; keep only what lies strictly between.
        middle = [c for c in chain if c != signing and c not in roots]
        intermediates = () if signing in roots else (signing, *middle)
        bundle = cls(signing, key, tuple(intermediates), tuple(roots), source)
        bundle.check_chain()
        return bundle

    def check_chain(self) -> None:
        """Every certificate must be issued by the next one, and the last by one of the roots."""
        path = list(self.intermediates)
        for child, parent in itertools.pairwise(path):
            if not _issued_by(child, parent):
                raise RootOfTrustError(f"{self.source}: {child.subject} is not issued by {parent.subject}")
        top = path[-1] if path else self.signing_cert
        if not any(_issued_by(top, root) for root in self.roots):
            raise RootOfTrustError(
                f"{self.source}: the chain does not lead to any certificate in root-cert.pem"
            )

    @property
    def roots_pem(self) -> bytes:
        return to_pem(self.roots)

    @property
    def chain_tail(self) -> list[str]:
        """What follows the leaf in a response: one element per intermediate, then the root bundle."""
        return [to_pem([c]).decode() for c in self.intermediates] + [self.roots_pem.decode()]


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    certificate: x509.Certificate
    chain: list[str]  # the CreateCertificate response: leaf, intermediates, root bundle


class CertificateAuthority:
    """Signs CSRs with a :class:`KeyCertBundle` (see the module docstring for the certificate profile)."""

    def __init__(
        self,
        bundle: KeyCertBundle,
        *,
        default_ttl_s: int = DEFAULT_TTL_S,
        max_ttl_s: int = MAX_TTL_S,
        clock: Callable[[], dt.datetime] = _now,
    ) -> None:
        self.bundle = bundle
        self.default_ttl_s = default_ttl_s
        self.max_ttl_s = max_ttl_s
        self._clock = clock

    @property
    def roots_pem(self) -> bytes:
        return self.bundle.roots_pem

    def ttl(self, requested_s: int) -> int:
        if requested_s <= 0:
            return self.default_ttl_s
        if requested_s > self.max_ttl_s:
            raise TtlError(
                f"requested TTL {requested_s}s is greater than the max allowed TTL {self.max_ttl_s}s"
            )
        return requested_s

    @staticmethod
    def load_csr(csr_pem: bytes | str) -> x509.CertificateSigningRequest:
        raw = csr_pem.encode() if isinstance(csr_pem, str) else csr_pem
        try:
            csr = x509.load_pem_x509_csr(raw)
        except ValueError as exc:
            raise CsrError(f"CSR parsing error: {exc}") from None
        if not csr.is_signature_valid:
            raise CsrError("CSR parsing error: the CSR signature does not verify")
        key = csr.public_key()
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < 2048:
            raise CsrError(f"CSR key too weak: RSA {key.key_size} bits (need >= 2048)")
        if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise CsrError(f"CSR key type {type(key).__name__} is not supported: use ECDSA or RSA")
        return csr

    @staticmethod
    def check_csr_sans(csr: x509.CertificateSigningRequest, uris: Sequence[str], dns: Sequence[str]) -> None:
        try:
            sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return
        for name in sans:
            ok = (isinstance(name, x509.UniformResourceIdentifier) and name.value in uris) or (
                isinstance(name, x509.DNSName) and name.value in dns
            )
            if not ok:
                allowed = ", ".join([*uris, *dns])
                raise CsrError(f"CSR asks for SAN {name.value!r}, but the caller may only have {allowed}")

    def sign(
        self,
        csr_pem: bytes | str,
        *,
        uris: Sequence[str] = (),
        dns: Sequence[str] = (),
        ttl_s: int = 0,
        check_csr_sans: bool = True,
    ) -> IssuedCertificate:
        """Validate ``csr_pem`` and issue a certificate whose SANs are exactly ``uris`` + ``dns``.

        ``check_csr_sans=False`` is for istiod's own certificates, whose CSRs it makes itself.
        """
        if not uris and not dns:
            raise SigningError("no subject alternative name to issue")
        csr = self.load_csr(csr_pem)
        if check_csr_sans:
            self.check_csr_sans(csr, uris, dns)
        lifetime = dt.timedelta(seconds=self.ttl(ttl_s))
        cert = self._build(csr, uris, dns, lifetime)
        return IssuedCertificate(cert, [to_pem([cert]).decode(), *self.bundle.chain_tail])

    def _build(
        self,
        csr: x509.CertificateSigningRequest,
        uris: Sequence[str],
        dns: Sequence[str],
        lifetime: dt.timedelta,
    ) -> x509.Certificate:
        issuer = self.bundle.signing_cert
        now = self._clock()
        not_after = min(now + lifetime, issuer.not_valid_after_utc)
        subject = _dual_use_subject(csr, [*uris, *dns])
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
        names += [x509.DNSName(d) for d in dns]
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(names), critical=True)
            .add_extension(_LEAF_KEY_USAGE, critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_authority_key_id(issuer), critical=False)
        )
        return builder.sign(self.bundle.signing_key, hashes.SHA256())


#: RFC 5280's upper bound for a CommonName; upstream omits the CN rather than fail (dual-use rule).
_MAX_CN = 64


def _dual_use_subject(csr: x509.CertificateSigningRequest, sans: Sequence[str]) -> x509.Name:
    """Empty, or (when the CSR asked for a CN) ``CN=<first SAN>``.

    The CSR's own CN text is never copied: a caller could otherwise put ``istiod.istio-system.svc`` there,
    and a verifier that falls back to the CN when a leaf has no DNS SAN would take the leaf for istiod.
    """
    if not csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME) or len(sans[0]) > _MAX_CN:
        return x509.Name([])
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, sans[0])])


_LEAF_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    key_encipherment=True,
    content_commitment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def _authority_key_id(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())  # type: ignore[arg-type]


def ca_certificate(
    subject: x509.Name,
    key: SigningKey,
    *,
    issuer: x509.Certificate | None = None,
    issuer_key: SigningKey | None = None,
    ttl: dt.timedelta,
    now: dt.datetime | None = None,
    path_length: int | None = None,
) -> x509.Certificate:
    """A CA certificate: self-signed without ``issuer``, else an intermediate signed by ``issuer_key``."""
    start = (now or _now()) - CLOCK_SKEW
    ca_usage = x509.KeyUsage(
        digital_signature=True,
        key_encipherment=False,
        content_commitment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + CLOCK_SKEW + ttl)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(ca_usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(_authority_key_id(issuer), critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


def generate_self_signed_root(
    trust_domain: str, *, rsa_key_size: int = 2048, ttl: dt.timedelta = dt.timedelta(days=3650)
) -> tuple[bytes, bytes]:
    """(ca-cert.pem, ca-key.pem) of a new self-signed root, as istiod makes for ``istio-ca-secret``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=rsa_key_size)
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, trust_domain)])
    cert = ca_certificate(subject, key, ttl=ttl)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem
