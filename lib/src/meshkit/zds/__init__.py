"""ZDS: how the istio-cni node agent hands pod network namespaces to ztunnel (wire-contracts.md §5).

Transport: ``AF_UNIX`` ``SOCK_SEQPACKET`` at ``/var/run/ztunnel/ztunnel.sock``; the CNI agent is the server,
ztunnel the client. One protobuf message per packet, each < 1024 bytes; ``AddWorkload`` carries the pod's
netns fd as ``SCM_RIGHTS``, nothing else carries an fd. Strictly one outstanding request; ztunnel acks
each one.

Layers (sans-IO core + thin asyncio shell, STYLE.md practice 1):

- :mod:`meshkit.zds.framing` -- ``send_packet(sock, data, fd=None)``, ``recv_packet(sock) -> Packet | None``.
- :mod:`meshkit.zds.protocol` -- the pure state machines:

  - ``ZdsClientProtocol`` (ztunnel): ``hello() -> bytes``; ``receive(Packet) -> ZdsEvent``; ``ack(error="")
    -> bytes``. Events: ``WorkloadAdded(uid, info, netns_fd, in_snapshot)``, ``WorkloadKept(uid)``,
    ``WorkloadDeleted(uid)``, ``ZdsSnapshotSent(named)`` (``named`` = uids added/kept on this connection;
    drop every other pod). Errors carry the nack in ``exc.reply``.
  - ``ZdsServerProtocol`` (CNI agent): ``receive_hello(Packet) -> version``; ``add(uid, info)``,
    ``keep(uid)`` (snapshot only), ``snapshot_sent()`` (once), ``delete(uid)`` each ``-> bytes``;
    ``receive_ack(Packet) -> ZdsAck(request, uid, error)``.

- :mod:`meshkit.zds.aio` -- the asyncio shells:

  - ztunnel: ``conn = await ZdsClientConnection.connect(path)`` (sends the hello), then loop
    ``event = await conn.next_event()`` / ``await conn.ack(error)``; ``conn.close()``.
  - CNI agent::

        async def on_ztunnel(conn: ZdsServerConnection) -> None:   # called after the hello arrived
            for pod in pods:                                          # the snapshot
                ack = await conn.add(pod.uid, WorkloadInfo(name, ns, sa), netns_fd)   # or conn.keep(uid)
            await conn.snapshot_sent()
            while await conn.probe():                                 # keepalive: False = ztunnel gone
                ...                                                   # later: conn.add(...), conn.delete(uid)

        async with ZdsServer(path, on_ztunnel) as server:   # removes a stale socket file, 5 accepts/s
            ...
            server.connections                               # live connections (add -> newest, del -> all)

    Each request waits for its ack (5 s deadlines) and returns a ``ZdsAck``; ``ack.ok`` is False when ztunnel
    could not start the pod proxy (it retries on its own). The fd passed to ``add`` stays the caller's.

Errors (:mod:`meshkit.zds.errors`): ``ZdsProtocolError`` (nack, close, reconnect), ``ZdsFatalError`` (nack,
close, do not reconnect), ``ZdsClosed`` (EOF), ``ZdsTimeout`` (deadline), ``ZdsUsageError`` (local misuse).
"""

from __future__ import annotations

from meshkit.zds.aio import DEFAULT_PATH, ZdsClientConnection, ZdsServer, ZdsServerConnection
from meshkit.zds.errors import (
    ZdsClosed,
    ZdsError,
    ZdsFatalError,
    ZdsProtocolError,
    ZdsTimeout,
    ZdsUsageError,
)
from meshkit.zds.framing import MAX_PACKET, Packet, recv_packet, send_packet
from meshkit.zds.messages import (
    WorkloadAdded,
    WorkloadDeleted,
    WorkloadInfo,
    WorkloadKept,
    ZdsAck,
    ZdsEvent,
    ZdsSnapshotSent,
)
from meshkit.zds.protocol import ZdsClientProtocol, ZdsServerProtocol

__all__ = [
    "DEFAULT_PATH",
    "MAX_PACKET",
    "Packet",
    "WorkloadAdded",
    "WorkloadDeleted",
    "WorkloadInfo",
    "WorkloadKept",
    "ZdsAck",
    "ZdsClientConnection",
    "ZdsClientProtocol",
    "ZdsClosed",
    "ZdsError",
    "ZdsEvent",
    "ZdsFatalError",
    "ZdsProtocolError",
    "ZdsServer",
    "ZdsServerConnection",
    "ZdsServerProtocol",
    "ZdsSnapshotSent",
    "ZdsTimeout",
    "ZdsUsageError",
    "recv_packet",
    "send_packet",
]
