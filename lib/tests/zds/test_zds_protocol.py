"""Sans-IO ZDS cores: pump bytes between a client core and a server core in memory."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st
from meshkit.zds import (
    MAX_PACKET,
    Packet,
    WorkloadAdded,
    WorkloadDeleted,
    WorkloadInfo,
    WorkloadKept,
    ZdsClientProtocol,
    ZdsFatalError,
    ZdsProtocolError,
    ZdsServerProtocol,
    ZdsSnapshotSent,
    ZdsUsageError,
)
from meshkit.zds.protocol import ClientState, ServerState
from meshproto.istio.workload.zds import zds_pb2

INFO = WorkloadInfo("pod-a", "default", "sa-a")


def connected() -> tuple[ZdsClientProtocol, ZdsServerProtocol]:
    client, server = ZdsClientProtocol(), ZdsServerProtocol()
    assert server.receive_hello(Packet(client.hello())) == zds_pb2.V1
    return client, server


def fd_pair() -> tuple[int, int]:
    return os.pipe()


def roundtrip(client: ZdsClientProtocol, server: ZdsServerProtocol, data: bytes, fds: tuple[int, ...] = ()):
    event = client.receive(Packet(data, fds))
    ack = server.receive_ack(Packet(client.ack()))
    return event, ack


def test_hello_is_bare_v1() -> None:
    msg = zds_pb2.ZdsHello.FromString(ZdsClientProtocol().hello())
    assert msg.version == zds_pb2.V1


def test_snapshot_then_steady_state() -> None:
    client, server = connected()
    r, w = fd_pair()
    try:
        event, ack = roundtrip(client, server, server.add("uid-1", INFO), (r,))
        assert event == WorkloadAdded("uid-1", INFO, r, in_snapshot=True)
        assert ack.ok
        assert ack.request == "add"
        assert ack.uid == "uid-1"
        event, _ = roundtrip(client, server, server.keep("uid-2"))
        assert event == WorkloadKept("uid-2")
        event, ack = roundtrip(client, server, server.snapshot_sent())
        assert event == ZdsSnapshotSent(frozenset({"uid-1", "uid-2"}))
        assert client.state is ClientState.STEADY
        assert server.state is ServerState.STEADY
        event, _ = roundtrip(client, server, server.delete("uid-1"))
        assert event == WorkloadDeleted("uid-1")
        event, _ = roundtrip(client, server, server.add("uid-3", INFO), (w,))
        assert isinstance(event, WorkloadAdded)
        assert not event.in_snapshot
    finally:
        os.close(r)
        os.close(w)


def test_nack_reaches_the_server() -> None:
    client, server = connected()
    client.receive(Packet(server.keep("uid-1")))
    ack = server.receive_ack(Packet(client.ack("failure to start proxy : boom")))
    assert not ack.ok
    assert ack.error == "failure to start proxy : boom"


def test_del_uses_field_two() -> None:
    _, server = connected()
    raw = server.delete("x")
    # field 2 (del), length-delimited; inside it field 2 (uid)
    assert raw[0] == (2 << 3 | 2)
    assert raw[2] == (2 << 3 | 2)


def test_one_outstanding_request() -> None:
    client, server = connected()
    server.keep("a")
    with pytest.raises(ZdsUsageError):
        server.keep("b")
    with pytest.raises(ZdsUsageError):
        client.ack()


@pytest.mark.parametrize("second", ["keep", "snapshot"])
def test_keep_or_second_snapshot_after_snapshot_is_fatal(second: str) -> None:
    client, server = connected()
    roundtrip(client, server, server.snapshot_sent())
    request = (
        zds_pb2.WorkloadRequest(keep=zds_pb2.KeepWorkload(uid="a"))
        if second == "keep"
        else zds_pb2.WorkloadRequest(snapshot_sent=zds_pb2.SnapshotSent())
    )
    with pytest.raises(ZdsFatalError) as info:
        client.receive(Packet(request.SerializeToString()))
    assert info.value.reply is not None
    assert zds_pb2.WorkloadResponse.FromString(info.value.reply).ack.error
    assert client.state is ClientState.BROKEN


def test_add_without_info_is_fatal_and_closes_fd() -> None:
    client, _ = connected()
    r, w = fd_pair()
    os.close(w)
    data = zds_pb2.WorkloadRequest(add=zds_pb2.AddWorkload(uid="a")).SerializeToString()
    with pytest.raises(ZdsFatalError):
        client.receive(Packet(data, (r,)))
    with pytest.raises(OSError):
        os.fstat(r)


def test_add_without_fd_is_protocol_error() -> None:
    client, server = connected()
    with pytest.raises(ZdsProtocolError, match="no control message") as info:
        client.receive(Packet(server.add("a", INFO)))
    assert not isinstance(info.value, ZdsFatalError)


def test_fd_on_other_message_is_rejected_and_closed() -> None:
    client, server = connected()
    r, w = fd_pair()
    os.close(w)
    with pytest.raises(ZdsProtocolError, match="unexpected control message"):
        client.receive(Packet(server.keep("a"), (r,)))
    with pytest.raises(OSError):
        os.fstat(r)


def test_two_fds_on_add_rejected() -> None:
    client, server = connected()
    r, w = fd_pair()
    with pytest.raises(ZdsProtocolError, match="2 fds"):
        client.receive(Packet(server.add("a", INFO), (r, w)))
    for fd in (r, w):
        with pytest.raises(OSError):
            os.fstat(fd)


def test_garbage_is_protocol_error_with_nack() -> None:
    client, _ = connected()
    with pytest.raises(ZdsProtocolError) as info:
        client.receive(Packet(b"\xff\xff\xff"))
    assert info.value.reply is not None


def test_oversized_request_refused() -> None:
    _, server = connected()
    with pytest.raises(ZdsUsageError):
        server.add("u" * MAX_PACKET, INFO)


def test_unsolicited_ack_is_protocol_error() -> None:
    _client, server = connected()
    with pytest.raises(ZdsProtocolError):
        server.receive_ack(Packet(zds_pb2.WorkloadResponse(ack=zds_pb2.Ack()).SerializeToString()))


def test_long_nack_is_cut_to_fit() -> None:
    client, server = connected()
    client.receive(Packet(server.keep("a")))
    assert len(client.ack("x" * 5000)) < MAX_PACKET


uids = st.text(alphabet="abcdef0123456789-", min_size=1, max_size=36)


@given(st.lists(st.tuples(st.sampled_from(["keep", "del"]), uids), max_size=30), st.lists(uids, max_size=10))
def test_snapshot_names_exactly_the_kept(snapshot_ops: list[tuple[str, str]], later: list[str]) -> None:
    client, server = connected()
    expected: set[str] = set()
    for op, uid in snapshot_ops:
        data = server.keep(uid) if op == "keep" else server.delete(uid)
        roundtrip(client, server, data)
        if op == "keep":
            expected.add(uid)
        else:
            expected.discard(uid)
    event, _ = roundtrip(client, server, server.snapshot_sent())
    assert event == ZdsSnapshotSent(frozenset(expected))
    for uid in later:
        event, ack = roundtrip(client, server, server.delete(uid))
        assert event == WorkloadDeleted(uid)
        assert ack.ok


@given(st.binary(max_size=64), st.integers(min_value=0, max_value=2))
def test_client_core_never_crashes_on_garbage(data: bytes, nfds: int) -> None:
    """Any packet yields an event or a ZdsProtocolError (with a nack), and never leaks a descriptor."""
    client, _ = connected()
    fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(nfds)]
    try:
        event = client.receive(Packet(data, tuple(fds)))
    except ZdsProtocolError as exc:
        reply = exc.reply
        assert reply is not None  # every protocol error carries its nack
        for fd in fds:
            with pytest.raises(OSError):
                os.fstat(fd)
        return
    client.ack()
    if isinstance(event, WorkloadAdded):
        assert len(fds) == 1
        assert event.netns_fd == fds[0]
        os.close(fds[0])
    else:
        assert not fds
