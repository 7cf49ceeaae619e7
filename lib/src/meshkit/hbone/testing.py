"""Test helper: a throwaway mesh CA that issues SPIFFE workload certificates (P-256, like istiod's defaults).

For tests and benchmarks only; the real CA lives in istiod. Example::

    ca = TestCA()                                   # trust domain cluster.local
    cert = ca.issue(Identity("cluster.local", "default", "sleep"))
    ctx = server_context(cert)
    chain = ca.sign_csr(csr_pem, [identity.uri])    # a CreateCertificate answer: [leaf, root] PEM
    ca.save(directory); TestCA.load(directory)      # the same CA in another process (benchmarks)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshkit.identity.certs import WorkloadCertificate
from meshkit.identity.spiffe import Identity

__all__ = ["TestCA"]

EKU_CLIENT = ExtendedKeyUsageOID.CLIENT_AUTH
ROOT_FILE, KEY_FILE = "ca.pem", "ca.key"


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class TestCA:
    """A self-signed root that issues leaves carrying SPIFFE URI SANs."""

    __test__ = False  # not a pytest test class

    def __init__(self, trust_domain: str = "cluster.local", *, name: str = "test mesh root") -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, name)])
        root = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .sign(key, hashes.SHA256())
        )
        self._adopt(trust_domain, root, key)

    def _adopt(self, trust_domain: str, root: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.trust_domain = trust_domain
        self.root = root
        self.roots_pem = _pem(root)
        self._key = key

    def save(self, directory: Path) -> None:
        """Write the root and its key (``ca.pem``, ``ca.key``) for :meth:`load` in another process."""
        (directory / ROOT_FILE).write_bytes(self.roots_pem)
        (directory / KEY_FILE).write_bytes(_key_pem(self._key))

    @classmethod
    def load(cls, directory: Path, trust_domain: str = "cluster.local") -> TestCA:
        """The CA that :meth:`save` wrote to ``directory``."""
        key = serialization.load_pem_private_key((directory / KEY_FILE).read_bytes(), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise TypeError(f"{directory / KEY_FILE}: not an EC private key")
        ca = cls.__new__(cls)
        ca._adopt(trust_domain, x509.load_pem_x509_certificate((directory / ROOT_FILE).read_bytes()), key)
        return ca

    def issue(
        self,
        identity: Identity | None = None,
        *,
        uris: Sequence[str] | None = None,
        dns: Sequence[str] = (),
        ttl: dt.timedelta = dt.timedelta(hours=24),
        extra_roots_pem: bytes = b"",
    ) -> WorkloadCertificate:
        """A leaf for ``identity``, valid from an hour ago.

        ``uris`` replaces the URI SANs (``[]``: none) and ``dns`` adds DNS SANs, to build odd certificates;
        the record's ``identity`` is then ``identity`` if given, else the first SPIFFE URI.
        """
        if uris is None:
            uris = [identity.uri] if identity is not None else []
        if identity is None:
            identity = next((Identity.parse(u) for u in uris if u.startswith("spiffe://")), None)
            if identity is None:
                raise ValueError("give an identity, or uris with a SPIFFE one")
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = self._leaf(key.public_key(), uris, dns, ttl)
        return WorkloadCertificate(
            identity=identity,
            chain_pem=_pem(leaf),
            private_key_pem=_key_pem(key),
            roots_pem=self.roots_pem + extra_roots_pem,
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
            serial=leaf.serial_number,
        )

    def sign_csr(
        self, csr_pem: bytes, uris: Sequence[str], *, ttl: dt.timedelta = dt.timedelta(hours=24)
    ) -> list[str]:
        """Sign a CSR as istiod's CA does: a leaf for the CSR's key with ``uris`` as its SANs, whatever the
        CSR asks for. Returns what ``CreateCertificate`` answers: the chain ``[leaf, root]``, PEM strings."""
        csr = x509.load_pem_x509_csr(csr_pem)
        leaf = self._leaf(csr.public_key(), uris, (), ttl)
        return [_pem(leaf).decode(), self.roots_pem.decode()]

    def _leaf(
        self,
        public_key: CertificatePublicKeyTypes,
        uris: Sequence[str],
        dns: Sequence[str],
        ttl: dt.timedelta,
    ) -> x509.Certificate:
        """A workload leaf valid from an hour ago: empty subject, the SANs, server and client auth."""
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
        sans += [x509.DNSName(d) for d in dns]
        now = dt.datetime.now(dt.UTC)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.root.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + ttl)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                False,
            )
        )
        if sans:
            # critical: the subject is empty (RFC 5280 §4.2.1.6)
            leaf = leaf.add_extension(x509.SubjectAlternativeName(sans), True)
        return leaf.sign(self._key, hashes.SHA256())
