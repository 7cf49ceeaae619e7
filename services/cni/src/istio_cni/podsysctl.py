"""Per-netns sysctls the agent sets in a pod's network namespace when it enrols the pod.

``net.ipv4.tcp_migrate_req=1``: when the old ztunnel closes its listeners in the pod during a rollout, the
connections still in their accept queues move to the new ztunnel's ``SO_REUSEPORT`` listeners instead of
being reset. The value belongs to the netns of whoever opens the file, so it is written by a process entered
into the pod netns. ztunnel cannot do it on a real node (its container's ``/proc/sys`` is read-only and it
is not privileged); it only falls back to trying. The agent's container has the same read-only
``/proc/sys``, but it has ``CAP_SYS_ADMIN``: when the plain write fails it writes through a procfs of its
own, mounted in a private mount namespace (``unshare --mount-proc``; nothing is mounted anywhere else).

Setting it is best effort: a kernel without it (before 5.14) or a runtime that forbids the mount costs a
reset burst during a ztunnel rollout, not the pod's enrolment. It is left set on unenrolment: it changes
only what happens to connections queued on a closing ``SO_REUSEPORT`` listener, which is harmless to an app.
"""

from __future__ import annotations

from istio_cni.netns import Netns, NetnsError

TCP_MIGRATE_REQ = "/proc/sys/net/ipv4/tcp_migrate_req"

_SCRIPT = (
    f"echo 1 2>/dev/null >{TCP_MIGRATE_REQ} && exit 0\n"
    f"exec unshare --mount-proc sh -c 'echo 1 >{TCP_MIGRATE_REQ}'\n"
)


async def enable_reqsk_migration(netns: Netns) -> str | None:
    """Set ``tcp_migrate_req=1`` inside ``netns``; None when done, else why not (never raises for that)."""
    try:
        result = await netns.run(["sh", "-c", _SCRIPT])
    except (OSError, NetnsError) as exc:
        return str(exc)
    if result.returncode != 0:
        return result.stderr.strip() or f"exit status {result.returncode}"
    return None


__all__ = ["TCP_MIGRATE_REQ", "enable_reqsk_migration"]
