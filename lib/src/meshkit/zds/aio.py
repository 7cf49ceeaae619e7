"""Thin asyncio shells around the ZDS cores: a client connection (ztunnel) and a server (CNI agent).

The shells only move packets: every protocol decision is made by :mod:`meshkit.zds.protocol`. Sockets are
non-blocking ``AF_UNIX``/``SOCK_SEQPACKET``; readiness is awaited with ``loop.add_reader``/``add_writer``
because asyncio has no ``sock_recvmsg`` (we need ancillary data for the netns fd).

Ownership of descriptors: the fd passed to :meth:`ZdsServerConnection.add` stays owned by the caller (the
kernel duplicates it into the peer); an fd received in a :class:`~meshkit.zds.messages.WorkloadAdded` event is
owned by whoever consumes the event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable

from meshkit.drain import TaskOwner
from meshkit.logs import kv
from meshkit.zds.errors import ZdsClosed, ZdsProtocolError, ZdsTimeout
from meshkit.zds.framing import Packet, recv_packet, send_packet
from meshkit.zds.messages import WorkloadInfo, ZdsAck, ZdsEvent
from meshkit.zds.protocol import ZdsClientProtocol, ZdsServerProtocol

__all__ = ["DEFAULT_PATH", "ZdsClientConnection", "ZdsServer", "ZdsServerConnection"]

log = logging.getLogger("zds")

#: Upstream default socket path (ztunnel ``INPOD_UDS``, istio-cni ``ztunnel-uds-address``).
DEFAULT_PATH = "/var/run/ztunnel/ztunnel.sock"
#: Upstream CNI deadlines: hello read, request write and ack read are 5 s each.
DEADLINE_S = 5.0


async def _wait_ready(sock: socket.socket, *, write: bool) -> None:
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not fut.done():
            fut.set_result(None)

    fd = sock.fileno()
    if fd < 0:
        raise ZdsClosed("socket closed")
    (loop.add_writer if write else loop.add_reader)(fd, wake)
    try:
        await fut
    finally:
        (loop.remove_writer if write else loop.remove_reader)(fd)


async def recv(sock: socket.socket) -> Packet:
    """Receive one packet; raises :class:`ZdsClosed` on EOF."""
    while True:
        try:
            packet = recv_packet(sock)
        except BlockingIOError:
            await _wait_ready(sock, write=False)
            continue
        except OSError as exc:
            raise ZdsClosed(f"ZDS receive failed: {exc}") from exc
        if packet is None:
            raise ZdsClosed("peer closed the ZDS connection")
        return packet


async def send(sock: socket.socket, data: bytes, fd: int | None = None) -> None:
    """Send one packet (optionally with one fd)."""
    while True:
        try:
            send_packet(sock, data, fd)
            return
        except BlockingIOError:
            await _wait_ready(sock, write=True)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ZdsClosed(f"ZDS send failed: {exc}") from exc


async def _deadline(aw: Awaitable[Packet] | Awaitable[None], what: str, timeout_s: float) -> Packet | None:
    try:
        return await asyncio.wait_for(aw, timeout_s)
    except TimeoutError:
        raise ZdsTimeout(f"ZDS peer did not {what} within {timeout_s:g}s") from None


class ZdsClientConnection:
    """ztunnel's end of one connection: ``connect``, then ``next_event`` / ``ack`` in turn.

    A protocol error raised by :meth:`next_event` has already had its nack sent; the caller closes and
    reconnects (or stops, for :class:`~meshkit.zds.errors.ZdsFatalError`).
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.protocol = ZdsClientProtocol()

    @classmethod
    async def connect(cls, path: str = DEFAULT_PATH) -> ZdsClientConnection:
        """Connect (non-blocking) and send the hello; raises ``OSError`` when the agent is not listening."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, path)
            conn = cls(sock)
            await send(sock, conn.protocol.hello())
        except BaseException:
            sock.close()
            raise
        return conn

    async def next_event(self) -> ZdsEvent:
        """Wait for the next request; acknowledge it with :meth:`ack` before calling again."""
        packet = await recv(self._sock)
        try:
            return self.protocol.receive(packet)
        except ZdsProtocolError as exc:
            if exc.reply is not None:
                with contextlib.suppress(ZdsClosed, OSError):
                    await send(self._sock, exc.reply)
            raise

    async def ack(self, error: str = "") -> None:
        await send(self._sock, self.protocol.ack(error))

    def close(self) -> None:
        self._sock.close()

    async def __aenter__(self) -> ZdsClientConnection:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self.close()


class ZdsServerConnection:
    """The CNI agent's end of one accepted connection (after the hello). Requests are serialized by a lock."""

    def __init__(self, sock: socket.socket, timeout_s: float = DEADLINE_S) -> None:
        self._sock = sock
        self._timeout_s = timeout_s
        self._lock = asyncio.Lock()
        self.protocol = ZdsServerProtocol()
        self.version = 0

    @property
    def closed(self) -> bool:
        return self._sock.fileno() < 0

    async def receive_hello(self) -> int:
        packet = await _deadline(recv(self._sock), "send its hello", self._timeout_s)
        assert packet is not None
        self.version = self.protocol.receive_hello(packet)
        return self.version

    async def add(self, uid: str, info: WorkloadInfo, netns_fd: int) -> ZdsAck:
        """Send ``AddWorkload`` with ``netns_fd`` (still owned by the caller) and wait for the ack."""
        async with self._lock:
            return await self._exchange(self.protocol.add(uid, info), netns_fd)

    async def keep(self, uid: str) -> ZdsAck:
        async with self._lock:
            return await self._exchange(self.protocol.keep(uid))

    async def delete(self, uid: str) -> ZdsAck:
        async with self._lock:
            return await self._exchange(self.protocol.delete(uid))

    async def snapshot_sent(self) -> ZdsAck:
        async with self._lock:
            return await self._exchange(self.protocol.snapshot_sent())

    async def probe(self, timeout_s: float = 0.01) -> bool:
        """Upstream keepalive: a short read. True = healthy (nothing to read), False = ztunnel went away.

        Data arriving unsolicited is a protocol error.
        """
        async with self._lock:
            try:
                packet = await asyncio.wait_for(recv(self._sock), timeout_s)
            except TimeoutError:
                return True
            except ZdsClosed:
                return False
            self.protocol.receive_ack(packet)  # raises: nothing is outstanding
            return False  # pragma: no cover - receive_ack always raises here

    async def _exchange(self, data: bytes, fd: int | None = None) -> ZdsAck:
        await _deadline(send(self._sock, data, fd), "accept a request", self._timeout_s)
        packet = await _deadline(recv(self._sock), "ack", self._timeout_s)
        assert packet is not None
        return self.protocol.receive_ack(packet)

    def close(self) -> None:
        self._sock.close()


ConnectionHandler = Callable[[ZdsServerConnection], Awaitable[None]]


class ZdsServer:
    """Listens on the ZDS socket; runs ``handler(conn)`` per ztunnel connection after its hello.

    The handler sends the snapshot and then steady-state requests; when it returns (or raises) the connection
    is closed. At most ``accepts_per_s`` connections are accepted per second, as upstream.
    """

    def __init__(
        self,
        path: str,
        handler: ConnectionHandler,
        *,
        accepts_per_s: float = 5.0,
        timeout_s: float = DEADLINE_S,
    ) -> None:
        self.path = path
        self._handler = handler
        self._min_interval = 1.0 / accepts_per_s
        self._timeout_s = timeout_s
        self._sock: socket.socket | None = None
        self._tasks = TaskOwner("zds-server")
        self.connections: set[ZdsServerConnection] = set()

    async def start(self) -> None:
        """Remove a stale socket file, bind, listen and start accepting."""
        with contextlib.suppress(FileNotFoundError):
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        sock.bind(self.path)
        sock.listen(16)
        self._sock = sock
        self._tasks.spawn(self._accept_loop(sock), name="accept")

    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn_sock, _ = await loop.sock_accept(sock)
            conn_sock.setblocking(False)
            self._tasks.spawn(self._serve(ZdsServerConnection(conn_sock, self._timeout_s)), name="conn")
            await asyncio.sleep(self._min_interval)  # rate limit, not a wait for an event

    async def _serve(self, conn: ZdsServerConnection) -> None:
        self.connections.add(conn)
        try:
            version = await conn.receive_hello()
            log.info("ztunnel connected", extra=kv(version=version))
            await self._handler(conn)
        except (ZdsClosed, ZdsTimeout, ZdsProtocolError) as exc:
            log.info("ztunnel connection ended", extra=kv(reason=str(exc)))
        finally:
            self.connections.discard(conn)
            conn.close()

    async def close(self) -> None:
        """Stop accepting, end every connection, remove the socket file."""
        await self._tasks.close()
        for conn in list(self.connections):
            conn.close()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    async def __aenter__(self) -> ZdsServer:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()
