"""CNI invocation details that are pure: config selection, prevResult chaining, environment, results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from meshtest.cluster import cni

CONFLIST = {
    "cniVersion": "1.0.0",
    "name": "net",
    "plugins": [
        {"type": "bridge", "bridge": "cni0"},
        {"type": "portmap", "capabilities": {"portMappings": True}},
        {"type": "istio-cni", "capabilities": {"bandwidth": True}},
    ],
}


def test_first_config_file_by_name_wins(tmp_path: Path) -> None:
    (tmp_path / "20-other.conflist").write_text(json.dumps({**CONFLIST, "name": "other"}))
    (tmp_path / "10-net.conflist").write_text(json.dumps(CONFLIST))
    (tmp_path / "00-ignored.txt").write_text("x")
    assert cni.load_conflist(tmp_path)["name"] == "net"


def test_single_plugin_conf_is_wrapped(tmp_path: Path) -> None:
    (tmp_path / "10.conf").write_text(json.dumps({"cniVersion": "0.4.0", "name": "one", "type": "bridge"}))
    conf = cni.load_conflist(tmp_path)
    assert conf["plugins"] == [{"cniVersion": "0.4.0", "name": "one", "type": "bridge"}]


def test_empty_dir_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(cni.CniError):
        cni.load_conflist(tmp_path)


def test_plugin_config_chains_prev_result_and_runtime_config() -> None:
    first = cni.plugin_config(CONFLIST, 0, None, {"portMappings": [{"hostPort": 80}]})
    assert first == {"cniVersion": "1.0.0", "name": "net", "type": "bridge", "bridge": "cni0"}
    prev = {"ips": [{"address": "10.244.1.2/24"}]}
    second = cni.plugin_config(CONFLIST, 1, prev, {"portMappings": [{"hostPort": 80}]})
    assert second["prevResult"] == prev
    assert second["runtimeConfig"] == {"portMappings": [{"hostPort": 80}]}
    third = cni.plugin_config(CONFLIST, 2, prev, {"portMappings": []})
    assert "runtimeConfig" not in third
    assert third["prevResult"] == prev


def test_env_and_args() -> None:
    args = cni.pod_args("ns", "pod", "uid-1", "cid")
    env = cni.cni_env("ADD", "cid", "/run/netns/x", "eth0", args)
    assert env["CNI_COMMAND"] == "ADD"
    assert env["CNI_PATH"] == "/opt/cni/bin"
    assert env["CNI_IFNAME"] == "eth0"
    expected = "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=pod;K8S_POD_INFRA_CONTAINER_ID=cid"
    assert env["CNI_ARGS"] == expected + ";K8S_POD_UID=uid-1"


def test_result_ips_only_from_sandbox_interfaces() -> None:
    result = {
        "interfaces": [{"name": "cni0"}, {"name": "eth0", "sandbox": "/run/netns/x"}],
        "ips": [{"interface": 1, "address": "10.244.1.7/24"}, {"interface": 0, "address": "10.244.1.1/24"}],
    }
    assert cni.result_ips(result) == ["10.244.1.7"]
