"""Pure pieces: conflist chaining, netns discovery parsers, settings, per-pod rule options, node plans."""

from __future__ import annotations

import json
import os

import pytest
from istio_cni import conflist
from istio_cni.dataplane import DataplaneConfig, pod_ips, rule_config
from istio_cni.enrolment import DEFAULT_SELECTORS, should_enrol, skip_reason
from istio_cni.hostrules import plan_host_apply, plan_host_remove
from istio_cni.netnsfind import _v4_local, _v6_local
from istio_cni.rules import Family
from istio_cni.settings import Settings
from meshkit.settings import SettingsError, load

ENTRY = conflist.plugin_entry(
    exclude_namespaces=["kube-system"], enablement_selectors=[], agent_run_dir="/run/x", kubeconfig="/run/x/k"
)


def test_pick_primary_like_kubelet() -> None:
    names = ["99-z.conflist", "10-calico.conflist", "README", ".hidden.conf", "05-a.conf"]
    assert conflist.pick_primary(names) == "05-a.conf"
    assert conflist.pick_primary(names, "10-calico.conflist") == "10-calico.conflist"
    assert conflist.pick_primary(["10-calico.conf"], "10-calico.conflist") == "10-calico.conf"
    assert conflist.pick_primary([]) is None


def test_chain_keeps_primary_and_is_idempotent() -> None:
    original = {
        "cniVersion": "1.0.0",
        "name": "k8s",
        "plugins": [{"type": "bridge", "x": 1}, {"type": "portmap"}],
    }
    name, text = conflist.chain("10.conflist", json.dumps(original), ENTRY)
    assert name == "10.conflist"
    chained = json.loads(text)
    assert chained["plugins"][:2] == original["plugins"]
    assert chained["plugins"][2]["type"] == "istio-cni"
    assert conflist.is_chained(name, text, ENTRY)
    assert conflist.chain(name, text, ENTRY)[1] == text  # replacing our entry changes nothing
    assert json.loads(conflist.unchain(name, text) or "") == original
    assert conflist.unchain(name, json.dumps(original)) is None


def test_single_conf_becomes_a_list() -> None:
    name, text = conflist.chain(
        "10-flannel.conf", json.dumps({"cniVersion": "0.4.0", "type": "flannel"}), ENTRY
    )
    assert name == "10-flannel.conflist"
    conf = json.loads(text)
    assert [p["type"] for p in conf["plugins"]] == ["flannel", "istio-cni"]
    assert conf["cniVersion"] == "0.4.0"


def test_broken_conf_is_reported_with_its_name() -> None:
    with pytest.raises(conflist.ConfError, match=r"10\.conflist"):
        conflist.chain("10.conflist", "{nope", ENTRY)


def test_fib_trie_and_if_inet6_parsing() -> None:
    fib = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 10.78.3.0
        /24 link UNICAST
     |-- 10.78.3.9
        /32 host LOCAL
Local:
     |-- 127.0.0.1
        /32 host LOCAL
"""
    assert _v4_local(fib) == {"10.78.3.9", "127.0.0.1"}
    inet6 = (
        "00000000000000000000000000000001 01 80 10 80       lo\n"
        "fd000078000000000000000000000009 02 40 00 80 eth0\n"
    )
    assert _v6_local(inet6) == {"::1", "fd00:78::9"}


def test_settings_from_chart_env() -> None:
    s = load(
        Settings,
        {
            "EXCLUDE_NAMESPACES": "kube-system,istio-system",
            "AMBIENT_DNS_CAPTURE": "false",
            "AMBIENT_ENABLEMENT_SELECTOR": "- podSelector:\n    matchLabels: {team: a}\n",
            "ZDS_RETRY_INTERVAL": "2s",
        },
    )
    assert s.exclude_namespaces == ["kube-system", "istio-system"]
    assert not s.dns_capture
    assert s.enablement_selectors == [{"podSelector": {"matchLabels": {"team": "a"}}}]
    assert s.retry_interval == 2.0
    assert load(Settings, {}).enablement_selectors == DEFAULT_SELECTORS
    with pytest.raises(SettingsError, match="AMBIENT_ENABLEMENT_SELECTOR"):
        load(
            Settings,
            {"AMBIENT_ENABLEMENT_SELECTOR": "- podSelector: {matchExpressions: [{key: a, operator: Bad}]}"},
        )


def test_rule_options_from_annotations() -> None:
    pod = {
        "metadata": {
            "annotations": {
                "ambient.istio.io/bypass-inbound-capture": "true",
                "ambient.istio.io/dns-capture": "false",
                "istio.io/reroute-virtual-interfaces": "tun0, tun1",
            }
        }
    }
    cfg = rule_config(pod, DataplaneConfig(dns_capture=True))
    assert cfg.ingress_mode
    assert not cfg.dns_capture
    assert cfg.reroute_interfaces == ("tun0", "tun1")
    assert rule_config({"metadata": {}}, DataplaneConfig(dns_capture=False)).dns_capture is False
    assert pod_ips(
        {"status": {"podIP": "10.78.1.1", "podIPs": [{"ip": "10.78.1.1"}, {"ip": "fd00::1"}]}}
    ) == (
        "10.78.1.1",
        "fd00::1",
    )


@pytest.mark.parametrize(
    "value",
    [
        "lo -p tcp -j RETURN\nCOMMIT\n__ISTIO_CNI_EOF__\ntouch /tmp/x",  # here-doc break-out
        "eth0 -j ACCEPT",
        "a/b",
        "averyveryverylongname",
        "..",
    ],
)
def test_reroute_interfaces_annotation_cannot_inject(value: str) -> None:
    """The names come from the pod's owner and end up in iptables-restore input run by a root agent."""
    from istio_cni.iptables import RuleError

    pod = {"metadata": {"annotations": {"istio.io/reroute-virtual-interfaces": value}}}
    with pytest.raises(RuleError, match=r"istio\.io/reroute-virtual-interfaces: .* is not a valid network"):
        rule_config(pod, DataplaneConfig())


def test_ztunnel_pods_never_enrolled() -> None:
    zt = {"metadata": {"namespace": "istio-system", "labels": {"app": "ztunnel"}}, "spec": {}}
    assert skip_reason(zt, []) == "ztunnel itself"
    ns = {"metadata": {"labels": {"istio.io/dataplane-mode": "ambient"}}}
    assert not should_enrol(zt, ns, DEFAULT_SELECTORS, [])


def test_node_rule_plans() -> None:
    plan = plan_host_apply(Family.V4, "169.254.7.127", "*nat\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n")
    assert "-I POSTROUTING 1 -j ISTIO_POSTRT" in plan
    assert "-m owner --socket-exists -p tcp -m set --match-set istio-inpod-probes-v4 dst" in plan
    installed = "*nat\n:ISTIO_POSTRT - [0:0]\n-A POSTROUTING -j ISTIO_POSTRT\nCOMMIT\n"
    assert "-I POSTROUTING" not in plan_host_apply(Family.V4, "169.254.7.127", installed)
    assert plan_host_remove(installed) == (
        "*nat\n-D POSTROUTING -j ISTIO_POSTRT\n:ISTIO_POSTRT - [0:0]\n-X ISTIO_POSTRT\nCOMMIT\n"
    )
    assert plan_host_remove("*nat\nCOMMIT\n") == ""


@pytest.mark.root
def test_named_netns_found_without_any_process(make_netns, subnet: str) -> None:  # type: ignore[no-untyped-def]
    from istio_cni.netnsfind import find_named_netns, find_netns_path

    ns = make_netns()
    ns.sh("ip", "link", "add", "cni-d0", "type", "veth", "peer", "name", "cni-d1")
    ns.sh("ip", "addr", "add", f"{subnet}.7/24", "dev", "cni-d0")
    assert find_netns_path("/proc", (f"{subnet}.7",)) is None  # no process lives there
    found = find_named_netns(["/nonexistent", "/var/run/netns"], (f"{subnet}.7",))
    assert found is not None
    assert os.stat(found).st_ino == os.stat(ns.path).st_ino
    assert find_named_netns(["/var/run/netns"], ("10.78.255.254",)) is None
