"""The ZDS error hierarchy; each class says how the connection must react (STYLE.md practice 8).

- :class:`ZdsProtocolError`: the peer sent something unreadable or out of order. If ``reply`` is set the
  caller sends it first (ztunnel's nack), then closes; ztunnel then reconnects with back-off.
- :class:`ZdsFatalError`: a protocol violation after which upstream ztunnel gives up on the in-pod manager
  entirely (Add without ``workload_info``, Keep after SnapshotSent, a second SnapshotSent): nack, close, and
  do **not** reconnect.
- :class:`ZdsClosed`: the peer closed the socket (EOF) or the connection was closed locally.
- :class:`ZdsTimeout`: the peer did not answer within the deadline (5 s upstream); close the connection.
- :class:`ZdsUsageError`: a local programming error (a second request while one is outstanding, a Keep after
  the snapshot); nothing was put on the wire.
"""

from __future__ import annotations

__all__ = ["ZdsClosed", "ZdsError", "ZdsFatalError", "ZdsProtocolError", "ZdsTimeout", "ZdsUsageError"]


class ZdsError(Exception):
    """Base class of every ZDS error."""


class ZdsProtocolError(ZdsError):
    """The peer broke the protocol; send ``reply`` (if any), close, reconnect."""

    def __init__(self, message: str, reply: bytes | None = None) -> None:
        super().__init__(message)
        self.reply = reply


class ZdsFatalError(ZdsProtocolError):
    """A violation after which ztunnel stops its in-pod manager and does not reconnect."""


class ZdsClosed(ZdsError):
    """The connection is closed (peer EOF or local close)."""


class ZdsTimeout(ZdsError):
    """The peer did not send or accept a packet within the deadline."""


class ZdsUsageError(ZdsError):
    """The local caller used the state machine out of order; no bytes were produced."""
