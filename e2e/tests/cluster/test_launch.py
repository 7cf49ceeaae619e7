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


def test_private_root_creates_nothing_on_the_host(tmp_path: Path) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "file").write_text("v")
    target = f"/amb-launch-test-{tmp_path.name}/deep/target"
    script = (
        f"cat {target}/file; echo; touch /amb-written-{tmp_path.name} && echo WROTE; ls /proc/self/ns/net"
    )
    result = launch(
        tmp_path,
        {
            "netns": None,
            "hostname": "",
            "workdir": None,
            "argv": ["sh", "-c", script],
            "env": {"PATH": "/usr/bin:/bin"},
            "capabilities": None,
            "rootfs": str(tmp_path / "rootfs"),
            "mounts": [{"source": str(volume), "target": target, "read_only": False}],
        },
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["v", "WROTE", "/proc/self/ns/net"]
    assert not Path(f"/amb-launch-test-{tmp_path.name}").exists()  # the mount point lived in the overlay
    assert not Path(f"/amb-written-{tmp_path.name}").exists()  # and so did the container's own write
    assert not list((tmp_path / "rootfs").iterdir())  # the scratch tmpfs went with the mount namespace


def test_mount_targets_resolve_symlinks_inside_the_root(tmp_path: Path) -> None:
    from meshtest.cluster.launch import in_root

    root = tmp_path / "root"
    (root / "run").mkdir(parents=True)
    (root / "var").mkdir()
    (root / "var" / "run").symlink_to("/run")
    (root / "etc").mkdir()
    (root / "etc" / "alt").symlink_to("../run/x")
    assert in_root(str(root), "/var/run/secrets/tokens") == str(root / "run" / "secrets" / "tokens")
    assert in_root(str(root), "/etc/alt/y") == str(root / "run" / "x" / "y")
    assert in_root("", "/var/run/a") == "/var/run/a"
