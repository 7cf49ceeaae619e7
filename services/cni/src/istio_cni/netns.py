"""Network-namespace handles and running things inside a netns.

A :class:`Netns` owns one open fd of a namespace (from ``/var/run/netns/<name>``, ``/proc/<pid>/ns/net`` or a
CNI ``CNI_NETNS`` path). Holding the fd keeps the namespace alive and pins its identity (the inode), which is
what ZDS hands to ztunnel. Commands run inside it through ``nsenter --net=/proc/self/fd/N`` with the fd passed
down, so the agent itself never switches namespaces (code that must, uses :mod:`meshkit.netns`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from dataclasses import dataclass


class NetnsError(RuntimeError):
    """A namespace could not be opened or a command inside it failed."""


@dataclass(frozen=True, slots=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


class Netns:
    """An open network namespace. Close it when done; ``inode`` identifies it."""

    def __init__(self, fd: int, source: str) -> None:
        self.fd = fd
        self.source = source
        self.inode = os.fstat(fd).st_ino

    @classmethod
    def open(cls, path: str) -> Netns:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise NetnsError(f"cannot open network namespace {path}: {exc}") from exc
        return cls(fd, path)

    def dup(self) -> Netns:
        return Netns(os.dup(self.fd), self.source)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __repr__(self) -> str:
        return f"Netns({self.source!r}, inode={self.inode})"

    async def run(
        self, argv: Sequence[str], stdin: str | None = None, limit_s: float = 10.0
    ) -> CommandResult:
        """Run ``argv`` inside this namespace; never raises on a non-zero exit (the caller decides)."""
        argv = ["nsenter", f"--net=/proc/self/fd/{self.fd}", *argv]
        return await run_command(argv, stdin, (self.fd,), limit_s)

    async def check(self, argv: Sequence[str], stdin: str | None = None) -> str:
        result = await self.run(argv, stdin)
        if result.returncode != 0:
            raise NetnsError(f"{' '.join(argv)} failed in netns {self.source}: {result.stderr.strip()}")
        return result.stdout


async def run_command(
    argv: Sequence[str], stdin: str | None = None, pass_fds: Sequence[int] = (), limit_s: float = 10.0
) -> CommandResult:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        pass_fds=tuple(pass_fds),
    )
    try:
        data = stdin.encode() if stdin is not None else None
        out, err = await asyncio.wait_for(proc.communicate(data), limit_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise NetnsError(f"{argv[0]} timed out after {limit_s}s") from None
    return CommandResult(proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace"))
