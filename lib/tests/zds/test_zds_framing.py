"""ZDS framing on a real SOCK_SEQPACKET socketpair: boundaries, fd passing, truncation."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
from meshkit.zds import MAX_PACKET, ZdsProtocolError, recv_packet, send_packet


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    yield a, b
    a.close()
    b.close()


def test_boundaries_are_kept(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    send_packet(a, b"one")
    send_packet(a, b"two")
    first, second = recv_packet(b), recv_packet(b)
    assert first is not None
    assert first.data == b"one"
    assert second is not None
    assert second.data == b"two"


def test_fd_passing_gives_the_same_file(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    fd = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        send_packet(a, b"add", fd)
        packet = recv_packet(b)
        assert packet is not None
        assert len(packet.fds) == 1
        got = packet.fds[0]
        assert got != fd
        assert os.fstat(got).st_ino == os.fstat(fd).st_ino
        assert os.get_inheritable(got) is False  # MSG_CMSG_CLOEXEC
        os.close(got)
    finally:
        os.close(fd)


def test_eof_is_none(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.close()
    assert recv_packet(b) is None


def test_oversized_send_refused(pair: tuple[socket.socket, socket.socket]) -> None:
    a, _ = pair
    with pytest.raises(ZdsProtocolError):
        send_packet(a, b"x" * MAX_PACKET)


def test_truncated_receive_is_an_error(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    a.sendmsg([b"x" * (MAX_PACKET + 10)])
    with pytest.raises(ZdsProtocolError, match="truncated"):
        recv_packet(b)


def test_too_many_fds_are_closed(pair: tuple[socket.socket, socket.socket]) -> None:
    import array

    a, b = pair
    fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(8)]
    try:
        a.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())])
        with pytest.raises(ZdsProtocolError, match="control message truncated"):
            recv_packet(b)
    finally:
        for fd in fds:
            os.close(fd)
