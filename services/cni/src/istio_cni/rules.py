"""In-pod redirection rules (behaviour.md §3.3), built as ``iptables-restore`` input. Pure: no I/O.

The rule text is exactly the spec's list; :func:`inpod_rules` returns it per table, in order, for one address
family. Two renderings exist:

* :func:`render_golden` - the full ruleset as a fresh ``iptables-restore`` file (what the golden files hold);
* :func:`plan_apply` / :func:`plan_remove` - the input actually fed to ``iptables-restore --noflush``,
  given the current ``iptables-save`` output of the pod netns. Declaring our chains flushes them, and the
  jumps from the built-in chains are added only when missing, so applying twice leaves the same ruleset
  (idempotent), and the whole change is one restore transaction (atomic).

Invariant: every rule we own lives in the chains ``ISTIO_PRERT``/``ISTIO_OUTPUT`` of mangle, nat and raw, plus
exactly one jump into each from ``PREROUTING``/``OUTPUT``; removal deletes all of these and nothing else.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from enum import Enum

INPOD_MARK = "0x539/0xfff"  # 1337: every socket ztunnel opens in the pod carries it
CONN_MARK = "0x111/0xfff"
RESTORE_MASK = "0xffffffff"
ROUTE_TABLE = 100
RULE_PREF = 32764
PORT_OUTBOUND = 15001
PORT_INBOUND = 15006
PORT_HBONE = 15008
PORT_DNS = 15053
DEFAULT_PROBE_SNAT_V4 = "169.254.7.127"
DEFAULT_PROBE_SNAT_V6 = "fd16:9254:7127:1337:ffff:ffff:ffff:ffff"

PRERT = "ISTIO_PRERT"
OUTPUT = "ISTIO_OUTPUT"
TABLES = ("mangle", "nat", "raw")


class Family(Enum):
    V4 = "ipv4"
    V6 = "ipv6"

    @property
    def localhost(self) -> str:
        return "127.0.0.1/32" if self is Family.V4 else "::1/128"

    @property
    def restore_cmd(self) -> str:
        return "iptables-restore" if self is Family.V4 else "ip6tables-restore"

    @property
    def save_cmd(self) -> str:
        return "iptables-save" if self is Family.V4 else "ip6tables-save"


#: A Linux interface name as iptables ``-i`` takes it: 1-15 characters, no white space, '/' or ':' ('+' is
#: iptables' wildcard). Anything else is refused: the names come from a pod annotation, so from the pod's
#: owner, and end up in iptables-restore input.
_IFNAME = re.compile(r"[A-Za-z0-9_.@+-]{1,15}")


class InvalidRuleConfig(ValueError):
    """A pod asked for rules that cannot be expressed safely (names the offending value)."""


@dataclass(frozen=True, slots=True)
class PodRuleConfig:
    """What varies between pods: DNS capture, ingress mode, rerouted virtual interfaces (§3.2 annotations)."""

    dns_capture: bool = True
    ingress_mode: bool = False  # ambient.istio.io/bypass-inbound-capture
    reroute_interfaces: tuple[str, ...] = ()
    probe_snat_v4: str = DEFAULT_PROBE_SNAT_V4
    probe_snat_v6: str = DEFAULT_PROBE_SNAT_V6

    def __post_init__(self) -> None:
        for iface in self.reroute_interfaces:
            if not _IFNAME.fullmatch(iface) or iface in {".", ".."}:
                raise InvalidRuleConfig(f"{iface!r} is not a valid network interface name")
        for ip in (self.probe_snat_v4, self.probe_snat_v6):
            ipaddress.ip_address(ip)  # raises ValueError naming the bad address

    def probe_snat(self, family: Family) -> str:
        return self.probe_snat_v4 if family is Family.V4 else self.probe_snat_v6


@dataclass(frozen=True, slots=True)
class TableRules:
    """One table: the jumps from built-in chains into ours, then the rules of our chains (``-A ...`` text)."""

    table: str
    chains: tuple[str, ...]
    jumps: tuple[str, ...]
    rules: tuple[str, ...]


#: The jumps into our chains, in the order §3.3 lists them for mangle and raw (nat lists OUTPUT first).
_JUMPS = (f"-A PREROUTING -j {PRERT}", f"-A OUTPUT -j {OUTPUT}")


def _mangle() -> TableRules:
    return TableRules(
        "mangle",
        (PRERT, OUTPUT),
        _JUMPS,
        (
            f"-A {PRERT} -m mark --mark {INPOD_MARK} -j CONNMARK --set-xmark {CONN_MARK}",
            f"-A {OUTPUT} -m connmark --mark {CONN_MARK} -j CONNMARK --restore-mark"
            f" --nfmask {RESTORE_MASK} --ctmask {RESTORE_MASK}",
        ),
    )


def _nat(family: Family, cfg: PodRuleConfig) -> TableRules:
    lo, snat, mark = family.localhost, cfg.probe_snat(family), INPOD_MARK
    rules: list[str] = []
    for iface in cfg.reroute_interfaces:  # inbound on these is treated as outbound (§3.2), so they go first
        rules.append(f"-A {PRERT} -i {iface} -p tcp -j REDIRECT --to-ports {PORT_OUTBOUND}")
        rules.append(f"-A {PRERT} -i {iface} -p tcp -j RETURN")
    if not cfg.ingress_mode:
        rules.append(f"-A {PRERT} -s {snat} -p tcp -m tcp -j ACCEPT")
    rules.append(f"-A {OUTPUT} -d {snat} -p tcp -m tcp -j ACCEPT")
    if not cfg.ingress_mode:
        rules.append(
            f"-A {PRERT} ! -d {lo} -p tcp ! --dport {PORT_HBONE} -m mark ! --mark {mark}"
            f" -j REDIRECT --to-ports {PORT_INBOUND}"
        )
    if cfg.dns_capture:
        rules.append(
            f"-A {OUTPUT} ! -o lo -p udp -m mark ! --mark {mark} -m udp --dport 53"
            f" -j REDIRECT --to-port {PORT_DNS}"
        )
        rules.append(
            f"-A {OUTPUT} ! -d {lo} -p tcp --dport 53 -m mark ! --mark {mark}"
            f" -j REDIRECT --to-ports {PORT_DNS}"
        )
    rules.append(f"-A {OUTPUT} -p tcp -m mark --mark {CONN_MARK} -j ACCEPT")
    rules.append(f"-A {OUTPUT} ! -d {lo} -o lo -j ACCEPT")
    rules.append(
        f"-A {OUTPUT} ! -d {lo} -p tcp -m mark ! --mark {mark} -j REDIRECT --to-ports {PORT_OUTBOUND}"
    )
    return TableRules(
        "nat", (PRERT, OUTPUT), (f"-A OUTPUT -j {OUTPUT}", f"-A PREROUTING -j {PRERT}"), tuple(rules)
    )


def _raw() -> TableRules:
    return TableRules(
        "raw",
        (PRERT, OUTPUT),
        _JUMPS,
        (
            f"-A {OUTPUT} -p udp -m mark --mark {INPOD_MARK} -m udp --dport 53 -j CT --zone 1",
            f"-A {PRERT} -p udp -m mark ! --mark {INPOD_MARK} -m udp --sport 53 -j CT --zone 1",
        ),
    )


def inpod_rules(family: Family, cfg: PodRuleConfig) -> tuple[TableRules, ...]:
    """The §3.3 ruleset for one family; the raw table exists only with DNS capture."""
    tables = [_mangle(), _nat(family, cfg)]
    if cfg.dns_capture:
        tables.append(_raw())
    return tuple(tables)


def render_golden(tables: tuple[TableRules, ...]) -> str:
    """The full ruleset as a self-contained restore file, as installed on an empty netns."""
    out: list[str] = []
    for t in tables:
        out.append(f"*{t.table}")
        out.extend(f":{chain} - [0:0]" for chain in t.chains)
        out.extend(t.jumps)
        out.extend(t.rules)
        out.append("COMMIT")
    return "\n".join(out) + "\n"


def parse_save(text: str) -> dict[str, tuple[set[str], list[str]]]:
    """``iptables-save`` output → {table: (chains declared, ``-A`` rules in order)}."""
    tables: dict[str, tuple[set[str], list[str]]] = {}
    current: tuple[set[str], list[str]] | None = None
    for line in text.splitlines():
        if line.startswith("*"):
            current = tables.setdefault(line[1:].strip(), (set(), []))
        elif current is None or line.startswith("#"):
            continue
        elif line.startswith(":"):
            current[0].add(line[1:].split()[0])
        elif line.startswith("-A "):
            current[1].append(line.strip())
    return tables


def plan_apply(tables: tuple[TableRules, ...], current_save: str) -> str:
    """Restore input (``--noflush``) making the netns hold exactly ``tables`` plus whatever else it had.

    Tables we no longer want (raw after DNS capture was turned off) are cleaned as in :func:`plan_remove`.
    """
    current = parse_save(current_save)
    wanted = {t.table for t in tables}
    stale = tuple(_owned_table(name) for name in TABLES if name not in wanted)
    out = [_remove_block(t, current) for t in stale]
    for t in tables:
        existing = current.get(t.table, (set(), []))[1]
        block = [f"*{t.table}", *(f":{c} - [0:0]" for c in t.chains)]  # declaring a chain flushes it
        block.extend(j for j in t.jumps if j not in existing)
        block.extend(t.rules)
        block.append("COMMIT")
        out.append("\n".join(block))
    return "\n".join(b for b in out if b) + "\n"


def plan_remove(current_save: str) -> str:
    """Restore input (for ``--noflush``) deleting every jump and chain we own; "" when nothing is there."""
    current = parse_save(current_save)
    blocks = [_remove_block(_owned_table(name), current) for name in TABLES]
    text = "\n".join(b for b in blocks if b)
    return text + "\n" if text else ""


def _owned_table(name: str) -> TableRules:
    return TableRules(name, (PRERT, OUTPUT), _JUMPS, ())


def _remove_block(t: TableRules, current: dict[str, tuple[set[str], list[str]]]) -> str:
    chains, rules = current.get(t.table, (set(), []))
    present = [c for c in t.chains if c in chains]
    jumps = [r for r in rules if r in t.jumps]  # duplicates too: each is deleted once
    if not present and not jumps:
        return ""
    block = [f"*{t.table}"]
    block.extend("-D" + j[2:] for j in jumps)
    block.extend(f":{c} - [0:0]" for c in present)  # flush before delete
    block.extend(f"-X {c}" for c in present)
    block.append("COMMIT")
    return "\n".join(block)
