"""PEM and X.509 helpers shared by the CA client, the certificate manager and the CA itself.

Everything here is pure: bytes in, records or bytes out. A CreateCertificate response (wire-contracts.md §4.1)
is a list of PEM strings, leaf first, the root bundle last; :func:`certificate_from_response` turns it into
the :class:`~meshkit.identity.certs.WorkloadCertificate` record HBONE consumes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_private_key

from meshkit.identity.certs import WorkloadCertificate
from meshkit.identity.spiffe import Identity, InvalidIdentity

__all__ = [
    "ChainError",
    "certificate_from_response",
    "leaf_identities",
    "load_certificates",
    "split_pem",
    "to_pem",
    "uri_sans",
]

_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----\r?\n?", re.DOTALL)


class ChainError(ValueError):
    """A certificate chain (usually a CA response) is malformed or does not match what was asked for."""


def split_pem(data: bytes | str) -> list[bytes]:
    """Every PEM block in ``data``, in order, each ending with a newline."""
    raw = data.encode() if isinstance(data, str) else data
    return [m.group(0).rstrip(b"\r\n") + b"\n" for m in _BLOCK.finditer(raw)]


def load_certificates(data: bytes | str) -> list[x509.Certificate]:
    """All certificates in a PEM bundle; raises :class:`ChainError` if there are none or one is unreadable."""
    blocks = [b for b in split_pem(data) if b.startswith(b"-----BEGIN CERTIFICATE-----")]
    if not blocks:
        raise ChainError("no PEM certificate found")
    try:
        return [x509.load_pem_x509_certificate(b) for b in blocks]
    except ValueError as exc:
        raise ChainError(f"unreadable certificate: {exc}") from None


def to_pem(certs: Sequence[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(Encoding.PEM) for c in certs)


def uri_sans(cert: x509.Certificate | x509.CertificateSigningRequest) -> list[str]:
    """The URI subject alternative names of a certificate or CSR (empty when it has no SAN extension)."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(ext.value.get_values_for_type(x509.UniformResourceIdentifier))


def leaf_identities(cert: x509.Certificate) -> list[Identity]:
    """The URI SANs of ``cert`` that parse as SPIFFE identities, in order (the first is the peer identity)."""
    out = []
    for uri in uri_sans(cert):
        try:
            out.append(Identity.parse(uri))
        except InvalidIdentity:
            continue
    return out


def _utc(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _same_key(leaf: x509.Certificate, private_key_pem: bytes) -> bool:
    try:
        key = load_pem_private_key(private_key_pem, password=None)
    except (ValueError, TypeError):
        return False
    spki = PublicFormat.SubjectPublicKeyInfo
    return leaf.public_key().public_bytes(Encoding.DER, spki) == key.public_key().public_bytes(
        Encoding.DER, spki
    )


def certificate_from_response(
    identity: Identity, cert_chain: Sequence[str], private_key_pem: bytes
) -> WorkloadCertificate:
    """Validate a CreateCertificate response and build the record.

    As ztunnel does (wire-contracts.md §4.2): at least two elements (the last is the root bundle) and the
    leaf's URI SAN must be exactly ``identity``. Beyond ztunnel, the leaf must carry the public half of
    ``private_key_pem``: a mismatch would otherwise surface only as failed handshakes.
    """
    if len(cert_chain) < 2:
        raise ChainError("no root certificate present: the CA returned fewer than 2 chain elements")
    leaf = load_certificates(cert_chain[0])[0]
    ids = leaf_identities(leaf)
    if ids != [identity]:
        got = ", ".join(uri_sans(leaf)) or "none"
        raise ChainError(f"CA issued a certificate for {got}, but {identity} was requested")
    if not _same_key(leaf, private_key_pem):
        raise ChainError(f"CA issued the certificate for {identity} to a key other than the one we sent")
    roots_pem = b"".join(split_pem(cert_chain[-1]))
    load_certificates(roots_pem)
    chain = [block for element in cert_chain[:-1] for block in split_pem(element)]
    load_certificates(b"".join(chain))
    return WorkloadCertificate(
        identity=identity,
        chain_pem=b"".join(chain),
        private_key_pem=private_key_pem,
        roots_pem=roots_pem,
        not_before=_utc(leaf.not_valid_before_utc),
        not_after=_utc(leaf.not_valid_after_utc),
        serial=leaf.serial_number,
    )
