"""TLS for HBONE: contexts built from a :class:`WorkloadCertificate`, and the SPIFFE identity checks.

Parameters follow ztunnel (behaviour.md §2.2-§2.4): TLS 1.3 only, suites TLS_AES_256_GCM_SHA384 and
TLS_AES_128_GCM_SHA256, ALPN ``h2``, no SNI, no session resumption. Client and server both verify the peer's
chain against the mesh roots (``roots_pem``); hostnames are never checked, identities are checked in code:

- the client accepts the server only if one of its SPIFFE URI SANs equals one of the expected identities
  (:func:`verify_server_identity`);
- the server requires a client certificate with a SPIFFE URI SAN in its own trust domain, and takes the
  first SPIFFE URI SAN as the peer identity (:func:`verify_client_identity`, :func:`peer_identity`).

Restricting the TLS 1.3 suites. Python 3.11's ``ssl`` has no API for it (``set_ciphers`` only covers TLS 1.2
and older), so :func:`_restrict_tls13_suites` calls OpenSSL's ``SSL_CTX_set_ciphersuites`` through ctypes, and
fails closed at every step: the function is looked up through the ``_ssl`` extension's own handle (so it is
the libssl that ``_ssl`` is linked against, never another copy mapped into the process); the ``SSL_CTX``
pointer read from the context object is checked to be this context's (``SSL_CTX_get_options`` must equal
``ctx.options``) before it is written to; and ``get_ciphers()`` must afterwards list exactly our two suites.
Any failure raises, so no context offering ChaCha20 is ever built. Each connection also checks the negotiated
version and suite before it speaks HTTP/2 (:func:`check_negotiated`).

Rejected alternative: an ``OPENSSL_CONF`` file with ``Ciphersuites``. It is process-wide (every TLS client
in the process, e.g. the Kubernetes client, would be restricted too), it must be in the environment before
the interpreter loads OpenSSL, a missing or unreadable file silently leaves the defaults on, and the result
can only be checked the same way (``get_ciphers()``). The ctypes path is per context and verified.
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

from meshkit.hbone.errors import HboneError, IdentityError
from meshkit.identity.certs import WorkloadCertificate
from meshkit.identity.spiffe import SCHEME, Identity, InvalidIdentity

__all__ = [
    "ALPN",
    "TLS13_SUITES",
    "ContextCache",
    "check_negotiated",
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
    """The libssl ``_ssl`` uses: dlsym on the ``_ssl`` module's handle searches it and its dependencies."""
    import _ssl

    try:
        lib = ctypes.CDLL(_ssl.__file__)
        set_suites, get_options = lib.SSL_CTX_set_ciphersuites, lib.SSL_CTX_get_options
    except (OSError, AttributeError) as exc:
        raise RuntimeError(f"cannot reach OpenSSL through {_ssl.__file__}: {exc}") from exc
    set_suites.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    set_suites.restype = ctypes.c_int
    get_options.argtypes = [ctypes.c_void_p]
    get_options.restype = ctypes.c_uint64
    return lib


_LIBSSL: Any = None


def _ssl_ctx_pointer(ctx: ssl.SSLContext) -> int:
    # CPython's PySSLContext is PyObject_HEAD (refcount, type: two pointers in a release build) followed by
    # the SSL_CTX pointer; the caller checks the pointer before writing through it.
    if sys.implementation.name != "cpython" or hasattr(sys, "gettotalrefcount"):
        raise RuntimeError("restricting TLS 1.3 suites needs a release build of CPython")
    pointer = ctypes.c_void_p.from_address(id(ctx) + 2 * ctypes.sizeof(ctypes.c_void_p)).value
    if not pointer:
        raise RuntimeError("SSLContext holds no SSL_CTX")
    return pointer


def _restrict_tls13_suites(ctx: ssl.SSLContext) -> None:
    """Offer only :data:`TLS13_SUITES` on ``ctx``, or raise (never leaves other suites on silently)."""
    global _LIBSSL
    if _LIBSSL is None:
        _LIBSSL = _libssl()
    pointer = _ssl_ctx_pointer(ctx)
    if _LIBSSL.SSL_CTX_get_options(pointer) != int(ctx.options):
        raise RuntimeError(
            "the SSL_CTX found in the SSLContext is not its own; TLS 1.3 suites not restricted"
        )
    if _LIBSSL.SSL_CTX_set_ciphersuites(pointer, ":".join(TLS13_SUITES).encode()) != 1:
        raise RuntimeError("SSL_CTX_set_ciphersuites failed")
    offered = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.3"}
    if offered != set(TLS13_SUITES):
        raise RuntimeError(f"TLS 1.3 suites not restricted: {sorted(offered)}")


def check_negotiated(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> None:
    """Raise :class:`HboneError` unless the handshake settled on TLS 1.3 with one of our AES-GCM suites.

    Belt and braces over the context settings: a connection that got anything else is never used.
    """
    version, cipher = ssl_object.version(), (ssl_object.cipher() or ("",))[0]
    if version != "TLSv1.3" or cipher not in TLS13_SUITES:
        raise HboneError(f"negotiated {version} {cipher}, want TLSv1.3 with {' or '.join(TLS13_SUITES)}")


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

    As upstream's verifier: the leaf passes when *at least one* of its URI SANs that parses as a SPIFFE
    identity is in ``expected`` (other URI SANs do not matter); a leaf with no SAN, only DNS/IP SANs or only
    non-SPIFFE URIs never passes, nor does anything when ``expected`` is empty. Returns the matching identity.
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
