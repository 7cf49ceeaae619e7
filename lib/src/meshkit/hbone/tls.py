"""TLS for HBONE: contexts built from a :class:`WorkloadCertificate`, and the SPIFFE identity checks.

Parameters follow ztunnel (behaviour.md §2.2-§2.4): TLS 1.3 only, suites TLS_AES_256_GCM_SHA384 and
TLS_AES_128_GCM_SHA256, ALPN ``h2``, no SNI, no session resumption. Client and server both verify the peer's
chain against the mesh roots (``roots_pem``); hostnames are never checked, identities are checked in code:

- the client accepts the server only if one of its SPIFFE URI SANs equals one of the expected identities
  (:func:`verify_server_identity`);
- the server requires a client certificate with a SPIFFE URI SAN in its own trust domain, and takes the
  first SPIFFE URI SAN as the peer identity (:func:`verify_client_identity`, :func:`peer_identity`).

Python's ``ssl`` cannot restrict TLS 1.3 suites, so :func:`_restrict_tls13_suites` calls OpenSSL's
``SSL_CTX_set_ciphersuites`` through ctypes on the context's ``SSL_CTX`` and then checks that it took effect
(``get_ciphers()``); if it cannot, it raises rather than silently offering ChaCha20.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import ssl
import sys
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Collection
from typing import Any

from meshkit.hbone.errors import IdentityError
from meshkit.identity.certs import WorkloadCertificate
from meshkit.identity.spiffe import SCHEME, Identity, InvalidIdentity

__all__ = [
    "ALPN",
    "TLS13_SUITES",
    "ContextCache",
    "client_context",
    "peer_identity",
    "server_context",
    "spiffe_sans",
    "verify_client_identity",
    "verify_server_identity",
]

ALPN = "h2"
#: The two suites ztunnel's rustls config offers (behaviour.md §2.2), in its order.
TLS13_SUITES = ("TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256")


def _libssl() -> Any:
    """The libssl the ``_ssl`` extension is linked against (found in our own memory map, never a guess)."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.rsplit(" ", 1)[-1].strip()
            if "/libssl" in path and ".so" in path:
                lib = ctypes.CDLL(path)
                lib.SSL_CTX_set_ciphersuites.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
                lib.SSL_CTX_set_ciphersuites.restype = ctypes.c_int
                return lib
    raise RuntimeError("libssl is not mapped into this process; cannot restrict TLS 1.3 suites")


_LIBSSL: Any = None


def _restrict_tls13_suites(ctx: ssl.SSLContext) -> None:
    global _LIBSSL
    if _LIBSSL is None:
        _LIBSSL = _libssl()
    # CPython's PySSLContext starts with PyObject_HEAD followed by the SSL_CTX pointer.
    if sys.implementation.name != "cpython" or hasattr(sys, "gettotalrefcount"):
        raise RuntimeError("restricting TLS 1.3 suites needs a release CPython")
    ssl_ctx = ctypes.c_void_p.from_address(id(ctx) + 2 * ctypes.sizeof(ctypes.c_void_p)).value
    if not ssl_ctx or _LIBSSL.SSL_CTX_set_ciphersuites(ssl_ctx, ":".join(TLS13_SUITES).encode()) != 1:
        raise RuntimeError("SSL_CTX_set_ciphersuites failed")
    offered = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.3"}
    if offered != set(TLS13_SUITES):
        raise RuntimeError(f"TLS 1.3 suites not restricted: {sorted(offered)}")


def _load_chain(ctx: ssl.SSLContext, cert: WorkloadCertificate) -> None:
    # ssl only loads keys from files: write them to a private directory and remove them at once.
    with tempfile.TemporaryDirectory(prefix="hbone-") as tmp:
        chain, key = os.path.join(tmp, "chain.pem"), os.path.join(tmp, "key.pem")
        for path, data in ((chain, cert.chain_pem), (key, cert.private_key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
        ctx.load_cert_chain(chain, key)


def _base(cert: WorkloadCertificate, purpose: int) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    _restrict_tls13_suites(ctx)
    ctx.set_alpn_protocols([ALPN])
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=cert.roots_pem.decode("ascii"))
    _load_chain(ctx, cert)
    return ctx


def server_context(cert: WorkloadCertificate) -> ssl.SSLContext:
    """Server side: our pod's certificate; a client certificate chaining to ``cert.roots_pem`` is required.

    The trust-domain check on the client's SAN happens after the handshake (:func:`verify_client_identity`).
    """
    ctx = _base(cert, ssl.PROTOCOL_TLS_SERVER)
    ctx.num_tickets = 0  # no resumption: ztunnel's client never resumes (behaviour.md §2.2)
    return ctx


def client_context(cert: WorkloadCertificate) -> ssl.SSLContext:
    """Client side: presents the source workload's chain, verifies the server chain, never checks hostnames.

    Connect with ``server_hostname=""`` (asyncio) or ``None`` so that no SNI is sent; then call
    :func:`verify_server_identity`.
    """
    ctx = _base(cert, ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.options |= ssl.OP_NO_TICKET
    return ctx


def _uri_sans(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> list[str]:
    peer = ssl_object.getpeercert()
    if not peer:
        raise IdentityError("peer presented no verified certificate")
    sans: Any = peer.get("subjectAltName", ())
    return [str(value) for kind, value in sans if kind == "URI"]


def spiffe_sans(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> list[Identity]:
    """Every URI SAN of the verified peer leaf that parses as an Istio SPIFFE identity, in order."""
    out = []
    for uri in _uri_sans(ssl_object):
        if uri.startswith(SCHEME):
            with contextlib.suppress(InvalidIdentity):
                out.append(Identity.parse(uri))
    return out


def peer_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> Identity:
    """The peer's identity: the first SPIFFE URI SAN of its verified leaf (behaviour.md §2.4)."""
    ids = spiffe_sans(ssl_object)
    if not ids:
        raise IdentityError("peer certificate has no SPIFFE URI SAN")
    return ids[0]


def verify_server_identity(
    ssl_object: ssl.SSLObject | ssl.SSLSocket, expected: Collection[Identity]
) -> Identity:
    """Raise :class:`IdentityError` unless a SPIFFE SAN of the server equals one of ``expected`` (§2.3).

    Returns the matching identity.
    """
    ids = spiffe_sans(ssl_object)
    for identity in ids:
        if identity in expected:
            return identity
    want = ", ".join(sorted(str(e) for e in expected)) or "<none>"
    got = ", ".join(str(i) for i in ids) or "<none>"
    raise IdentityError(f"server identity {got} is not one of the expected identities {want}")


def verify_client_identity(ssl_object: ssl.SSLObject | ssl.SSLSocket, trust_domain: str) -> Identity:
    """Server side: the client needs a SPIFFE SAN in our trust domain; returns its identity (§2.4)."""
    ids = spiffe_sans(ssl_object)
    if not any(i.trust_domain == trust_domain for i in ids):
        got = ", ".join(str(i) for i in ids) or "<none>"
        raise IdentityError(f"client identity {got} is not in trust domain {trust_domain}")
    return ids[0]


class ContextCache:
    """Builds SSL contexts once per certificate (contexts are costly: key loading, root parsing).

    ``get(cert)`` returns the cached context for that exact certificate value; a rotated certificate is a new
    key, so the next connection picks the new chain up. Holds at most ``size`` contexts (LRU).
    """

    def __init__(self, build: Callable[[WorkloadCertificate], ssl.SSLContext], size: int = 64) -> None:
        self._build = build
        self._size = size
        self._cache: OrderedDict[WorkloadCertificate, ssl.SSLContext] = OrderedDict()

    def get(self, cert: WorkloadCertificate) -> ssl.SSLContext:
        ctx = self._cache.get(cert)
        if ctx is None:
            ctx = self._cache[cert] = self._build(cert)
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(cert)
        return ctx
