"""Applying and removing the in-pod rules inside a pod netns (the I/O shell around :mod:`istio_cni.rules`).

Two processes per change, both entered into the pod netns once: a *read* script (does ``lo`` have IPv6,
``iptables-save``, ``ip6tables-save``) and a *write* script that feeds the planned input to
``iptables-restore --noflush`` per family (one transaction each, so a partial ruleset is never visible) and
sets the policy route. Re-applying is a no-op. IPv6 is configured only when enabled and the pod's ``lo`` has
an IPv6 address (§3.3). Failures raise :class:`RuleError`; upstream treats them as non-retryable (§3.1).
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass

from meshkit.logs import kv

from istio_cni.netns import Netns
from istio_cni.rules import (
    CONN_MARK,
    ROUTE_TABLE,
    RULE_PREF,
    Family,
    PodRuleConfig,
    inpod_rules,
    plan_apply,
    plan_remove,
)

log = logging.getLogger("cni.iptables")
_SEP = "@@istio-cni@@"


class RuleError(RuntimeError):
    """In-pod rules could not be installed or removed (the pod stays out of the mesh)."""


@dataclass(frozen=True, slots=True)
class PodNetState:
    lo_has_ipv6: bool
    saved: dict[Family, str]


async def read_state(netns: Netns) -> PodNetState:
    script = f"ip -6 addr show dev lo 2>/dev/null; echo {_SEP}; iptables-save; echo {_SEP}; ip6tables-save"
    result = await netns.run(["sh", "-c", script])
    parts = result.stdout.split(_SEP + "\n")
    if result.returncode != 0 or len(parts) != 3:
        raise RuleError(f"reading iptables state in {netns.source} failed: {result.stderr.strip()}")
    return PodNetState("::1" in parts[0], {Family.V4: parts[1], Family.V6: parts[2]})


def _heredoc(argv: str, text: str) -> str:
    """``argv`` fed ``text`` on stdin. The delimiter is random and checked, so no text can end the here-doc
    early and have its remaining lines run as shell commands."""
    if not text:
        return ""
    end = f"__ISTIO_CNI_EOF_{secrets.token_hex(8)}__"
    if end in text.splitlines():
        raise RuleError("restore input contains the here-doc delimiter")
    return f"{argv} <<'{end}'\n{text}{end}\n"


def _route_script(family: Family, present: bool) -> str:
    flag, anyaddr = ("-4", "0.0.0.0/0") if family is Family.V4 else ("-6", "::/0")
    rule = f"fwmark {CONN_MARK} pref {RULE_PREF} lookup {ROUTE_TABLE}"
    if present:  # "ip rule add" is not idempotent: add only when no rule has our preference yet
        return (
            f'[ -n "$(ip {flag} rule show pref {RULE_PREF})" ] || ip {flag} rule add {rule}\n'
            f"ip {flag} route replace local {anyaddr} dev lo table {ROUTE_TABLE}\n"
        )
    return (
        f"while ip {flag} rule del {rule} 2>/dev/null; do :; done\n"
        f"ip {flag} route flush table {ROUTE_TABLE} 2>/dev/null || true\n"
    )


async def _write(netns: Netns, script: str, what: str) -> None:
    result = await netns.run(["sh", "-ec", script])
    if result.returncode != 0:
        raise RuleError(f"{what} failed in {netns.source}: {result.stderr.strip()}\nscript:\n{script}")


async def apply_pod_rules(netns: Netns, cfg: PodRuleConfig, ipv6: bool = True) -> None:
    """Install (or refresh) the §3.3 rules and policy routes in ``netns``; idempotent."""
    state = await read_state(netns)
    families = (Family.V4, Family.V6) if ipv6 and state.lo_has_ipv6 else (Family.V4,)
    script = ""
    for family in families:
        plan = plan_apply(inpod_rules(family, cfg), state.saved[family])
        script += _heredoc(f"{family.restore_cmd} --noflush", plan) + _route_script(family, True)
    await _write(netns, script, "installing the in-pod rules")
    log.debug("in-pod rules applied", extra=kv(netns=netns.source, families=len(families)))


async def remove_pod_rules(netns: Netns) -> None:
    """Delete every rule, chain and policy route we own in ``netns``; missing pieces are fine."""
    state = await read_state(netns)
    script = ""
    for family in (Family.V4, Family.V6):
        script += _heredoc(f"{family.restore_cmd} --noflush", plan_remove(state.saved[family]))
        script += _route_script(family, False)
    await _write(netns, script, "removing the in-pod rules")
    log.debug("in-pod rules removed", extra=kv(netns=netns.source))


__all__ = ["PodNetState", "RuleError", "apply_pod_rules", "read_state", "remove_pod_rules"]
