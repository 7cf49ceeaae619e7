"""Golden files for the in-pod rules (behaviour.md §3.3), IPv4 and IPv6, and the apply/remove planners."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from istio_cni.rules import (
    Family,
    PodRuleConfig,
    inpod_rules,
    plan_apply,
    plan_remove,
    render_golden,
)

TESTDATA = Path(__file__).parent / "testdata"

CASES = {
    "default": PodRuleConfig(),
    "no_dns": PodRuleConfig(dns_capture=False),
    "ingress": PodRuleConfig(ingress_mode=True),
    "virtual_interfaces": PodRuleConfig(reroute_interfaces=("fake1s0f0", "fake1s0f1")),
}


@pytest.mark.parametrize("family", [Family.V4, Family.V6], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str, family: Family) -> None:
    suffix = "" if family is Family.V4 else "_ipv6"
    path = TESTDATA / f"{case}{suffix}.golden"
    got = render_golden(inpod_rules(family, CASES[case]))
    if os.environ.get("REFRESH_GOLDEN"):
        path.write_text(got)
    assert got == path.read_text()


def test_default_matches_spec_rule_text() -> None:
    """A few lines copied from §3.3 verbatim, so a drift of the golden itself is caught too."""
    text = render_golden(inpod_rules(Family.V4, PodRuleConfig()))
    for line in (
        "-A ISTIO_PRERT -m mark --mark 0x539/0xfff -j CONNMARK --set-xmark 0x111/0xfff",
        "-A ISTIO_PRERT ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m mark ! --mark 0x539/0xfff"
        " -j REDIRECT --to-ports 15006",
        "-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -p tcp -m mark ! --mark 0x539/0xfff -j REDIRECT --to-ports 15001",
        "-A ISTIO_OUTPUT -p udp -m mark --mark 0x539/0xfff -m udp --dport 53 -j CT --zone 1",
    ):
        assert line in text.splitlines()


def test_plan_apply_skips_existing_jumps() -> None:
    tables = inpod_rules(Family.V4, PodRuleConfig(dns_capture=False))
    current = "*nat\n:OUTPUT ACCEPT [0:0]\n:ISTIO_OUTPUT - [0:0]\n-A OUTPUT -j ISTIO_OUTPUT\nCOMMIT\n"
    plan = plan_apply(tables, current)
    assert "-A OUTPUT -j ISTIO_OUTPUT" in plan.split("*nat")[0]  # mangle still needs its jump
    assert "-A OUTPUT -j ISTIO_OUTPUT" not in plan.split("*nat")[1]
    assert "-A PREROUTING -j ISTIO_PRERT" in plan.split("*nat")[1]


def test_plan_apply_cleans_raw_when_dns_capture_turned_off() -> None:
    current = "*raw\n:ISTIO_PRERT - [0:0]\n:ISTIO_OUTPUT - [0:0]\n-A PREROUTING -j ISTIO_PRERT\nCOMMIT\n"
    plan = plan_apply(inpod_rules(Family.V4, PodRuleConfig(dns_capture=False)), current)
    assert "*raw\n-D PREROUTING -j ISTIO_PRERT\n" in plan
    assert "-X ISTIO_OUTPUT" in plan


def test_plan_remove_empty_when_nothing_installed() -> None:
    assert plan_remove("*nat\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n") == ""
