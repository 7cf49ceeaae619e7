"""Events the sans-IO :class:`~meshkit.hbone.core.HboneCore` returns: our own types, never h2's.

``DataReceived.data`` is a view of the buffer passed to ``receive_data``: consume or copy it before the next
call. Every other event is an immutable record.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ConnectionTerminated",
    "DataReceived",
    "Event",
    "PingAcked",
    "RequestReceived",
    "ResponseReceived",
    "SettingsChanged",
    "StreamEnded",
    "StreamReset",
    "WindowUpdated",
]

Headers = tuple[tuple[str, str], ...]


class Event:
    """Base class of core events."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class RequestReceived(Event):
    """Server: a request (normally CONNECT) opened ``stream_id``."""

    stream_id: int
    headers: Headers


@dataclass(frozen=True, slots=True)
class ResponseReceived(Event):
    """Client: the answer to our CONNECT (``status`` 0 if it had none that parses)."""

    stream_id: int
    status: int
    headers: Headers


class DataReceived(Event):
    """Tunnel bytes for ``stream_id`` (a view; valid until the next ``receive_data``)."""

    __slots__ = ("data", "stream_id")

    def __init__(self, stream_id: int, data: memoryview) -> None:
        self.stream_id = stream_id
        self.data = data

    def __repr__(self) -> str:
        return f"DataReceived(stream_id={self.stream_id}, data=<{len(self.data)} bytes>)"


@dataclass(frozen=True, slots=True)
class StreamEnded(Event):
    """The peer half-closed ``stream_id`` (END_STREAM): EOF for our reader."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset(Event):
    """``stream_id`` was reset; ``remote`` is False when h2 reset it in answer to a peer's stream error."""

    stream_id: int
    error_code: int
    remote: bool


@dataclass(frozen=True, slots=True)
class WindowUpdated(Event):
    """Send window grew for ``stream_id`` (0: the connection, or every stream): flush pending writes."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class SettingsChanged(Event):
    """The peer's SETTINGS were applied; ``max_concurrent_streams`` bounds the streams we may open."""

    max_concurrent_streams: int


@dataclass(frozen=True, slots=True)
class PingAcked(Event):
    opaque: bytes


@dataclass(frozen=True, slots=True)
class ConnectionTerminated(Event):
    """GOAWAY received (``remote``) or sent because of a protocol error we detected (not ``remote``).

    Streams up to ``last_stream_id`` may complete when the peer sent it with NO_ERROR.
    """

    error_code: int
    last_stream_id: int
    remote: bool
    reason: str = ""
