"""Test helper: a throwaway mesh CA that issues SPIFFE workload certificates (P-256, like istiod's defaults).

For tests and benchmarks only; the real CA lives in istiod. Example::

    ca = TestCA()                                   # trust domain cluster.local
    cert = ca.issue(Identity("cluster.local", "default", "sleep"))
    ctx = server_context(cert)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from meshkit.identity.certs import WorkloadCertificate
from meshkit.identity.spiffe import Identity

__all__ = ["TestCA"]

EKU_CLIENT = ExtendedKeyUsageOID.CLIENT_AUTH


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class TestCA:
    """A self-signed root that issues leaves carrying SPIFFE URI SANs."""

    __test__ = False  # not a pytest test class

    def __init__(self, trust_domain: str = "cluster.local", *, name: str = "test mesh root") -> None:
        self.trust_domain = trust_domain
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, name)])
        self.root = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .sign(self._key, hashes.SHA256())
        )
        self.roots_pem = _pem(self.root)

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
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
        sans += [x509.DNSName(d) for d in dns]
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        not_before = now - dt.timedelta(hours=1)
        serial = x509.random_serial_number()
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.root.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(not_before)
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
        signed = leaf.sign(self._key, hashes.SHA256())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return WorkloadCertificate(
            identity=identity,
            chain_pem=_pem(signed),
            private_key_pem=key_pem,
            roots_pem=self.roots_pem + extra_roots_pem,
            not_before=not_before,
            not_after=now + ttl,
            serial=serial,
        )
