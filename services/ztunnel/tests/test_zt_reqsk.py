"""ztunnel's own ``tcp_migrate_req`` attempt (the fallback behind the istio-cni agent's): set in the pod netns
when it can, untouched when already set, and one info line per process when it cannot (a read-only
``/proc/sys`` in a container). Network namespaces here are named ``cnimig-<hex>``.
"""

from __future__ import annotations

import logging
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from meshkit.netns import run_in_netns
from ztunnel import app

SYSCTL = "/proc/sys/net/ipv4/tcp_migrate_req"


@pytest.fixture(autouse=True)
def fresh_note(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app, "_reqsk_unset_noted", [None])


def notes(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "tcp_migrate_req" in r.getMessage()]


def test_cannot_write_is_noted_once_per_process(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="ztunnel"):
        app._enable_reqsk_migration(str(tmp_path))  # a directory: open fails as on a read-only /proc/sys
        app._enable_reqsk_migration(str(tmp_path / "missing"))
    [note] = notes(caplog)
    assert note.levelno == logging.INFO
    assert "Is a directory" in note.__dict__["kv"]["error"]


def test_already_set_is_left_alone_and_unset_is_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    done, unset = tmp_path / "done", tmp_path / "unset"
    done.write_text("1\n")
    unset.write_text("0\n")
    with caplog.at_level(logging.INFO, logger="ztunnel"):
        app._enable_reqsk_migration(str(done))
        app._enable_reqsk_migration(str(unset))
    assert done.read_text() == "1\n"  # not rewritten (on a read-only /proc/sys the write would fail)
    assert unset.read_text().strip() == "1"
    assert notes(caplog) == []


@pytest.fixture
def pod_netns() -> Iterator[str]:
    name = f"cnimig-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield f"/var/run/netns/{name}"
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.mark.root
def test_sets_it_in_the_pod_netns_only(pod_netns: str) -> None:
    host_before = Path(SYSCTL).read_text()
    read = lambda: Path(SYSCTL).read_text().strip()  # noqa: E731
    assert run_in_netns(pod_netns, read) == "0"
    run_in_netns(pod_netns, app._enable_reqsk_migration)
    assert run_in_netns(pod_netns, read) == "1"
    assert Path(SYSCTL).read_text() == host_before
