"""TLS inside an HBONE tunnel: a memory-BIO ``ssl`` session over a :class:`~meshkit.hbone.stream.HboneStream`.

Used for DestinationRule ``tls.mode: SIMPLE`` (the waypoint originates TLS to the app; the tunnel around it is
still HBONE mTLS). It offers the few stream methods :class:`~waypoint.upstream.UpstreamPool` uses: ``write``,
``read``, ``write_eof``, ``abort``, ``finished`` and ``error``; tests use ``server_side=True`` for the app.
"""

from __future__ import annotations

import contextlib
import ssl

from meshkit.hbone.errors import HboneError
from meshkit.hbone.stream import HboneStream

__all__ = ["TlsStream", "client_tls_context"]


def client_tls_context(ca_pem: str, sni: str, insecure: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if ca_pem:
        ctx.load_verify_locations(cadata=ca_pem)
    else:
        ctx.load_default_certs()
    ctx.check_hostname = bool(sni)
    return ctx


class TlsStream:
    """A TLS session whose records travel over an HBONE stream."""

    def __init__(
        self, stream: HboneStream, ctx: ssl.SSLContext, *, server_side: bool = False, sni: str = ""
    ) -> None:
        self.stream = stream
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl = ctx.wrap_bio(self._in, self._out, server_side=server_side, server_hostname=sni or None)

    @property
    def finished(self) -> bool:
        return self.stream.finished

    @property
    def error(self) -> HboneError | None:
        return self.stream.error

    def _flush(self) -> None:
        data = self._out.read()
        if data:
            self.stream.write(data)

    async def _pump(self) -> bool:
        """Move one read from the tunnel into the TLS engine; False at EOF."""
        data = await self.stream.read()
        if not data:
            self._in.write_eof()
            return False
        self._in.write(data)
        return True

    async def handshake(self) -> None:
        while True:
            try:
                self._ssl.do_handshake()
                self._flush()
                return
            except ssl.SSLWantReadError:
                self._flush()
                if not await self._pump():
                    raise HboneError("tunnel closed during the TLS handshake") from None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._ssl.write(data)
        self._flush()

    async def read(self, n: int = 65536) -> bytes:
        while True:
            try:
                return self._ssl.read(n)
            except ssl.SSLWantReadError:
                if not await self._pump():
                    return b""
            except ssl.SSLZeroReturnError:
                return b""

    def write_eof(self) -> None:
        with contextlib.suppress(ssl.SSLError):  # close_notify sent; the peer's is not waited for
            self._ssl.unwrap()
        self._flush()
        self.stream.write_eof()

    def abort(self) -> None:
        self.stream.abort()
