"""The h2 internals the DATA fast paths rely on (core.py docstring). If h2 changes, these fail first."""

from __future__ import annotations

import h2
import h2.config
import h2.connection
import hyperframe.frame
from meshkit.hbone import core
from meshkit.hbone.core import H2_VERSION, HboneCore


def test_h2_version_is_pinned() -> None:
    assert h2.__version__ == H2_VERSION == "4.4.1"


def test_data_frame_repr_does_not_hexlify_the_payload() -> None:
    assert core._data_body_repr is hyperframe.frame.DataFrame._body_repr
    frame = hyperframe.frame.DataFrame(1, data=b"\xab" * 100_000)
    text = repr(frame)
    assert "<100000 bytes>" in text
    assert "abab" not in text


def test_outbound_windows_are_plain_attributes_h2_raises_on_window_update() -> None:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    sid = client.get_next_available_stream_id()
    client.send_headers(sid, [(":method", "CONNECT"), (":authority", "1.2.3.4:5")])
    server.receive_data(client.data_to_send())
    # the fast path decrements these two by hand...
    conn_before = client.outbound_flow_control_window
    stream_before = client.streams[sid].outbound_flow_control_window
    client.outbound_flow_control_window -= 1000
    client.streams[sid].outbound_flow_control_window -= 1000
    assert client.local_flow_control_window(sid) == min(conn_before, stream_before) - 1000
    # ...and h2 adds WINDOW_UPDATE increments to the same attributes
    server.increment_flow_control_window(1000)
    server.increment_flow_control_window(1000, stream_id=sid)
    client.receive_data(server.data_to_send())
    assert client.outbound_flow_control_window == conn_before
    assert client.streams[sid].outbound_flow_control_window == stream_before


def test_settings_we_set_before_initiate_are_sent_and_limits_applied() -> None:
    c = HboneCore(client_side=False)
    h2c = c._h2
    assert h2c.max_inbound_frame_size == 1024 * 1024
    assert h2c.decoder.max_header_list_size == 64 * 1024
    assert h2c.local_settings.initial_window_size == 4 * 1024 * 1024
    # streams is a dict of H2Stream with the attribute the fast path writes
    assert isinstance(h2c.streams, dict)
    # h2's output buffer, which the core peeks at before calling data_to_send()
    assert isinstance(h2c._data_to_send, bytearray)
    # the server advertises 200 concurrent streams, then lifts h2's own (connection-error) enforcement
    c.initiate()
    frame = c.data_to_send()
    assert b"\x00\x03\x00\x00\x00\xc8" in frame  # SETTINGS_MAX_CONCURRENT_STREAMS = 200 on the wire
    assert h2c.local_settings.max_concurrent_streams == 2**31 - 1


def test_empty_end_stream_data_frame_leaves_windows_alone() -> None:
    client = HboneCore(True)
    server = HboneCore(False)
    client.initiate()
    server.initiate()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    sid = client.connect("1.2.3.4:5")
    server.receive_data(client.data_to_send())
    before = server._h2._inbound_flow_control_window_manager.current_window_size
    events = server.receive_data(core.frame_header(0, 0, 0x1, sid))
    assert [type(e).__name__ for e in events] == ["StreamEnded"]
    assert server._h2._inbound_flow_control_window_manager.current_window_size == before


def test_connection_state_machine_has_the_states_graceful_goaway_restores() -> None:
    states = h2.connection.ConnectionState
    assert {s.name for s in states} == {"IDLE", "CLIENT_OPEN", "SERVER_OPEN", "CLOSED"}
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.close_connection()
    assert conn.state_machine.state is states.CLOSED
    conn.state_machine.state = states.CLIENT_OPEN
    conn.ping(b"12345678")  # accepted again
