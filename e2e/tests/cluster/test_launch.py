"""The container launcher on its own (root): mount namespace with binds (read-only too), UTS name,
capability bounding set, environment, working directory; nothing leaks into the host's mount table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.root


def launch(tmp_path: Path, plan: dict[str, object]) -> subprocess.CompletedProcess[str]:
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(json.dumps(plan))
    return subprocess.run(
        [sys.executable, "-m", "meshtest.cluster.launch", str(plan_file)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_binds_hostname_capabilities_env(tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "file").write_text("from-the-volume")
    target = tmp_path / "mnt" / "target"
    script = (
        "cat $TARGET/file; echo; hostname; grep CapBnd /proc/self/status; pwd; "
        "touch $TARGET/new 2>/dev/null && echo WRITABLE || echo READONLY"
    )
    result = launch(
        tmp_path,
        {
            "netns": None,
            "hostname": "pod-xyz",
            "workdir": str(tmp_path),
            "argv": ["sh", "-c", script],
            "env": {"TARGET": str(target), "PATH": "/usr/bin:/bin"},
            "mounts": [{"source": str(volume), "target": str(target), "read_only": True}],
            "capabilities": ["NET_ADMIN"],
        },
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "from-the-volume"
    assert lines[1] == "pod-xyz"
    assert int(lines[2].split()[1], 16) == 1 << 12  # only CAP_NET_ADMIN
    assert lines[3] == str(tmp_path)
    assert lines[4] == "READONLY"
    with open("/proc/self/mountinfo") as mountinfo:
        assert str(target) not in mountinfo.read()
    assert not (target / "file").exists()


def test_unstartable_command_reports_and_exits_128(tmp_path: Path) -> None:
    result = launch(
        tmp_path,
        {
            "netns": None,
            "hostname": "",
            "argv": ["/nonexistent/binary"],
            "env": {},
            "mounts": [],
            "workdir": None,
            "capabilities": None,
        },
    )
    assert result.returncode == 128
    assert "cannot start container" in result.stderr
