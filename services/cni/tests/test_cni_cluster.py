"""The node agent against the local cluster's real API server (informers, ``pods/status`` patches) and a real
pod: labelling the namespace of a running pod enrols it without a restart (rules in its netns, annotation
``enabled`` once a ztunnel acked); removing the label takes every rule and the annotation away.

The agent runs in-process for the pod's node (node netns for the probe rules, CNI install off, so the
cluster's own CNI config is left alone); a meshkit.zds client plays ztunnel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from istio_cni.app import build
from istio_cni.netnsfind import find_named_netns, find_netns_path
from istio_cni.settings import Settings
from meshkit.settings import load
from meshkit.zds import WorkloadAdded, ZdsClientConnection, ZdsClosed
from meshtest.e2e.mesh import exclusive
from meshtest.fixtures import kube_cluster, kube_namespace  # noqa: F401 - fixtures used by name
from meshtest.kube import KubeCluster

pytestmark = [pytest.mark.cluster, pytest.mark.root]
IMAGE = "localhost:5000/app:istio-testing"
REDIRECTION = "ambient.istio.io/redirection"


def cni_daemonsets(kc: KubeCluster) -> list[object]:
    """istio-cni DaemonSets in any namespace (``kc.get`` without a namespace looks in ``default`` only)."""
    out = kc.kubectl("get", "daemonsets", "-A", "-l", "k8s-app=istio-cni-node", "-o", "json").stdout
    items: list[object] = json.loads(out)["items"]
    return items


@pytest.fixture
def no_mesh_session(kube_cluster: KubeCluster) -> Iterator[None]:  # noqa: F811
    """Hold the machine-wide mesh lock: an e2e session installs and removes the ambient chart (with its
    istio-cni DaemonSet) on this shared cluster, and that agent and ours would rewrite each other's CNI
    config. Under the lock, the DaemonSet check in each test is reliable."""
    if kube_cluster.layout is None:
        pytest.skip("needs the local cluster (node network namespaces)")
    if cni_daemonsets(kube_cluster):  # e.g. this very session installed the mesh: do not wait for its lock
        pytest.skip("an istio-cni DaemonSet already runs in this cluster; this test runs its own agent")
    lock = contextlib.ExitStack()
    try:
        lock.enter_context(exclusive(kube_cluster.layout.cache, timeout=120))
    except TimeoutError:
        pytest.skip("an e2e session holds the mesh lock on the shared cluster")
    with lock:
        yield


async def ack_everything(path: str) -> None:
    while True:
        try:
            conn = await ZdsClientConnection.connect(path)
        except OSError:
            await asyncio.sleep(0.05)  # the agent is not listening yet: reconnect back-off
            continue
        with contextlib.suppress(ZdsClosed):
            async with conn:
                while True:
                    event = await conn.next_event()
                    if isinstance(event, WorkloadAdded):
                        os.close(event.netns_fd)
                    await conn.ack()


def rules_present(pod_ip: str) -> bool:
    path = find_netns_path("/proc", (pod_ip,)) or find_named_netns(["/run/netns"], (pod_ip,))
    assert path is not None, f"no process found in the netns of {pod_ip}"

    out = subprocess.run(
        ["nsenter", f"--net={path}", "iptables-save"], capture_output=True, text=True, check=True
    )
    return "ISTIO_OUTPUT" in out.stdout


async def test_label_running_pod_enrols_and_unlabel_cleans(
    kube_cluster: KubeCluster,  # noqa: F811
    kube_namespace: str,  # noqa: F811
    tmp_path: Path,
    no_mesh_session: None,
) -> None:
    kc, ns = kube_cluster, kube_namespace
    if kc.layout is None:
        pytest.skip("needs the local cluster (node network namespaces)")
    if await asyncio.to_thread(cni_daemonsets, kc):  # two agents on one node would undo each other's work
        pytest.skip("an istio-cni DaemonSet already runs in this cluster; this test runs its own agent")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": IMAGE, "args": ["--port", "8080"]}]},
    }
    await asyncio.to_thread(kc.apply, pod, ns)
    (running,) = await asyncio.to_thread(kc.ready_pods, ns, "app=web", 1)
    node, pod_ip = running["spec"]["nodeName"], running["status"]["podIP"]
    settings = load(
        Settings,
        {
            "NODE_NAME": node,
            "KUBECONFIG": str(kc.kubeconfig),
            "INSTALL_CNI": "false",
            "HOST_NETNS_PATH": kc.layout.node(node).netns_path,
            "HOST_PROC_DIR": "/proc",
            "ZTUNNEL_UDS_ADDRESS": str(tmp_path / "ztunnel.sock"),
            "CNI_AGENT_RUN_DIR": str(tmp_path / "run"),
            "READINESS_PORT": "0",
            "MONITORING_PORT": "0",
            "LISTEN_ADDRESS": "127.0.0.1",
            "HOST_PROBE_RULES": "false",  # the node's probe rules belong to the cluster's own istio-cni
        },
    )
    app = await build(settings)
    ztunnel = asyncio.create_task(ack_everything(settings.ztunnel_uds))

    def annotation() -> str | None:
        value: str | None = kc.get("pod", "web", ns)["metadata"].get("annotations", {}).get(REDIRECTION)
        return value

    try:
        await asyncio.wait_for(app.readiness.wait_ready(), 60)
        assert not await asyncio.to_thread(rules_present, pod_ip)
        await asyncio.to_thread(kc.kubectl, "label", "namespace", ns, "istio.io/dataplane-mode=ambient")
        await asyncio.to_thread(kc.wait_for, "redirection enabled", lambda: annotation() == "enabled", 60)
        assert await asyncio.to_thread(rules_present, pod_ip)
        restarts = running["status"]["containerStatuses"][0]["restartCount"]

        await asyncio.to_thread(kc.kubectl, "label", "namespace", ns, "istio.io/dataplane-mode-")
        await asyncio.to_thread(kc.wait_for, "redirection removed", lambda: annotation() is None, 60)
        assert not await asyncio.to_thread(rules_present, pod_ip)
        now = await asyncio.to_thread(kc.get, "pod", "web", ns)
        assert now["metadata"]["uid"] == running["metadata"]["uid"]  # the same pod throughout
        assert now["status"]["containerStatuses"][0]["restartCount"] == restarts
    finally:
        ztunnel.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ztunnel
        await app.close()


async def test_new_pod_is_redirected_before_its_init_container(
    kube_cluster: KubeCluster,  # noqa: F811
    kube_namespace: str,  # noqa: F811
    tmp_path: Path,
    no_mesh_session: None,
) -> None:
    """The agent chains its plugin into a worker node's CNI config; a pod created in an ambient namespace on
    that node gets its rules during CNI ADD: its init container already sees them."""
    kc, ns = kube_cluster, kube_namespace
    if kc.layout is None:
        pytest.skip("needs the local cluster (node network namespaces)")
    if await asyncio.to_thread(cni_daemonsets, kc):
        pytest.skip("an istio-cni DaemonSet already runs in this cluster; this test runs its own agent")
    node = next(n for n in kc.layout.nodes if not n.control_plane)
    root = kc.layout.node_root(node.name)
    settings = load(
        Settings,
        {
            "NODE_NAME": node.name,
            "KUBECONFIG": str(kc.kubeconfig),
            "CNI_BIN_DIR": str(root / "opt/cni/bin"),
            "CNI_CONF_DIR": str(root / "etc/cni/net.d"),
            # a path the plugin (run with the node's binds over the host's tree) sees as we do, and not the
            # node's own /var/run/istio-cni, where a real agent would keep its socket
            "CNI_AGENT_RUN_DIR": str(tmp_path / "run"),
            "HOST_NETNS_PATH": node.netns_path,
            "HOST_PROC_DIR": "/proc",
            "ZTUNNEL_UDS_ADDRESS": str(tmp_path / "ztunnel.sock"),
            "READINESS_PORT": "0",
            "MONITORING_PORT": "0",
            "LISTEN_ADDRESS": "127.0.0.1",
        },
    )
    await asyncio.to_thread(kc.kubectl, "label", "namespace", ns, "istio.io/dataplane-mode=ambient")
    app = await build(settings)
    ztunnel = asyncio.create_task(ack_everything(settings.ztunnel_uds))
    # A failing iptables-save must not read as "no redirection": its own exit status is checked first.
    check = (
        "rules=$(iptables-save -t nat) || { echo cannot read the nat table; exit 2; }; "
        "echo \"$rules\" | grep -q 'REDIRECT --to-ports 15001' || { echo no redirection; exit 1; }"
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "fresh", "labels": {"app": "fresh"}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node.name},
            "initContainers": [
                {
                    "name": "check",
                    "image": "busybox",
                    "command": ["sh", "-c", check],
                    # reading the kernel's rule set needs CAP_NET_ADMIN, which the runtime's default
                    # capability set (containerd's, as the local cluster gives it) leaves out
                    "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}},
                }
            ],
            "containers": [{"name": "app", "image": IMAGE, "args": ["--port", "8080"]}],
        },
    }
    try:
        await asyncio.wait_for(app.readiness.wait_ready(), 60)
        await asyncio.to_thread(kc.apply, pod, ns)
        (ready,) = await asyncio.to_thread(kc.ready_pods, ns, "app=fresh", 1)
        await asyncio.to_thread(
            kc.wait_for,
            "redirection enabled",
            lambda: (
                kc.get("pod", "fresh", ns)["metadata"].get("annotations", {}).get(REDIRECTION) == "enabled"
            ),
            60,
        )
        assert ready["metadata"]["uid"] in app.dataplane.pods
        await asyncio.to_thread(kc.kubectl, "delete", "pod", "-n", ns, "fresh", "--wait=true")
        await asyncio.to_thread(kc.wait_for, "pod forgotten", lambda: not app.dataplane.pods, 60)
    finally:
        ztunnel.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ztunnel
        await app.uninstall()  # the node's CNI config goes back to what it was
        await app.close()
