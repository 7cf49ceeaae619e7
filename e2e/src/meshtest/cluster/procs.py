"""Detached processes of the cluster: start with a pid file and a log file, stop with a grace period, and
sweep.

Every process gets ``AMBIENT_CLUSTER_RUN=<run dir>`` in its environment (inherited by everything it starts),
so
:func:`sweep` can find and kill anything of this cluster from /proc even when pid files are gone or an agent
crashed before stopping its pods.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from meshtest.cluster.config import RUN_MARKER_ENV

log = logging.getLogger("meshtest.cluster.procs")


def in_netns(netns_path: str, argv: Sequence[str]) -> list[str]:
    """argv that runs ``argv`` in a network namespace (nsenter execs, so the pid is the program's)."""
    return ["nsenter", f"--net={netns_path}", "--", *argv]


def start(
    name: str,
    argv: Sequence[str],
    *,
    pids: Path,
    log_file: Path,
    run_marker: str,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> int:
    """Start ``argv`` in its own session, detached from the caller; returns the pid (also in
    ``<pids>/<name>.pid``)."""
    pids.mkdir(parents=True, exist_ok=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ if env is None else env)
    full_env[RUN_MARKER_ENV] = run_marker
    full_env["MESHTEST_LOG_FILE"] = str(log_file)
    # A shell trampoline backgrounds the program and exits, so the program is re-parented away from the
    # caller:
    # it outlives a CLI `up`, and a test process never holds (and warns about) un-waited Popen children.
    trampoline = 'setsid "$@" </dev/null >>"$MESHTEST_LOG_FILE" 2>&1 & echo $!'
    out = subprocess.run(
        ["sh", "-c", trampoline, "sh", *argv],
        env=full_env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(out.stdout.strip())
    (pids / f"{name}.pid").write_text(str(pid))
    log.info("started %s pid=%d log=%s", name, pid, log_file)
    return pid


def alive(pid: int) -> bool:
    """True while any thread of ``pid`` still runs. A zombie leader whose other threads are still exiting (Go
    programs do this) counts as alive; a plain zombie does not (this machine's PID 1 reaps orphans lazily)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/stat") as stat:
                if stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                    return True
    except OSError:
        return False
    return False


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop_pids(pids: Iterable[int], grace: float) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL whatever is left."""
    pending = [pid for pid in pids if alive(pid)]
    for pid in pending:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pending and time.monotonic() < deadline:
        for pid in pending:
            _reap(pid)
        pending = [pid for pid in pending if alive(pid)]
        if pending:
            time.sleep(0.05)
    for pid in pending:
        _signal(pid, signal.SIGKILL)
        _reap(pid)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def pid_of(pids: Path, name: str) -> int | None:
    try:
        return int((pids / f"{name}.pid").read_text())
    except (OSError, ValueError):
        return None


def stop(pids: Path, name: str, grace: float = 5.0) -> None:
    pid = pid_of(pids, name)
    if pid is not None:
        stop_pids([pid], grace)
        (pids / f"{name}.pid").unlink(missing_ok=True)


def marked(run_marker: str) -> list[int]:
    """Pids of every live process whose environment carries this cluster's run marker."""
    needle = f"{RUN_MARKER_ENV}={run_marker}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as environ:
                if needle in environ.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue
    return [pid for pid in found if alive(pid)]


def sweep(run_marker: str, grace: float = 2.0) -> list[int]:
    """Kill every remaining process of this cluster; returns the pids that were still running."""
    left = marked(run_marker)
    if left:
        log.warning(
            "sweeping %d leftover processes: %s", len(left), [f"{pid}:{_cmdline(pid)}" for pid in left]
        )
        stop_pids(left, grace)
    return left


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read().replace(b"\0", b" ").decode(errors="replace")[:120]
    except OSError:
        return "?"
