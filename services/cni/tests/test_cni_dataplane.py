"""A failed enrol in a real kernel: what the agent installed is rolled back, except a previous agent's rules,
which stay (fail closed). The failure is real: the node's probe ipset does not exist.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from istio_cni.dataplane import DataplaneConfig, MeshDataplane
from istio_cni.hostrules import HostRules
from istio_cni.iptables import RuleError, apply_pod_rules
from istio_cni.metrics import CniMetrics
from istio_cni.netns import Netns
from istio_cni.rules import DEFAULT_PROBE_SNAT_V4, DEFAULT_PROBE_SNAT_V6, PodRuleConfig
from meshkit.metrics import new_registry

pytestmark = pytest.mark.root


class NoAnnotations:
    async def set_redirection(self, namespace: str, name: str, value: str | None) -> None:
        raise AssertionError(f"a failed enrol must not annotate {namespace}/{name} ({value})")


def pod(annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"uid": "u1", "name": "web", "namespace": "demo", "annotations": annotations or {}},
        "spec": {"serviceAccountName": "web"},
        "status": {"podIP": "10.78.251.2"},
    }


def has_rules(ns: Any) -> bool:
    return "ISTIO_OUTPUT" in ns.sh("iptables-save") or "lookup 100" in ns.sh("ip", "rule")


@pytest.fixture
def broken_node(make_netns: Callable[[], Any]) -> Any:
    """Host rules whose ipsets were never created: every ``add_ips`` fails."""
    node = Netns.open(make_netns().path)
    yield HostRules(node, DEFAULT_PROBE_SNAT_V4, DEFAULT_PROBE_SNAT_V6)
    node.close()


async def test_failed_enrol_removes_the_rules_it_installed(make_netns, broken_node) -> None:  # type: ignore[no-untyped-def]
    ns = make_netns()
    dataplane = MeshDataplane(DataplaneConfig(), NoAnnotations(), CniMetrics(new_registry()), broken_node)
    with pytest.raises(RuleError, match="ipset add"):
        await dataplane.enrol(pod(), Netns.open(ns.path))
    assert not has_rules(ns)
    assert dataplane.pods == {}


async def test_failed_enrol_keeps_a_previous_agents_rules(make_netns, broken_node) -> None:  # type: ignore[no-untyped-def]
    ns = make_netns()
    handle = Netns.open(ns.path)
    try:
        await apply_pod_rules(handle, PodRuleConfig())  # what the agent before us installed
    finally:
        handle.close()
    dataplane = MeshDataplane(DataplaneConfig(), NoAnnotations(), CniMetrics(new_registry()), broken_node)
    with pytest.raises(RuleError):
        await dataplane.enrol(pod({"ambient.istio.io/redirection": "enabled"}), Netns.open(ns.path))
    assert has_rules(ns)  # fail closed: the pod's traffic still cannot bypass ztunnel
    assert dataplane.pods == {}


class PodView:
    """``KubeView`` over one pod of namespace ``demo``: the informer cache holds ``cached``, the API server
    answers ``current`` (a same-name predecessor when they differ, as for a StatefulSet pod); the test may
    relabel ``ns`` while the controller runs."""

    def __init__(
        self, cached: dict[str, Any], current: dict[str, Any], labels: dict[str, str] | None = None
    ) -> None:
        self.cached, self.current = cached, current
        labels = {"istio.io/dataplane-mode": "ambient"} if labels is None else labels
        self.ns: dict[str, Any] = {"metadata": {"name": "demo", "labels": labels}}

    def pod(self, key: str) -> dict[str, Any] | None:
        return self.cached

    def namespace(self, name: str) -> dict[str, Any] | None:
        return self.ns

    def node_pods(self) -> list[Mapping[str, Any]]:
        return [self.cached]

    async def fetch_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.current

    async def fetch_namespace(self, name: str) -> dict[str, Any] | None:
        return self.ns


class Recorder:
    def __init__(self) -> None:
        self.values: list[str | None] = []

    async def set_redirection(self, namespace: str, name: str, value: str | None) -> None:
        self.values.append(value)


async def test_plugin_add_enrols_the_pod_the_runtime_names(make_netns) -> None:  # type: ignore[no-untyped-def]
    from istio_cni.controller import PodController
    from istio_cni.enrolment import DEFAULT_SELECTORS
    from istio_cni.events import PluginAddEvent

    ns = make_netns()
    old, new = pod(), pod()
    new["metadata"]["uid"] = "u2"
    dataplane = MeshDataplane(DataplaneConfig(), Recorder(), CniMetrics(new_registry()))
    controller = PodController(PodView(old, new), dataplane, DEFAULT_SELECTORS, [])
    event = PluginAddEvent("web", "demo", "u2", ns.path, "c1", "eth0", ("10.78.251.2",))
    try:
        outcome = await controller.plugin_add(event)
        assert outcome.enrolled
        assert list(dataplane.pods) == ["u2"]  # not the cached predecessor's uid
        stale = PluginAddEvent("web", "demo", "u3", ns.path, "c2", "eth0", ())
        with pytest.raises(LookupError, match="is not the pod u3 being created"):
            await controller.plugin_add(stale)
    finally:
        await dataplane.unenrol("u2", deleted=False)
        dataplane.close()
    assert not has_rules(ns)


async def test_annotation_injection_runs_nothing_and_installs_nothing(make_netns, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A pod annotation crafted to end the restore here-doc and run a command: refused before any rule."""
    ns = make_netns()
    marker = tmp_path / "pwned"
    payload = f"lo -p tcp -j RETURN\nCOMMIT\n__ISTIO_CNI_EOF__\ntouch {marker}\ncat <<'__ISTIO_CNI_EOF__'"
    evil = pod({"istio.io/reroute-virtual-interfaces": payload})
    dataplane = MeshDataplane(DataplaneConfig(), NoAnnotations(), CniMetrics(new_registry()))
    with pytest.raises(RuleError, match="not a valid network interface name"):
        await dataplane.enrol(evil, Netns.open(ns.path))
    assert not marker.exists()
    assert not has_rules(ns)
    assert dataplane.pods == {}


async def test_owner_written_redirection_annotation_does_not_skip_rules(make_netns, subnet: str) -> None:  # type: ignore[no-untyped-def]
    """With AMBIENT_RECONCILE_POD_RULES_ON_STARTUP=false the agent trusts a previous agent's rules, but only
    during its start-up reconcile: later, a pod that carries the annotation from its own spec (its owner wrote
    it) and then joins the mesh must still get its rules, or its traffic would bypass ztunnel."""
    import asyncio

    from istio_cni.controller import PodController
    from istio_cni.enrolment import DEFAULT_SELECTORS

    ns = make_netns()
    ns.sh("ip", "link", "add", "cni-d0", "type", "veth", "peer", "name", "cni-d1")
    ns.sh("ip", "addr", "add", f"{subnet}.7/24", "dev", "cni-d0")
    the_pod = pod({"ambient.istio.io/redirection": "enabled"})
    the_pod["status"] = {"phase": "Running", "podIP": f"{subnet}.7"}
    view = PodView(the_pod, the_pod, labels={})
    dataplane = MeshDataplane(DataplaneConfig(), Recorder(), CniMetrics(new_registry()))
    controller = PodController(view, dataplane, DEFAULT_SELECTORS, [], reapply_on_startup=False)
    controller.resync()
    worker = asyncio.create_task(controller.run())
    try:
        async with asyncio.timeout(10):
            await controller.idle.wait()  # start-up reconcile done: the pod is not selected yet
            assert not has_rules(ns)
            view.ns["metadata"]["labels"] = {"istio.io/dataplane-mode": "ambient"}
            controller.namespace_changed(view.ns)
            await controller.idle.wait()
        assert list(dataplane.pods) == ["u1"]
        assert has_rules(ns)
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
        if "u1" in dataplane.pods:
            await dataplane.unenrol("u1", deleted=False)
        dataplane.close()
    assert not has_rules(ns)
