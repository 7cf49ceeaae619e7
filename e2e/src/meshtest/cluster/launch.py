"""Container launcher: enter the pod's network namespace, make a private mount + UTS namespace, bind the
volumes at their mount paths, set the hostname, then exec the container's command. The node agent runs
``python -m meshtest.cluster.launch <plan.json>``; after the exec the pid is the container's process.

The new mount namespace is a *slave* of the node's: mounts the host makes later (a new pod's
``/run/netns/...``) still appear inside, which the CNI agent and ztunnel rely on, while the pod's own binds
never leak out. With a ``rootfs`` scratch dir in the plan, the container gets its own root
(:func:`make_root`), so no mount point is ever created on the host's filesystem.
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


def mount(
    source: str | None, target: str, flags: int, fstype: str | None = None, data: str | None = None
) -> None:
    src = source.encode() if source else None
    kind = fstype.encode() if fstype else None
    options = data.encode() if data else None
    _check(_libc.mount(src, target.encode(), kind, flags, options), f"mount {source} on {target}")


def in_root(root: str, path: str) -> str:
    """``path`` as seen from inside ``root``, following symlinks relative to ``root`` (``/var/run`` is often
    ``-> /run``: resolved on the host it would escape into the host's ``/run``)."""
    if not root:
        return path
    parts = [p for p in path.split("/") if p]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = Path(root, *resolved, part)
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                raise OSError(f"too many symlinks resolving {path} in {root}")
            link = os.readlink(candidate)
            if link.startswith("/"):
                resolved = []
            parts = [p for p in link.split("/") if p and p != "."] + parts
            continue
        resolved.append(part)
    return str(Path(root, *resolved))


def _child_mounts_of_root() -> list[str]:
    """Mount points directly below this namespace's ``/`` (``/proc``, ``/sys``, ``/dev``, ``/run/netns``)."""
    entries = [line.split() for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    root_ids = {fields[0] for fields in entries if fields[4] == "/"}
    return sorted({fields[4] for fields in entries if fields[1] in root_ids and fields[4] != "/"})


def make_root(scratch: str) -> str:
    """The container's root: an overlay of the host's ``/`` (read through) with a private tmpfs on top, and
    the host's other mounts bound in. Mount points for volumes are then created in the overlay, never on the
    host, and writes outside volumes stay private to the container, as with an image's filesystem."""
    base = Path(scratch)
    base.mkdir(parents=True, exist_ok=True)
    mount("tmpfs", scratch, 0, "tmpfs", "mode=0755")
    for sub in ("upper", "work", "root"):
        (base / sub).mkdir()
    root = base / "root"
    layers = f"lowerdir=/,upperdir={base / 'upper'},workdir={base / 'work'}"
    mount("overlay", str(root), 0, "overlay", layers)
    for target in _child_mounts_of_root():
        inside = root / target.lstrip("/")
        if target.startswith(scratch) or not inside.is_dir():
            continue
        mount(target, str(inside), MS_BIND | MS_REC)  # slaves too: later /run/netns entries still appear
    return str(root)


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
    scratch = plan.get("rootfs")
    root = make_root(str(scratch)) if isinstance(scratch, str) else ""
    mounts: list[dict[str, object]] = plan.get("mounts", [])  # type: ignore[assignment]
    for item in mounts:
        bind(str(item["source"]), in_root(root, str(item["target"])), bool(item.get("read_only")))
    hostname = str(plan.get("hostname") or "")
    if hostname:
        _check(_libc.sethostname(hostname.encode(), len(hostname.encode())), "sethostname")
    if root:
        os.chroot(root)


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
