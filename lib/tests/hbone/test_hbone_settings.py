"""HBONE settings: upstream defaults, and overrides from the environment."""

from __future__ import annotations

import pytest
from meshkit.hbone.settings import KIB, MIB, HboneSettings
from meshkit.settings import SettingsError, load


def test_defaults_are_ztunnels() -> None:
    s = load(HboneSettings, {})
    assert (s.stream_window, s.connection_window, s.max_frame_size) == (4 * MIB, 16 * MIB, 1 * MIB)
    assert (s.client_max_header_list, s.server_max_header_list) == (16 * KIB, 64 * KIB)
    assert s.server_max_concurrent_streams == 200
    assert s.pool_max_streams_per_connection == 100
    assert s.pool_unused_release_timeout == 300.0
    assert (s.keepalive_interval, s.keepalive_timeout, s.connect_timeout) == (10.0, 20.0, 10.0)
    assert (s.client_max_send_buffer, s.max_send_buffer) == (4 * MIB, 400 * KIB)


def test_environment_overrides() -> None:
    s = load(
        HboneSettings,
        {
            "POOL_MAX_STREAMS_PER_CONNECTION": "7",
            "POOL_UNUSED_RELEASE_TIMEOUT": "2m",
            "HTTP2_FRAME_SIZE": "65536",
        },
    )
    assert s.pool_max_streams_per_connection == 7
    assert s.pool_unused_release_timeout == 120.0
    assert s.max_frame_size == 65536


def test_bad_value_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="POOL_UNUSED_RELEASE_TIMEOUT"):
        load(HboneSettings, {"POOL_UNUSED_RELEASE_TIMEOUT": "soon"})
