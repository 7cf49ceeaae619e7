"""Applying and removing the in-pod rules inside a pod netns (the I/O shell around :mod:`istio_cni.rules`).

Each family is one ``iptables-restore --noflush`` transaction computed from the current ``iptables-save``
output, so a partial ruleset is never visible and re-applying is a no-op. IPv6 is configured only when enabled
and the pod's ``lo`` has an IPv6 address (§3.3). Failures raise :class:`RuleError`; upstream treats them as
non-retryable for the pod (§3.1).
"""

from __future__ import annotations

import logging

from meshkit.logs import kv

from istio_cni.netns import Netns
from istio_cni.rules import (
    Family,
    PodRuleConfig,
    inpod_rules,
    netlink_commands,
    netlink_remove_commands,
    plan_apply,
    plan_remove,
)

log = logging.getLogger("cni.iptables")


class RuleError(RuntimeError):
    """In-pod rules could not be installed or removed (the pod stays out of the mesh)."""


async def families(netns: Netns, ipv6: bool) -> tuple[Family, ...]:
    if not ipv6:
        return (Family.V4,)
    result = await netns.run(["ip", "-6", "addr", "show", "dev", "lo"])
    has_v6 = result.returncode == 0 and "::1" in result.stdout
    return (Family.V4, Family.V6) if has_v6 else (Family.V4,)


async def _restore(netns: Netns, family: Family, text: str) -> None:
    if not text:
        return
    result = await netns.run([family.restore_cmd, "--noflush"], stdin=text)
    if result.returncode != 0:
        detail = f"{result.stderr.strip()}\ninput:\n{text}"
        raise RuleError(f"{family.restore_cmd} failed in {netns.source}: {detail}")


async def _save(netns: Netns, family: Family) -> str:
    result = await netns.run([family.save_cmd])
    if result.returncode != 0:
        raise RuleError(f"{family.save_cmd} failed in {netns.source}: {result.stderr.strip()}")
    return result.stdout


async def apply_pod_rules(netns: Netns, cfg: PodRuleConfig, ipv6: bool = True) -> None:
    """Install (or refresh) the §3.3 rules and policy routes in ``netns``; idempotent."""
    for family in await families(netns, ipv6):
        current = await _save(netns, family)
        await _restore(netns, family, plan_apply(inpod_rules(family, cfg), current))
        for argv in netlink_commands(family):
            result = await netns.run(argv)
            # "ip rule add" is not idempotent; an identical rule already present is what we want.
            if result.returncode != 0 and "File exists" not in result.stderr:
                raise RuleError(f"{' '.join(argv)} failed in {netns.source}: {result.stderr.strip()}")
    log.debug("in-pod rules applied", extra=kv(netns=netns.source))


async def remove_pod_rules(netns: Netns) -> None:
    """Delete every rule, chain and policy route we own in ``netns``; missing pieces are fine."""
    for family in (Family.V4, Family.V6):
        current = await _save(netns, family)
        await _restore(netns, family, plan_remove(current))
        for argv in netlink_remove_commands(family):
            while (await netns.run(argv)).returncode == 0 and argv[3] == "del":
                pass  # delete duplicates too, until "No such file"
    log.debug("in-pod rules removed", extra=kv(netns=netns.source))
