"""Container launcher: enter the pod's network namespace, make a private mount + UTS namespace, bind the
volumes at their mount paths, set the hostname, then exec the container's command. The node agent runs
``python -m meshtest.cluster.launch <plan.json>``; after the exec the pid is the container's process.

The new mount namespace is a *slave* of the node's: mounts the host makes later (a new pod's
``/run/netns/...``)
still appear inside, which the CNI agent and ztunnel rely on, while the pod's own binds never leak out.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import sys
from pathlib import Path

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_SLAVE = 1 << 19
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
#: capability numbers (linux/capability.h)
CAPABILITIES = (
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
)

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        _check(_libc.setns(fd, CLONE_NEWNET), f"setns {path}")
    finally:
        os.close(fd)


def mount(source: str | None, target: str, flags: int) -> None:
    src = source.encode() if source else None
    _check(_libc.mount(src, target.encode(), None, flags, None), f"mount {source} on {target}")


def bind(source: str, target: str, read_only: bool) -> None:
    src, dst = Path(source), Path(target)
    if src.is_dir():
        dst.mkdir(parents=True, exist_ok=True)
    else:  # a file (subPath, resolv.conf, a socket): the mount point must be a file too
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            dst.touch()
    mount(source, target, MS_BIND | MS_REC)
    if read_only:
        mount(None, target, MS_BIND | MS_REMOUNT | MS_RDONLY)


def enter(plan: dict[str, object]) -> None:
    """Namespaces and mounts of ``plan`` for the current process (also used by exec probes' tests)."""
    netns = plan.get("netns")
    if isinstance(netns, str):
        setns(netns)
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWUTS), "unshare")
    mount(None, "/", MS_REC | MS_SLAVE)
    mounts: list[dict[str, object]] = plan.get("mounts", [])  # type: ignore[assignment]
    for item in mounts:
        bind(str(item["source"]), str(item["target"]), bool(item.get("read_only")))
    hostname = str(plan.get("hostname") or "")
    if hostname:
        _check(_libc.sethostname(hostname.encode(), len(hostname.encode())), "sethostname")


def limit_capabilities(keep: list[str] | None) -> None:
    """Drop every capability not in ``keep`` from the bounding set (and clear the ambient set): after exec a
    root process is left with exactly ``keep``. ``None`` keeps everything (privileged)."""
    if keep is None:
        return
    wanted = set(keep)
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for number in range(last + 1):
        name = CAPABILITIES[number] if number < len(CAPABILITIES) else f"CAP_{number}"
        if name not in wanted:
            _check(_libc.prctl(PR_CAPBSET_DROP, number, 0, 0, 0), f"drop capability {name}")
    _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient capabilities")


def main() -> None:
    plan = json.loads(Path(sys.argv[1]).read_text())
    try:
        enter(plan)
        os.chdir(plan.get("workdir") or "/")
        limit_capabilities(plan.get("capabilities"))
        argv = [str(a) for a in plan["argv"]]
        os.execvpe(argv[0], argv, {str(k): str(v) for k, v in plan["env"].items()})
    except OSError as err:
        print(f"meshtest launch: cannot start container: {err}", file=sys.stderr, flush=True)
        sys.exit(128)


if __name__ == "__main__":
    main()
