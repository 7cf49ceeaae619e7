"""Property test of the apply/remove planners against a small model of ``iptables-restore --noflush``:
any sequence of applies (with changing per-pod options) and removes converges, keeps rules that are not ours,
and never duplicates a jump.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from istio_cni.rules import Family, PodRuleConfig, inpod_rules, plan_apply, plan_remove

State = dict[str, dict[str, list[str]]]  # table -> chain -> rules (text after "-A <chain> ")
BUILTIN = {
    "mangle": ["PREROUTING", "OUTPUT"],
    "nat": ["PREROUTING", "OUTPUT"],
    "raw": ["PREROUTING", "OUTPUT"],
}


def fresh() -> State:
    state: State = {t: {c: [] for c in chains} for t, chains in BUILTIN.items()}
    state["nat"]["OUTPUT"].append("-p tcp --dport 9 -j ACCEPT")  # someone else's rule
    return state


def restore(state: State, text: str) -> None:
    """``--noflush`` semantics: declaring a chain creates or flushes it; -A appends; -D deletes the first
    identical rule (error if none); -X deletes an empty, unreferenced chain."""
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":"):
            state[table][line[1:].split()[0]] = []
        elif line.startswith(("-A ", "-D ")):
            chain, _, rule = line[3:].partition(" ")
            if line.startswith("-A "):
                state[table][chain].append(rule)
            else:
                state[table][chain].remove(rule)  # raises like iptables-restore would fail
        elif line.startswith("-X "):
            chain = line[3:]
            assert not state[table][chain], "deleting a non-empty chain"
            assert not any(r.endswith(f"-j {chain}") for rs in state[table].values() for r in rs), "in use"
            del state[table][chain]


def save(state: State) -> str:
    out = []
    for table, chains in state.items():
        out.append(f"*{table}")
        out += [f":{c} - [0:0]" for c in chains]
        out += [f"-A {c} {r}" for c, rules in chains.items() for r in rules]
        out.append("COMMIT")
    return "\n".join(out) + "\n"


configs = st.builds(
    PodRuleConfig,
    dns_capture=st.booleans(),
    ingress_mode=st.booleans(),
    reroute_interfaces=st.lists(st.sampled_from(["tun0", "tun1"]), max_size=2, unique=True).map(tuple),
)
ops = st.lists(st.one_of(configs, st.none()), min_size=1, max_size=8)  # None = remove


@settings(max_examples=200, deadline=None)
@given(ops=ops, family=st.sampled_from(list(Family)))
def test_planners_converge(ops: list[PodRuleConfig | None], family: Family) -> None:
    state = fresh()
    for op in ops:
        if op is None:
            restore(state, plan_remove(save(state)))
        else:
            restore(state, plan_apply(inpod_rules(family, op), save(state)))
    last = ops[-1]
    expected = fresh()
    if last is not None:
        restore(expected, plan_apply(inpod_rules(family, last), save(expected)))
    assert state == expected
    for chains in state.values():
        for rules in chains.values():
            assert len([r for r in rules if r.startswith("-j ISTIO")]) <= 1  # never a duplicate jump
