"""meshkit.netns against real network namespaces (root)."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from meshkit.netns import (
    NETNS_RUN_DIR,
    NetnsThread,
    TempNetns,
    _fstatfs_type,
    arun_in_netns,
    is_netns_fd,
    netns_inode,
    netns_path,
    open_netns,
    run_in_netns,
    temp_netns,
)
from meshkit.testing.netns import netns_pair

PREFIX = "mk-"


def _thread_netns() -> int:
    """Inode of the calling thread's netns."""
    return os.stat("/proc/thread-self/ns/net").st_ino


def _links() -> list[str]:
    return sorted(name for _idx, name in socket.if_nameindex())


def _netns_names() -> set[str]:
    return set(os.listdir(NETNS_RUN_DIR)) if NETNS_RUN_DIR.exists() else set()


def test_netns_path_resolution() -> None:
    assert netns_path("mk-x") == Path("/run/netns/mk-x")
    assert netns_path("/proc/1/ns/net") == Path("/proc/1/ns/net")
    assert netns_path(Path("relative")) == Path("relative")


def test_is_netns_fd_rejects_other_files(tmp_path: Path) -> None:
    plain = tmp_path / "f"
    plain.write_text("x")
    for path in (plain, Path("/proc/self/ns/uts")):
        fd = os.open(path, os.O_RDONLY)
        try:
            assert not is_netns_fd(fd)
        finally:
            os.close(fd)
    with pytest.raises(ValueError, match="not a network namespace"):
        open_netns("/proc/self/ns/uts")
    with pytest.raises(FileNotFoundError):
        open_netns("mk-does-not-exist")


def test_own_netns_is_a_netns_fd_and_nsfs() -> None:
    fd = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        assert is_netns_fd(fd)
        assert _fstatfs_type(fd) == 0x6E736673  # the fallback path agrees on nsfs
    finally:
        os.close(fd)


@pytest.fixture
def netns() -> Iterator[TempNetns]:
    with temp_netns(PREFIX) as ns:
        yield ns


@pytest.mark.root
def test_temp_netns_is_created_and_always_deleted() -> None:
    seen: list[TempNetns] = []

    def use_and_fail() -> None:
        with temp_netns(PREFIX) as ns:
            seen.append(ns)
            assert ns.name.startswith(PREFIX)
            assert ns.name in _netns_names()
            assert "UP" in ns.ip("link", "show", "lo")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        use_and_fail()
    (ns,) = seen
    assert ns.name not in _netns_names()


@pytest.mark.root
def test_run_in_netns_by_name_path_and_fd(netns: TempNetns) -> None:
    host_links = _links()
    assert run_in_netns(netns.name, _links) == ["lo"]
    assert run_in_netns(netns.path, _links) == ["lo"]
    fd = open_netns(netns.name)
    try:
        assert is_netns_fd(fd)
        assert netns_inode(fd) == netns_inode(netns.name) != netns_inode("/proc/self/ns/net")
        assert run_in_netns(fd, _thread_netns) == netns_inode(fd)
        os.fstat(fd)  # a borrowed fd stays open
    finally:
        os.close(fd)
    assert _links() == host_links  # the caller never moved


@pytest.mark.root
def test_run_in_netns_runs_on_another_thread_and_leaves_caller_alone(netns: TempNetns) -> None:
    before = _thread_netns()
    caller = threading.get_ident()
    ident, inode = run_in_netns(netns.name, lambda: (threading.get_ident(), _thread_netns()))
    assert ident != caller
    assert inode == netns_inode(netns.name)
    assert _thread_netns() == before


@pytest.mark.root
def test_run_in_netns_propagates_exceptions(netns: TempNetns) -> None:
    def fail(what: str) -> None:
        raise KeyError(what)

    with pytest.raises(KeyError, match="inside"):
        run_in_netns(netns.name, fail, "inside")


@pytest.mark.root
async def test_arun_in_netns(netns: TempNetns) -> None:
    assert await arun_in_netns(netns.name, _links) == ["lo"]
    assert await arun_in_netns(netns.path, _thread_netns) == netns_inode(netns.path)
    with pytest.raises(ZeroDivisionError):
        await arun_in_netns(netns.name, lambda: 1 / 0)
    assert _links() != ["lo"]


@pytest.mark.root
async def test_netns_thread_keeps_one_thread_in_the_netns(netns: TempNetns) -> None:
    with NetnsThread(netns.name, name="t") as worker:
        first = worker.call(lambda: (threading.get_ident(), _thread_netns()))
        second = await worker.acall(lambda: (threading.get_ident(), _thread_netns()))
        assert first == second
        assert first[1] == netns_inode(netns.name)
        assert worker.call(_links) == ["lo"]
    with pytest.raises(RuntimeError):
        worker.call(_links)  # closed


@pytest.mark.root
def test_netns_thread_reports_a_bad_netns_at_construction() -> None:
    fd = os.open("/proc/self/ns/uts", os.O_RDONLY)
    try:
        with pytest.raises(OSError):  # setns(uts fd, CLONE_NEWNET) -> EINVAL
            NetnsThread(fd)
    finally:
        os.close(fd)


@pytest.mark.root
def test_netns_pair_connects_two_namespaces_and_cleans_up() -> None:
    with netns_pair(PREFIX, "10.75.1.0/24") as (a, b):
        assert (a.addr, b.addr) == ("10.75.1.1", "10.75.1.2")
        assert a.ifname in run_in_netns(a.name, _links)
        assert a.ifname not in _links()  # never in the host netns
        listener = run_in_netns(a.name, socket.create_server, (a.addr, 0))
        with listener:
            port = listener.getsockname()[1]
            with run_in_netns(b.name, socket.create_connection, (a.addr, port), 5.0) as conn:
                assert conn.getsockname()[0] == b.addr
        names = {a.name, b.name}
    assert not names & _netns_names()


@pytest.mark.root
async def test_arun_in_netns_does_not_block_the_loop_and_survives_cancel(netns: TempNetns) -> None:
    release = threading.Event()
    finished = threading.Event()

    def blocking() -> str:
        release.wait(5.0)
        finished.set()
        return "done"

    waiter = asyncio.ensure_future(arun_in_netns(netns.name, blocking))
    await asyncio.sleep(0)  # one turn: the loop keeps running while the thread blocks
    assert not waiter.done()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    release.set()
    # The thread still finishes; its late result is dropped without errors on the loop.
    assert await asyncio.get_running_loop().run_in_executor(None, finished.wait, 5.0)
