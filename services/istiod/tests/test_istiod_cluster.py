"""istiod against the REAL API server of the local cluster (e2e/cluster): informers list+watch real objects
and a real gRPC delta stream delivers the adds, updates and removals; the client authenticates with a real
ServiceAccount token (TokenReview); the writer Lease is really taken.

The pod is bound to a made-up node (no kubelet runs it); the test writes its status (IP, Ready) itself, as
a kubelet would, so the cluster does no work for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import Message
from istiod.app import App, build
from istiod.settings import Settings
from meshkit.drain import TaskOwner
from meshkit.k8s import KubeClient
from meshkit.k8s import resources as r
from meshkit.xds.client import XdsClient, XdsClientConfig
from meshkit.xds.client_core import ClientCore, Rejected
from meshkit.xds.types import ADDRESS_TYPE, NodeId
from meshproto.envoy.config.core.v3 import base_pb2
from meshtest.fixtures import kube_cluster, kube_namespace  # noqa: F401 - pytest fixtures
from meshtest.kube import KubeCluster

pytestmark = [pytest.mark.cluster, pytest.mark.root]
IMAGE = "localhost:5000/app:istio-testing"


class Store:
    def __init__(self) -> None:
        self.items: dict[str, Message] = {}
        self.removed: list[str] = []
        self.changed = asyncio.Event()

    def apply(self, type_url: str, upserts: list[tuple[str, Message]], removes: list[str]) -> list[Rejected]:
        if type_url == ADDRESS_TYPE:
            self.items.update(upserts)
            for name in removes:
                self.items.pop(name, None)
                self.removed.append(name)
        self.changed.set()
        return []

    async def wait(self, what: str, predicate: Callable[[], bool]) -> None:
        try:
            async with asyncio.timeout(30):
                while not predicate():
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}; have {sorted(self.items)}") from None


@pytest.fixture
async def istiod(
    kube_cluster: KubeCluster,  # noqa: F811
    kube_namespace: str,  # noqa: F811
) -> AsyncIterator[tuple[App, KubeClient]]:
    client = KubeClient.from_config(str(kube_cluster.kubeconfig))
    settings = Settings(
        secure_xds_addr="", plaintext_xds_addr="127.0.0.1:0", monitoring_addr="127.0.0.1:0",
        readiness_addr="127.0.0.1:0", ca_enabled=False, leader_election=True, namespace=kube_namespace,
        lease_name="istiod-test", pod_name="istiod-test-replica", debounce_s=0.05,
    )  # fmt: skip
    app = await build(settings, kube_client=client)
    try:
        yield app, KubeClient.from_config(str(kube_cluster.kubeconfig))
    finally:
        await app.shutdown()


async def call(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


async def test_real_objects_reach_a_real_delta_stream(
    istiod: tuple[App, KubeClient],
    kube_cluster: KubeCluster,  # noqa: F811
    kube_namespace: str,  # noqa: F811
    tmp_path: Path,
) -> None:  # fmt: skip
    app, kube = istiod
    ns = kube_namespace
    async with asyncio.timeout(60):
        await app.readiness.wait_ready()  # every watched kind listed (missing CRDs count as empty)
    store = Store()
    await call(kube.create, r.SERVICEACCOUNTS, {"metadata": {"name": "ztunnel"}}, ns)
    token = tmp_path / "istio-token"
    token.write_text(
        kube_cluster.kubectl("create", "token", "-n", ns, "ztunnel", "--audience", "istio-ca").stdout
    )
    node = base_pb2.Node(
        id=str(NodeId.ztunnel("127.0.0.1", "zt", ns))
    )  # the token's namespace (identity check)
    config = XdsClientConfig(
        address=f"http://127.0.0.1:{app.addresses['xds_plaintext']}", token=str(token), plaintext_token=True
    )
    client = XdsClient(config, ClientCore(node, store))
    async with TaskOwner("cluster-test") as owner:
        owner.spawn(client.run(), name="xds")
        svc_key = f"{ns}/web.{ns}.svc.cluster.local"
        service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "web", "namespace": ns},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
        }
        await call(kube.create, r.SERVICES, service, ns)
        await store.wait("the Service", lambda: svc_key in store.items)

        await call(kube.create, r.SERVICEACCOUNTS, {"metadata": {"name": "web"}}, ns)
        meta = {"name": "web-1", "namespace": ns, "labels": {"app": "web"}}
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
               "spec": {"nodeName": "istiod-test-node", "serviceAccountName": "web",
                        "containers": [{"name": "app", "image": IMAGE}]}}  # fmt: skip
        await call(kube.create, r.PODS, pod, ns)
        status = {"status": {"phase": "Running", "podIP": "10.244.250.7", "podIPs": [{"ip": "10.244.250.7"}],
                             "conditions": [{"type": "Ready", "status": "True"}]}}  # fmt: skip
        await call(kube.patch_status, r.PODS, "web-1", status, ns)
        uid = f"Kubernetes//Pod/{ns}/web-1"
        await store.wait("the pod's workload", lambda: uid in store.items)
        workload = store.items[uid].workload  # type: ignore[attr-defined]
        assert list(workload.services) == [svc_key]
        assert workload.service_account == "web"

        current = await call(kube.get, r.SERVICES, "web", ns)
        current["spec"]["ports"].append({"name": "grpc", "port": 90, "targetPort": 9090})
        await call(kube.replace, r.SERVICES, current, ns)
        await store.wait("the Service update", lambda: len(store.items[svc_key].service.ports) == 2)  # type: ignore[attr-defined]

        await call(kube.delete, r.PODS, "web-1", ns, 0)  # no kubelet runs it: no graceful wait
        await store.wait("the workload removal", lambda: uid not in store.items)
        await call(kube.delete, r.SERVICES, "web", ns)
        await store.wait("the Service removal", lambda: svc_key not in store.items)
        assert store.removed == [uid, svc_key]

    assert app.leader is not None
    async with asyncio.timeout(30):
        await app.leader.leading.wait()
    lease = await call(kube.get, r.LEASES, "istiod-test", ns)
    assert lease["spec"]["holderIdentity"] == "istiod-test-replica"
