"""Sans-IO ZDS state machines for both ends (wire-contracts.md §5.3). No sockets, no loop, no clock.

:class:`ZdsClientProtocol` is ztunnel's end: ``hello()`` gives the first packet, ``receive(packet)`` turns one
request packet into a :data:`~meshkit.zds.messages.ZdsEvent`, and ``ack(error)`` gives the reply that must
follow every request. :class:`ZdsServerProtocol` is the CNI agent's end: ``receive_hello``, then ``add`` /
``keep`` / ``snapshot_sent`` / ``delete`` produce request bytes, and ``receive_ack`` consumes the answer.

Invariants:
- strictly one outstanding request per connection; acks correlate only by order;
- ``keep`` is valid only before ``snapshot_sent``, and ``snapshot_sent`` only once per connection;
- only ``add`` carries a descriptor: the client closes any descriptor that arrives on another message (or in
  excess) before raising, so a protocol error never leaks a netns fd.

Client states::

    NEW --hello()--> SNAPSHOT --SnapshotSent--> STEADY
    any --protocol error--> BROKEN (fatal errors too; the shell decides whether to reconnect)
"""

from __future__ import annotations

import enum

from google.protobuf.message import DecodeError
from meshproto.istio.workload.zds import zds_pb2

from meshkit.zds.errors import ZdsFatalError, ZdsProtocolError, ZdsUsageError
from meshkit.zds.framing import MAX_PACKET, Packet, close_fds
from meshkit.zds.messages import (
    WorkloadAdded,
    WorkloadDeleted,
    WorkloadInfo,
    WorkloadKept,
    ZdsAck,
    ZdsEvent,
    ZdsSnapshotSent,
)

__all__ = ["ClientState", "ServerState", "ZdsClientProtocol", "ZdsServerProtocol", "encode_ack"]


def encode_ack(error: str = "") -> bytes:
    """A ``WorkloadResponse{ack}``; long errors are cut so the packet always fits."""
    data = zds_pb2.WorkloadResponse(ack=zds_pb2.Ack(error=error)).SerializeToString()
    if len(data) >= MAX_PACKET:
        data = zds_pb2.WorkloadResponse(ack=zds_pb2.Ack(error=error[: MAX_PACKET - 16])).SerializeToString()
    return data


class ClientState(enum.Enum):
    NEW = "new"
    SNAPSHOT = "snapshot"
    STEADY = "steady"
    BROKEN = "broken"


class ZdsClientProtocol:
    """ztunnel's side of one ZDS connection."""

    def __init__(self) -> None:
        self.state = ClientState.NEW
        self._awaiting_ack = False
        self._named: set[str] = set()

    @property
    def snapshot_done(self) -> bool:
        return self.state is ClientState.STEADY

    def hello(self) -> bytes:
        """The bare ``ZdsHello{version=V1}`` ztunnel sends right after connecting."""
        if self.state is not ClientState.NEW:
            raise ZdsUsageError("hello was already sent on this connection")
        self.state = ClientState.SNAPSHOT
        return zds_pb2.ZdsHello(version=zds_pb2.V1).SerializeToString()

    def ack(self, error: str = "") -> bytes:
        """The answer to the request last returned by :meth:`receive` (empty error = success)."""
        if not self._awaiting_ack:
            raise ZdsUsageError("no request is waiting for an ack")
        self._awaiting_ack = False
        return encode_ack(error)

    def receive(self, packet: Packet) -> ZdsEvent:
        """Decode one request. On error the descriptors are closed and the exception carries the nack."""
        if self.state is ClientState.NEW:
            close_fds(packet.fds)
            raise ZdsUsageError("send the hello before receiving")
        if self._awaiting_ack:
            close_fds(packet.fds)
            raise self._broken(ZdsProtocolError, "request received while the previous one is not acked")
        try:
            event = self._decode(packet)
        except ZdsProtocolError:
            close_fds(packet.fds)
            raise
        self._awaiting_ack = True
        return event

    def _decode(self, packet: Packet) -> ZdsEvent:
        request = zds_pb2.WorkloadRequest()
        try:
            request.ParseFromString(packet.data)
        except DecodeError as exc:
            raise self._broken(ZdsProtocolError, f"unreadable ZDS request: {exc}") from None
        kind = request.WhichOneof("payload")
        if kind != "add" and packet.fds:
            raise self._broken(ZdsProtocolError, f"unexpected control message on {kind or 'empty'} request")
        if kind == "add":
            return self._on_add(request.add, packet.fds)
        if kind == "keep":
            return self._on_keep(request.keep.uid)
        if kind == "del":
            return self._on_del(request)
        if kind == "snapshot_sent":
            return self._on_snapshot_sent()
        raise self._broken(ZdsProtocolError, "ZDS request without a payload (newer CNI agent?)")

    def _on_add(self, add: zds_pb2.AddWorkload, fds: tuple[int, ...]) -> WorkloadAdded:
        if not add.HasField("workload_info"):
            raise self._broken(ZdsFatalError, f"AddWorkload for {add.uid!r} has no workload_info")
        if not fds:
            raise self._broken(
                ZdsProtocolError, f"AddWorkload for {add.uid!r}: no control message (netns fd)"
            )
        if len(fds) > 1:
            raise self._broken(
                ZdsProtocolError, f"AddWorkload for {add.uid!r} carried {len(fds)} fds, want 1"
            )
        in_snapshot = self.state is ClientState.SNAPSHOT
        if in_snapshot:
            self._named.add(add.uid)
        return WorkloadAdded(add.uid, WorkloadInfo.from_proto(add.workload_info), fds[0], in_snapshot)

    def _on_keep(self, uid: str) -> WorkloadKept:
        if self.state is not ClientState.SNAPSHOT:
            raise self._broken(ZdsFatalError, f"KeepWorkload for {uid!r} after the snapshot")
        self._named.add(uid)
        return WorkloadKept(uid)

    def _on_del(self, request: zds_pb2.WorkloadRequest) -> WorkloadDeleted:
        uid = getattr(request, "del").uid  # ``del`` is a Python keyword, so no attribute syntax
        self._named.discard(uid)
        return WorkloadDeleted(uid)

    def _on_snapshot_sent(self) -> ZdsSnapshotSent:
        if self.state is not ClientState.SNAPSHOT:
            raise self._broken(ZdsFatalError, "a second SnapshotSent on one connection")
        self.state = ClientState.STEADY
        return ZdsSnapshotSent(frozenset(self._named))

    def _broken(self, cls: type[ZdsProtocolError], message: str) -> ZdsProtocolError:
        self.state = ClientState.BROKEN
        self._awaiting_ack = False
        return cls(message, reply=encode_ack(message))


class ServerState(enum.Enum):
    AWAIT_HELLO = "await_hello"
    SNAPSHOT = "snapshot"
    STEADY = "steady"
    BROKEN = "broken"


class ZdsServerProtocol:
    """The CNI agent's side of one ZDS connection."""

    def __init__(self) -> None:
        self.state = ServerState.AWAIT_HELLO
        self._outstanding: tuple[str, str] | None = None

    @property
    def outstanding(self) -> bool:
        return self._outstanding is not None

    def receive_hello(self, packet: Packet) -> int:
        """Check ztunnel's hello; returns the version number it announced."""
        if self.state is not ServerState.AWAIT_HELLO:
            raise ZdsUsageError("hello already received")
        close_fds(packet.fds)
        hello = zds_pb2.ZdsHello()
        try:
            hello.ParseFromString(packet.data)
        except DecodeError as exc:
            self.state = ServerState.BROKEN
            raise ZdsProtocolError(f"unreadable ZdsHello: {exc}") from None
        if packet.fds:
            self.state = ServerState.BROKEN
            raise ZdsProtocolError("ZdsHello carried a file descriptor")
        self.state = ServerState.SNAPSHOT
        return int(hello.version)

    def add(self, uid: str, info: WorkloadInfo) -> bytes:
        """``AddWorkload`` bytes; the shell must send them with the pod's netns fd attached."""
        request = zds_pb2.WorkloadRequest(add=zds_pb2.AddWorkload(uid=uid, workload_info=info.to_proto()))
        return self._request("add", uid, request)

    def keep(self, uid: str) -> bytes:
        if self.state is not ServerState.SNAPSHOT:
            raise ZdsUsageError("keep is only valid before snapshot_sent")
        return self._request("keep", uid, zds_pb2.WorkloadRequest(keep=zds_pb2.KeepWorkload(uid=uid)))

    def delete(self, uid: str) -> bytes:
        request = zds_pb2.WorkloadRequest()
        getattr(request, "del").uid = uid  # ``del`` is a Python keyword, so no attribute syntax
        return self._request("del", uid, request)

    def snapshot_sent(self) -> bytes:
        if self.state is not ServerState.SNAPSHOT:
            raise ZdsUsageError("snapshot_sent is only valid once, after the hello")
        return self._request(
            "snapshot_sent", "", zds_pb2.WorkloadRequest(snapshot_sent=zds_pb2.SnapshotSent())
        )

    def receive_ack(self, packet: Packet) -> ZdsAck:
        """Consume ztunnel's answer to the outstanding request."""
        close_fds(packet.fds)
        if self._outstanding is None:
            self.state = ServerState.BROKEN
            raise ZdsProtocolError("unsolicited message from ztunnel")
        response = zds_pb2.WorkloadResponse()
        try:
            response.ParseFromString(packet.data)
        except DecodeError as exc:
            self.state = ServerState.BROKEN
            raise ZdsProtocolError(f"unreadable WorkloadResponse: {exc}") from None
        if response.WhichOneof("payload") != "ack" or packet.fds:
            self.state = ServerState.BROKEN
            raise ZdsProtocolError("WorkloadResponse is not a plain ack")
        kind, uid = self._outstanding
        self._outstanding = None
        if kind == "snapshot_sent":
            self.state = ServerState.STEADY
        return ZdsAck(kind, uid, response.ack.error)

    def _request(self, kind: str, uid: str, request: zds_pb2.WorkloadRequest) -> bytes:
        if self.state in (ServerState.AWAIT_HELLO, ServerState.BROKEN):
            raise ZdsUsageError(f"cannot send {kind} in state {self.state.value}")
        if self._outstanding is not None:
            raise ZdsUsageError(f"{kind} while {self._outstanding[0]} is still waiting for its ack")
        data = request.SerializeToString()
        if len(data) >= MAX_PACKET:
            raise ZdsUsageError(
                f"{kind} for {uid!r} is {len(data)} bytes; ZDS messages must be < {MAX_PACKET}"
            )
        self._outstanding = (kind, uid)
        return data
