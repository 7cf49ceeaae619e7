"""The one small exception hierarchy of HBONE (STYLE.md practice 8): each class says how callers react.

Foreign errors (``ssl.SSLError``, ``h2.exceptions.*``, ``OSError``) are mapped into these at the shell
boundary.
"""

from __future__ import annotations


class HboneError(Exception):
    """Base of every HBONE failure."""


class IdentityError(HboneError):
    """The peer's certificate does not carry an acceptable SPIFFE identity (closes the connection)."""


class ConnectFailed(HboneError):
    """Opening a tunnel failed before any byte flowed: TCP connect, TLS handshake, or a non-200 answer.

    ``status`` is the HTTP status the server answered with (0 when it never answered), so ztunnel can log
    ``http status: 401`` as upstream does (behaviour.md §2.7).
    """

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class StreamReset(HboneError):
    """The stream was reset (RST_STREAM) by the peer, or locally; ``code`` is the HTTP/2 error code."""

    def __init__(self, code: int, remote: bool) -> None:
        super().__init__(f"stream reset by {'peer' if remote else 'us'} (HTTP/2 error code {code})")
        self.code = code
        self.remote = remote


class ConnectionClosed(HboneError):
    """The HBONE connection went away (GOAWAY, TLS/TCP close, keepalive timeout) while the stream was open."""
