"""Network-namespace helpers: run code inside another netns from a thread of this process.

A network namespace is per *thread* in Linux: ``setns(fd, CLONE_NEWNET)`` moves only the calling
thread. So code that must create sockets in a pod's netns (ztunnel's in-pod mode, the CNI agent's in-pod
iptables) runs in a thread that entered that netns, and sockets created there keep that netns for their
whole life, whichever thread uses them afterwards.

Invariant: a thread that entered a foreign netns is never handed back to a shared pool.
:func:`run_in_netns` and :func:`arun_in_netns` use a fresh thread per call (it dies with the call);
:class:`NetnsThread` is one dedicated worker thread per netns for hot paths (one ``connect`` per proxied
connection), closed with its owner. The asyncio default executor is never used for netns work.

A netns is named by a :data:`NetnsRef`: an ``int`` is an open fd (borrowed, never closed here), a ``Path``
or a ``str`` containing ``/`` is a path (``/proc/<pid>/ns/net``, ``/run/netns/<name>``), and any other
``str`` is a name under ``/run/netns`` as ``ip netns`` creates it.

:func:`temp_netns` is a test helper: a named netns created with ``ip netns add`` and always deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
import secrets
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "CLONE_NEWNET",
    "NETNS_RUN_DIR",
    "NetnsRef",
    "NetnsThread",
    "TempNetns",
    "arun_in_netns",
    "is_netns_fd",
    "netns_inode",
    "netns_path",
    "open_netns",
    "run_in_netns",
    "setns",
    "temp_netns",
]

T = TypeVar("T")
NetnsRef = str | int | Path

CLONE_NEWNET = 0x40000000
NETNS_RUN_DIR = Path("/run/netns")
_NSFS_MAGIC = 0x6E736673
_NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3) from <linux/nsfs.h>

_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """Move the calling thread into the namespace ``fd`` refers to."""
    native = getattr(os, "setns", None)  # Python >= 3.12
    if native is not None:
        native(fd, nstype)
        return
    if _libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns(fd={fd}): {os.strerror(err)}")


def netns_path(ref: str | Path) -> Path:
    """The filesystem path of a netns given by name or path."""
    if isinstance(ref, Path) or "/" in ref:
        return Path(ref)
    return NETNS_RUN_DIR / ref


def open_netns(ref: str | Path) -> int:
    """Open a netns by name or path; the caller owns (and closes) the returned fd. Checks it is a netns."""
    fd = os.open(netns_path(ref), os.O_RDONLY | os.O_CLOEXEC)
    if not is_netns_fd(fd):
        os.close(fd)
        raise ValueError(f"{netns_path(ref)} is not a network namespace")
    return fd


def _fstatfs_type(fd: int) -> int:
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on x86_64/aarch64; f_type comes first
    if _libc.fstatfs(ctypes.c_int(fd), buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ctypes.c_long.from_buffer(buf).value


def is_netns_fd(fd: int) -> bool:
    """True when ``fd`` refers to a network namespace (ioctl NS_GET_NSTYPE, else an nsfs fstatfs check)."""
    try:
        return fcntl.ioctl(fd, _NS_GET_NSTYPE) == CLONE_NEWNET
    except OSError:
        pass
    # Kernels before 4.11 lack NS_GET_NSTYPE: accept any nsfs file (cannot tell net from other kinds).
    try:
        return _fstatfs_type(fd) == _NSFS_MAGIC
    except OSError:
        return False


def netns_inode(ref: NetnsRef) -> int:
    """The inode number identifying a netns (same netns, same inode): ZDS uses it to spot a new netns."""
    if isinstance(ref, int):
        return os.fstat(ref).st_ino
    return os.stat(netns_path(ref)).st_ino


@contextlib.contextmanager
def _netns_fd(ref: NetnsRef) -> Iterator[int]:
    """A netns fd valid for the block; an int ref is borrowed, anything else is opened and closed here."""
    if isinstance(ref, int):
        yield ref
        return
    fd = open_netns(ref)
    try:
        yield fd
    finally:
        os.close(fd)


def _enter_and_call(fd: int, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
    setns(fd, CLONE_NEWNET)
    return fn(*args)


def run_in_netns(netns: NetnsRef, fn: Callable[..., T], *args: Any) -> T:
    """Call ``fn(*args)`` in a fresh thread that entered ``netns``; block until it returns (or raises)."""
    outcome: list[Any] = []

    def body(fd: int) -> None:
        try:
            outcome.append((True, _enter_and_call(fd, fn, args)))
        except BaseException as exc:
            outcome.append((False, exc))

    with _netns_fd(netns) as fd:
        thread = threading.Thread(target=body, args=(fd,), name="netns-call", daemon=True)
        thread.start()
        thread.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


async def arun_in_netns(netns: NetnsRef, fn: Callable[..., T], *args: Any) -> T:
    """Like :func:`run_in_netns` without blocking the loop. The netns fd stays open until the thread ends."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    stack = contextlib.ExitStack()
    fd = stack.enter_context(_netns_fd(netns))

    def settle(ok: bool, value: Any) -> None:
        if future.cancelled():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def body() -> None:
        try:
            result: tuple[bool, Any] = (True, _enter_and_call(fd, fn, args))
        except BaseException as exc:
            result = (False, exc)
        finally:
            stack.close()
        with contextlib.suppress(RuntimeError):  # loop closed while we ran: nobody is waiting any more
            loop.call_soon_threadsafe(settle, *result)

    try:
        threading.Thread(target=body, name="netns-acall", daemon=True).start()
    except BaseException:
        stack.close()
        raise
    return await future


class NetnsThread:
    """One dedicated worker thread living in one netns; calls run in order on that thread.

    The netns is entered once, at construction (a bad fd or path raises there). :meth:`close` stops the
    thread; the object is also a context manager.
    """

    def __init__(self, netns: NetnsRef, name: str = "netns") -> None:
        self.name = name
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"netns-{name}")
        try:
            with _netns_fd(netns) as fd:
                # max_workers=1: this first job pins the only thread into the netns for good.
                self._pool.submit(setns, fd, CLONE_NEWNET).result()
        except BaseException:
            self._pool.shutdown(wait=True)
            raise

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in the netns and wait for its result."""
        return self._pool.submit(fn, *args).result()

    async def acall(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in the netns without blocking the loop."""
        return await asyncio.wrap_future(self._pool.submit(fn, *args))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> NetnsThread:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class TempNetns:
    """A named netns made by :func:`temp_netns`."""

    name: str

    @property
    def path(self) -> Path:
        return NETNS_RUN_DIR / self.name

    def ip(self, *args: str) -> str:
        """Run ``ip -n <name> ARGS`` and return its stdout (raises CalledProcessError with stderr)."""
        return _run(["ip", "-n", self.name, *args])

    def exec(self, *argv: str) -> str:
        """Run a command inside the netns (``ip netns exec``) and return its stdout."""
        return _run(["ip", "netns", "exec", self.name, *argv])


def _run(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, argv, proc.stdout, proc.stderr)
    return proc.stdout


@contextlib.contextmanager
def temp_netns(prefix: str) -> Iterator[TempNetns]:
    """Create ``<prefix><random>`` with ``ip netns add``, bring its ``lo`` up, and always delete it.

    Needs root. Deleting the netns also deletes every interface inside it (e.g. one end of a veth pair, which
    takes its peer with it) and every iptables rule in it.
    """
    ns = TempNetns(f"{prefix}{secrets.token_hex(4)}")
    _run(["ip", "netns", "add", ns.name])
    try:
        ns.ip("link", "set", "lo", "up")
        yield ns
    finally:
        _run(["ip", "netns", "del", ns.name])
