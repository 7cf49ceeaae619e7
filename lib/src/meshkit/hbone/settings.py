"""Typed HBONE settings: HTTP/2 windows, frame size, pool limits and keepalive (spec behaviour.md §2.5, §2.8).

Defaults are upstream ztunnel's (anchors.md §3c). Environment variable names are ztunnel's where it has one.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshkit.settings import env, parse_duration

MIB = 1024 * 1024
KIB = 1024


@dataclass(frozen=True, slots=True)
class HboneSettings:
    """Everything tunable about HBONE. Build once with ``meshkit.settings.load(HboneSettings)``."""

    stream_window: int = env("HTTP2_STREAM_WINDOW_SIZE", 4 * MIB, "HTTP/2 initial stream window, bytes.")
    connection_window: int = env(
        "HTTP2_CONNECTION_WINDOW_SIZE", 16 * MIB, "HTTP/2 connection receive window, bytes."
    )
    max_frame_size: int = env("HTTP2_FRAME_SIZE", 1 * MIB, "HTTP/2 SETTINGS_MAX_FRAME_SIZE we accept, bytes.")
    client_max_header_list: int = env(
        "HBONE_CLIENT_MAX_HEADER_LIST_SIZE", 16 * KIB, "Max header list size the client side accepts."
    )
    server_max_header_list: int = env(
        "HBONE_SERVER_MAX_HEADER_LIST_SIZE", 64 * KIB, "Max header list size the server side accepts."
    )
    server_max_concurrent_streams: int = env(
        "HBONE_SERVER_MAX_CONCURRENT_STREAMS", 200, "SETTINGS_MAX_CONCURRENT_STREAMS the server advertises."
    )
    pool_max_streams_per_connection: int = env(
        "POOL_MAX_STREAMS_PER_CONNECTION", 100, "Streams a pooled connection carries before it is retired."
    )
    pool_unused_release_timeout: float = env(
        "POOL_UNUSED_RELEASE_TIMEOUT",
        300.0,
        "Idle time after which a pooled connection with no streams is closed (5m).",
        parse=parse_duration,
    )
    keepalive_interval: float = env(
        "HBONE_KEEPALIVE_INTERVAL", 10.0, "HTTP/2 PING interval (10s).", parse=parse_duration
    )
    keepalive_timeout: float = env(
        "HBONE_KEEPALIVE_TIMEOUT",
        20.0,
        "Drop a connection whose PING is unanswered this long (20s).",
        parse=parse_duration,
    )
    connect_timeout: float = env(
        "HBONE_CONNECT_TIMEOUT",
        10.0,
        "TCP connect + TLS handshake + CONNECT timeout (10s).",
        parse=parse_duration,
    )
    upstream_connect_timeout: float = env(
        "HBONE_UPSTREAM_CONNECT_TIMEOUT",
        10.0,
        "Server side: upstream TCP connect timeout (10s).",
        parse=parse_duration,
    )
    max_send_buffer: int = env(
        "HBONE_MAX_SEND_BUFFER",
        400 * KIB,
        "Server side: bytes a stream buffers for sending before its writer is paused (400 KiB).",
    )
    client_max_send_buffer: int = env(
        "HBONE_CLIENT_MAX_SEND_BUFFER",
        4 * MIB,
        "Client side: the same limit; upstream uses the stream window (4 MiB).",
    )
