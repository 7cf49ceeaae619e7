"""``net.ipv4.tcp_migrate_req=1`` in each enrolled pod's netns (and only there), set by the agent when it
enrols the pod, also where ``/proc/sys`` is read-only as in the agent's container; a failure never fails
the enrolment.

Network namespaces here are named ``cnimig-<hex>``.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from istio_cni import netns as netns_module
from istio_cni.dataplane import DataplaneConfig, MeshDataplane
from istio_cni.metrics import CniMetrics
from istio_cni.netns import CommandResult, Netns
from istio_cni.podsysctl import TCP_MIGRATE_REQ
from meshkit.metrics import new_registry

MIGRATE_REQ = TCP_MIGRATE_REQ.removeprefix("/proc/sys/").replace("/", ".")


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


@pytest.fixture
def pod_netns() -> Iterator[str]:
    name = f"cnimig-{secrets.token_hex(4)}"
    assert run("ip", "netns", "add", name).returncode == 0
    try:
        assert run("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up").returncode == 0
        yield name
    finally:
        run("ip", "netns", "del", name)


def value_in(name: str) -> str:
    done = run("ip", "netns", "exec", name, "cat", TCP_MIGRATE_REQ)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def host_value() -> str:
    with open(TCP_MIGRATE_REQ) as f:
        return f.read().strip()


class Annotations:
    async def set_redirection(self, namespace: str, name: str, value: str | None) -> None:
        pass


def pod(uid: str = "u-mig") -> dict[str, Any]:
    return {
        "metadata": {"uid": uid, "name": f"web-{uid}", "namespace": "demo"},
        "spec": {"serviceAccountName": "web"},
        "status": {"podIP": "10.78.1.9"},
    }


async def enrol(name: str) -> None:
    dataplane = MeshDataplane(DataplaneConfig(), Annotations(), CniMetrics(new_registry()))
    try:
        assert not await dataplane.enrol(pod(), Netns.open(f"/var/run/netns/{name}"))  # no ztunnel: pending
        assert "u-mig" in dataplane.pods
    finally:
        dataplane.close()


@pytest.mark.root
async def test_enrolment_sets_tcp_migrate_req_in_the_pod_netns_only(pod_netns: str) -> None:
    host_before = host_value()
    assert value_in(pod_netns) == "0", "a new netns starts with the kernel default"
    await enrol(pod_netns)
    assert value_in(pod_netns) == "1"
    assert host_value() == host_before


@pytest.fixture
def read_only_proc_sys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command the agent runs sees ``/proc/sys`` read-only, as in a non-privileged container."""
    real = netns_module.run_command
    setup = 'mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && exec "$@"'

    async def in_container(
        argv: Sequence[str], stdin: str | None = None, pass_fds: Sequence[int] = (), limit_s: float = 10.0
    ) -> CommandResult:
        return await real(["unshare", "--mount", "sh", "-c", setup, "sh", *argv], stdin, pass_fds, limit_s)

    monkeypatch.setattr(netns_module, "run_command", in_container)


@pytest.mark.root
async def test_enrolment_sets_it_where_proc_sys_is_read_only(
    pod_netns: str, read_only_proc_sys: None
) -> None:
    handle = Netns.open(f"/var/run/netns/{pod_netns}")
    try:
        plain = await handle.run(["sh", "-c", f"echo 1 >{TCP_MIGRATE_REQ}"])
    finally:
        handle.close()
    assert plain.returncode != 0, "the test's container stand-in must bite"
    assert "Read-only" in plain.stderr
    host_before = host_value()
    await enrol(pod_netns)
    assert value_in(pod_netns) == "1"
    assert host_value() == host_before


class UnwritableNetns(Netns):
    """A netns in which every command fails as the sysctl write does on a kernel without it."""

    async def run(
        self, argv: Sequence[str], stdin: str | None = None, limit_s: float = 10.0
    ) -> CommandResult:
        return CommandResult(1, "", f"sh: 1: cannot create {TCP_MIGRATE_REQ}: No such file or directory")


async def test_failure_warns_once_and_enrols(caplog: pytest.LogCaptureFixture) -> None:
    dataplane = MeshDataplane(DataplaneConfig(), Annotations(), CniMetrics(new_registry()))
    try:
        with caplog.at_level(logging.WARNING, logger="cni.dataplane"):
            for uid in ("u1", "u2"):  # apply_rules=False: no iptables here, only the sysctl
                handle = UnwritableNetns(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC), uid)
                assert not await dataplane.enrol(pod(uid), handle, apply_rules=False)
        assert set(dataplane.pods) == {"u1", "u2"}
    finally:
        dataplane.close()
    warnings = [r for r in caplog.records if MIGRATE_REQ in r.getMessage()]
    assert len(warnings) == 1, caplog.text
    assert "No such file or directory" in warnings[0].__dict__["kv"]["error"]
