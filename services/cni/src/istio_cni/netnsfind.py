"""Finding the network namespace of a pod that is already running (start-up reconcile, namespace labelled
later), when no CNI ADD told us its netns path: scan the host's ``/proc`` for a process whose namespace owns
one of the pod's IPs. Reads only ``/proc/<pid>/net/fib_trie`` and ``if_inet6`` (which show the namespace of
that process), so no namespace is entered; each namespace inode is looked at once. If no process is found
(a pod whose processes are hidden from us), the named namespaces under the runtime's netns directories are
tried: a fresh thread enters each (:func:`meshkit.netns.run_in_netns`) and reads ``/proc/thread-self/net``.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence

from meshkit.netns import run_in_netns


def _v4_local(text: str) -> set[str]:
    """Addresses followed by a ``/32 host LOCAL`` leaf in ``fib_trie``."""
    found: set[str] = set()
    last = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(("|--", "+--")):
            last = stripped[3:].strip().split()[0]
        elif stripped.startswith("/32 host LOCAL") and last:
            found.add(last)
    return found


def _v6_local(text: str) -> set[str]:
    found: set[str] = set()
    for line in text.splitlines():
        raw = line.split()[0] if line.split() else ""
        if len(raw) == 32:
            found.add(str(ipaddress.IPv6Address(bytes.fromhex(raw))))
    return found


def local_addresses(proc: str, pid: str) -> set[str]:
    return _addresses(os.path.join(proc, pid, "net"))


def _addresses(net_dir: str) -> set[str]:
    out: set[str] = set()
    for name, parse in (("fib_trie", _v4_local), ("if_inet6", _v6_local)):
        try:
            with open(os.path.join(net_dir, name), encoding="ascii", errors="replace") as fh:
                out |= parse(fh.read())
        except OSError:
            continue
    return out


def find_netns_path(proc: str, ips: tuple[str, ...]) -> str | None:
    """``<proc>/<pid>/ns/net`` of a process in the namespace holding any of ``ips``, or None."""
    wanted = {str(ipaddress.ip_address(ip)) for ip in ips if ip}
    if not wanted:
        return None
    seen: set[int] = set()
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit()]
    except OSError:
        return None
    for pid in pids:
        path = os.path.join(proc, pid, "ns", "net")
        try:
            inode = os.stat(path).st_ino
        except OSError:
            continue
        if inode in seen:
            continue
        seen.add(inode)
        if wanted & local_addresses(proc, pid):
            return path
    return None


def find_named_netns(dirs: Sequence[str], ips: tuple[str, ...]) -> str | None:
    """A netns file under ``dirs`` (e.g. ``/var/run/netns``) holding any of ``ips``. Blocking."""
    wanted = {str(ipaddress.ip_address(ip)) for ip in ips if ip}
    seen: set[tuple[int, int]] = set()
    for directory in dirs:
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:
            path = os.path.join(directory, name)
            try:
                st = os.stat(path)
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            try:
                found = run_in_netns(path, _addresses, "/proc/thread-self/net")
            except OSError:
                continue
            if wanted & found:
                return path
    return None
