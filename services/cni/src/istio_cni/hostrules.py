"""Node-level rules for kubelet probes (behaviour.md §3.4): SNAT locally originated TCP to enrolled pods.

In the node's netns: ipsets ``istio-inpod-probes-v4`` / ``-v6`` hold every enrolled pod IP on the node, and
``nat POSTROUTING`` jumps first to ``ISTIO_POSTRT``, which SNATs packets from local sockets (kubelet) to those
IPs to the probe address, so the in-pod rules can let probes straight through to the app. Forwarded traffic
(kube-proxy, NodePort) has no local socket and is still captured. Installed with one restore transaction per
family, idempotently, and removed completely on uninstall.
"""

from __future__ import annotations

import ipaddress
import logging

from meshkit.logs import kv

from istio_cni.iptables import RuleError
from istio_cni.netns import Netns
from istio_cni.rules import Family, parse_save

log = logging.getLogger("cni.hostrules")

POSTRT = "ISTIO_POSTRT"
JUMP = f"-I POSTROUTING 1 -j {POSTRT}"
SAVED_JUMP = f"-A POSTROUTING -j {POSTRT}"
IPSETS = {Family.V4: "istio-inpod-probes-v4", Family.V6: "istio-inpod-probes-v6"}


def host_rule(family: Family, snat_ip: str) -> str:
    return (
        f"-A {POSTRT} -m owner --socket-exists -p tcp -m set --match-set {IPSETS[family]} dst"
        f" -j SNAT --to-source {snat_ip}"
    )


def plan_host_apply(family: Family, snat_ip: str, current_save: str) -> str:
    rules = parse_save(current_save).get("nat", (set(), []))[1]
    lines = ["*nat", f":{POSTRT} - [0:0]"]
    if SAVED_JUMP not in rules:
        lines.append(JUMP)
    lines += [host_rule(family, snat_ip), "COMMIT"]
    return "\n".join(lines) + "\n"


def plan_host_remove(current_save: str) -> str:
    chains, rules = parse_save(current_save).get("nat", (set(), []))
    if POSTRT not in chains and SAVED_JUMP not in rules:
        return ""
    lines = ["*nat"]
    lines += [f"-D POSTROUTING -j {POSTRT}" for r in rules if r == SAVED_JUMP]
    if POSTRT in chains:
        lines += [f":{POSTRT} - [0:0]", f"-X {POSTRT}"]
    return "\n".join([*lines, "COMMIT"]) + "\n"


def family_of(ip: str) -> Family:
    return Family.V4 if ipaddress.ip_address(ip).version == 4 else Family.V6


class HostRules:
    """The node-level probe rules and ipsets inside ``netns`` (the node's network namespace)."""

    def __init__(self, netns: Netns, snat_v4: str, snat_v6: str, ipv6: bool = True) -> None:
        self.netns = netns
        self._snat = {Family.V4: snat_v4, Family.V6: snat_v6}
        self._families = (Family.V4, Family.V6) if ipv6 else (Family.V4,)

    async def _must(self, argv: list[str], stdin: str | None = None) -> str:
        result = await self.netns.run(argv, stdin)
        if result.returncode != 0:
            raise RuleError(f"{' '.join(argv)} failed on the node: {result.stderr.strip()}")
        return result.stdout

    async def install(self) -> None:
        for family in self._families:
            fam = "inet" if family is Family.V4 else "inet6"
            await self._must(["ipset", "create", IPSETS[family], "hash:ip", "family", fam, "-exist"])
            current = await self._must([family.save_cmd, "-t", "nat"])
            await self._must(
                [family.restore_cmd, "--noflush"], plan_host_apply(family, self._snat[family], current)
            )
        log.info("node probe rules installed", extra=kv(netns=self.netns.source))

    async def add_ips(self, ips: tuple[str, ...]) -> None:
        for ip in ips:
            family = family_of(ip)
            if family in self._families:
                await self._must(["ipset", "add", IPSETS[family], ip, "-exist"])

    async def remove_ips(self, ips: tuple[str, ...]) -> None:
        for ip in ips:
            family = family_of(ip)
            if family in self._families:
                await self.netns.run(["ipset", "del", IPSETS[family], ip, "-exist"])

    async def sync_ips(self, keep: set[str]) -> int:
        """Drop members not in ``keep`` (pods gone while no agent ran); returns how many were dropped."""
        dropped = 0
        for family in self._families:
            result = await self.netns.run(["ipset", "save", IPSETS[family]])
            members = [ln.split()[2] for ln in result.stdout.splitlines() if ln.startswith("add ")]
            stale = tuple(ip for ip in members if ip not in keep)
            await self.remove_ips(stale)
            dropped += len(stale)
        return dropped

    async def uninstall(self) -> None:
        for family in (Family.V4, Family.V6):
            current = (await self.netns.run([family.save_cmd, "-t", "nat"])).stdout
            plan = plan_host_remove(current)
            if plan:
                await self._must([family.restore_cmd, "--noflush"], plan)
            await self.netns.run(["ipset", "destroy", IPSETS[family]])
        log.info("node probe rules removed", extra=kv(netns=self.netns.source))
