"""A tiny asyncio inotify watcher (Linux), so the installer reacts when someone rewrites the CNI config.

Only what the installer needs: watch directories for create/modify/move/delete and wake a coroutine. No
third-party watcher library: this is 40 lines over ``inotify_init1`` / ``inotify_add_watch`` via ctypes.
"""

from __future__ import annotations

import asyncio
import ctypes
import os

IN_MODIFY = 0x002
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
DIR_EVENTS = IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE

_libc = ctypes.CDLL(None, use_errno=True)


class DirWatcher:
    """``await changed()`` returns once something happened in any watched directory since the last call."""

    def __init__(self, dirs: list[str]) -> None:
        self._fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        try:
            for d in dirs:
                self.add(d)
        except OSError:
            os.close(self._fd)
            raise
        self._event = asyncio.Event()
        asyncio.get_running_loop().add_reader(self._fd, self._drain)

    def add(self, path: str) -> None:
        """Watch one more directory; calling it again for a watched one is a no-op (same watch)."""
        if _libc.inotify_add_watch(self._fd, os.fsencode(path), DIR_EVENTS) < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_add_watch {path}: {os.strerror(err)}")

    def _drain(self) -> None:
        try:
            while os.read(self._fd, 65536):
                pass
        except BlockingIOError:
            pass
        self._event.set()

    async def changed(self) -> None:
        await self._event.wait()
        self._event.clear()

    def close(self) -> None:
        if self._fd >= 0:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
