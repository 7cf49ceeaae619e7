"""Volume files are written atomically, updated in place, and pruned."""

from __future__ import annotations

from pathlib import Path

import pytest
from meshtest.cluster import podplan, volumes


def test_sync_files_writes_updates_and_prunes(tmp_path: Path) -> None:
    target = tmp_path / "vol"
    volumes.sync_files(target, {"a": (b"1", 0o600), "dir/b": (b"2", 0o644)})
    assert (target / "a").read_bytes() == b"1"
    assert (target / "a").stat().st_mode & 0o777 == 0o600
    assert (target / "dir" / "b").read_bytes() == b"2"
    inode = (target / "dir" / "b").stat().st_ino
    volumes.sync_files(target, {"dir/b": (b"2", 0o644), "c": (b"3", 0o644)})
    assert not (target / "a").exists()
    assert (target / "dir" / "b").stat().st_ino == inode  # unchanged content is not rewritten
    assert (target / "c").read_bytes() == b"3"


def test_host_path_types(tmp_path: Path) -> None:
    volumes.ensure_host_path(str(tmp_path / "made" / "dir"), "DirectoryOrCreate")
    assert (tmp_path / "made" / "dir").is_dir()
    volumes.ensure_host_path(str(tmp_path / "f" / "file"), "FileOrCreate")
    assert (tmp_path / "f" / "file").is_file()
    with pytest.raises(podplan.PlanError):
        volumes.ensure_host_path(str(tmp_path / "missing"), "Directory")
