"""The CA against the REAL API server of the local cluster (e2e/cluster): TokenReview, bound pod tokens and
the node authorizer over real pods, the istio-ca-secret create race, the root ConfigMap recreated after
deletion.

Pods here are bound to made-up node names (``id-node-a`` / ``id-node-b``): the API server stores them and
binds tokens to them, but no kubelet runs them, so the test costs the cluster nothing.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from istiod.ca.authority import CertificateAuthority
from istiod.ca.errors import ImpersonationDenied
from istiod.ca.nodeauth import KubePodLookup, NodeAuthorizer
from istiod.ca.rootcert import ROOT_CERT_KEY, KubeConfigMapStore, Outcome, RootCertPublisher
from istiod.ca.rootoftrust import KubeSecretStore, load_root_of_trust
from istiod.ca.service import CertificateServicer
from istiod.ca.serving import RotatingServerCredentials
from istiod.security.authn import AuthenticationError, KubeJwtAuthenticator, KubeTokenReviewer
from meshkit.identity.caclient import CaClient, CaClientConfig, CaClientError
from meshkit.identity.spiffe import Identity
from meshproto.istio.v1.auth import ca_pb2_grpc
from meshtest.fixtures import kube_cluster, kube_namespace  # noqa: F401 - pytest fixtures
from meshtest.kube import KubeCluster

pytestmark = [pytest.mark.cluster, pytest.mark.root]

NODE_A, NODE_B = "id-node-a", "id-node-b"
IMAGE = "localhost:5000/app:istio-testing"


@pytest.fixture
def api(kube_cluster: KubeCluster) -> Iterator[Any]:  # noqa: F811
    from kubernetes import config

    client = config.new_client_from_config(config_file=str(kube_cluster.kubeconfig))  # type: ignore[no-untyped-call]
    try:
        yield client
    finally:
        client.close()


def token(cluster: KubeCluster, ns: str, sa: str, audience: str = "istio-ca", pod: str | None = None) -> str:
    args = ["create", "token", "-n", ns, sa, "--audience", audience, "--duration", "10m"]
    if pod:
        args += ["--bound-object-kind", "Pod", "--bound-object-name", pod]
    return cluster.kubectl(*args).stdout.strip()


def make_pod(cluster: KubeCluster, ns: str, name: str, sa: str, node: str) -> None:
    cluster.kubectl("create", "serviceaccount", "-n", ns, sa, check=False)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"serviceAccountName": sa, "nodeName": node, "containers": [{"name": "c", "image": IMAGE}]},
    }
    cluster.apply(pod, ns)


@pytest.fixture
def pods_on_fake_nodes(kube_cluster: KubeCluster, kube_namespace: str) -> Iterator[str]:  # noqa: F811
    ns = kube_namespace
    make_pod(kube_cluster, ns, "zt-a", "ztunnel", NODE_A)
    make_pod(kube_cluster, ns, "web-1", "web", NODE_A)
    make_pod(kube_cluster, ns, "db-1", "db", NODE_B)
    try:
        yield ns
    finally:  # no kubelet will ever confirm their deletion
        kube_cluster.kubectl("delete", "pods", "--all", "-n", ns, "--force", "--grace-period=0", check=False)


def md(tok: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {tok}"), ("clusterid", "Kubernetes")]


async def test_token_review_accepts_a_service_account_token(
    api: Any,
    kube_cluster: KubeCluster,  # noqa: F811
    kube_namespace: str,  # noqa: F811
) -> None:
    kube_cluster.kubectl("create", "serviceaccount", "-n", kube_namespace, "workload")
    authn = KubeJwtAuthenticator(api)  # an ApiClient is wrapped in a KubeTokenReviewer
    caller = await authn.authenticate(md(token(kube_cluster, kube_namespace, "workload")))
    assert caller.identity == Identity("cluster.local", kube_namespace, "workload")
    assert caller.pod_name is None


async def test_token_review_rejections(api: Any, kube_cluster: KubeCluster, kube_namespace: str) -> None:  # noqa: F811
    ns = kube_namespace
    kube_cluster.kubectl("create", "serviceaccount", "-n", ns, "workload")
    reviewer = KubeTokenReviewer(api)
    authn = KubeJwtAuthenticator(reviewer)
    wrong_aud = token(kube_cluster, ns, "workload", audience="someone-else")
    # The API server itself refuses the audience (not only our early check).
    verdict = await reviewer.review(wrong_aud, ["istio-ca"])
    assert not verdict.authenticated
    with pytest.raises(AuthenticationError, match="bad token audience"):
        await authn.authenticate(md(wrong_aud))
    # A token whose claims were edited (signature no longer matches) passes our early check but not the API.
    good = token(kube_cluster, ns, "workload")
    head, body, sig = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    claims["sub"] = f"system:serviceaccount:{ns}:admin"
    forged_body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(AuthenticationError) as info:
        await authn.authenticate(md(f"{head}.{forged_body}.{sig}"))
    assert info.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert "the API server rejected the token" in info.value.message
    with pytest.raises(AuthenticationError, match="unknown cluster 'elsewhere'"):
        await authn.authenticate([("authorization", f"Bearer {good}"), ("clusterid", "elsewhere")])


async def test_bound_token_of_deleted_pod_is_rejected(
    api: Any,
    kube_cluster: KubeCluster,  # noqa: F811
    pods_on_fake_nodes: str,
) -> None:
    ns = pods_on_fake_nodes
    make_pod(kube_cluster, ns, "short-lived", "web", NODE_A)
    tok = token(kube_cluster, ns, "web", pod="short-lived")
    kube_cluster.kubectl("delete", "pod", "-n", ns, "short-lived", "--force", "--grace-period=0")
    with pytest.raises(AuthenticationError, match="the API server rejected the token"):
        await KubeJwtAuthenticator(KubeTokenReviewer(api)).authenticate(md(tok))


@pytest.fixture
async def ca_server(api: Any, ca: CertificateAuthority, pods_on_fake_nodes: str) -> AsyncIterator[int]:
    ns = pods_on_fake_nodes
    nodes = NodeAuthorizer([f"{ns}/ztunnel"], KubePodLookup(api))
    servicer = CertificateServicer(ca, KubeJwtAuthenticator(KubeTokenReviewer(api)), nodes)
    server = grpc.aio.server()
    ca_pb2_grpc.add_IstioCertificateServiceServicer_to_server(servicer, server)
    port = server.add_secure_port(
        "127.0.0.1:0", RotatingServerCredentials(ca, ["istiod.istio-system.svc"]).credentials()
    )
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)


async def test_impersonation_with_real_tokens_and_pods(
    ca: CertificateAuthority,
    ca_server: int,
    kube_cluster: KubeCluster,  # noqa: F811
    pods_on_fake_nodes: str,
) -> None:
    ns = pods_on_fake_nodes
    zt_token = token(kube_cluster, ns, "ztunnel", pod="zt-a")
    client = CaClient(
        CaClientConfig(
            address=f"127.0.0.1:{ca_server}",
            root_ca=ca.roots_pem,
            token=lambda: zt_token,
            server_name="istiod.istio-system.svc",
        )
    )
    try:
        web = await client.fetch(Identity("cluster.local", ns, "web"))
        assert web.identity.service_account == "web"
        with pytest.raises(CaClientError) as info:
            await client.fetch(Identity("cluster.local", ns, "db"))
        assert info.value.code is grpc.StatusCode.UNAUTHENTICATED
        assert str(info.value).endswith(
            f"request impersonation authentication failure: no pod with service account {ns}/db "
            f"is running on the caller's node {NODE_A}"
        )
        print(f"\nFORGED IMPERSONATION (real API server): {info.value}")
    finally:
        await client.close()


async def test_stale_caller_pod_uid_is_rejected(api: Any, pods_on_fake_nodes: str) -> None:
    """A token bound to a pod that was deleted and recreated under the same name must not count."""
    from istiod.security.authn import Caller

    ns = pods_on_fake_nodes
    caller = Caller(
        Identity("cluster.local", ns, "ztunnel"), ns, "ztunnel", "zt-a", "not-the-real-uid", "Kubernetes"
    )
    with pytest.raises(ImpersonationDenied, match="but the token is bound to UID not-the-real-uid"):
        await NodeAuthorizer([f"{ns}/ztunnel"], KubePodLookup(api)).authorize(
            caller, f"spiffe://cluster.local/ns/{ns}/sa/web"
        )


async def test_self_signed_root_race_against_the_api_server(api: Any, kube_namespace: str) -> None:  # noqa: F811
    store = KubeSecretStore(api)
    a, b = await asyncio.gather(
        load_root_of_trust(store, kube_namespace, trust_domain="cluster.local"),
        load_root_of_trust(store, kube_namespace, trust_domain="cluster.local"),
    )
    assert a.roots == b.roots
    restarted = await load_root_of_trust(store, kube_namespace, trust_domain="cluster.local")
    assert restarted.roots == a.roots


async def test_root_configmap_recreated_after_deletion(
    api: Any,
    ca: CertificateAuthority,
    kube_cluster: KubeCluster,  # noqa: F811
    kube_namespace: str,  # noqa: F811
) -> None:
    ns = kube_namespace
    store = KubeConfigMapStore(api)
    publisher = RootCertPublisher(store, ca.roots_pem)
    assert await publisher.reconcile(ns) is Outcome.CREATED
    events = store.watch(timeout_s=5)
    try:
        async with asyncio.timeout(30):
            # Wait until the watch has reported our ConfigMap, then delete it and wait for the recreation.
            async for event in events:
                if event.kind == "ConfigMap" and event.namespace == ns and event.type == "ADDED":
                    break
            kube_cluster.kubectl("delete", "configmap", "-n", ns, "istio-ca-root-cert")
            async for event in events:
                if event.kind == "ConfigMap" and event.namespace == ns and event.type == "DELETED":
                    assert await publisher.handle(event) is Outcome.CREATED
                    break
    finally:
        await events.aclose()
    cm = kube_cluster.get("configmap", "istio-ca-root-cert", ns)
    assert cm["data"][ROOT_CERT_KEY] == ca.roots_pem.decode()
    assert cm["metadata"]["labels"] == {"istio.io/config": "true"}


async def test_assembled_ca_against_the_api_server(
    api: Any,
    kube_cluster: KubeCluster,  # noqa: F811
    pods_on_fake_nodes: str,
) -> None:
    """build_ca as istiod's composition root calls it, with every Kubernetes-backed part real."""
    from istiod.ca.assemble import build_ca
    from istiod.ca.settings import CaSettings
    from meshkit.metrics import new_registry
    from meshkit.settings import load

    ns = pods_on_fake_nodes
    settings = load(
        CaSettings, {"POD_NAMESPACE": ns, "CACERTS_DIR": "", "CA_TRUSTED_NODE_ACCOUNTS": f"{ns}/ztunnel"}
    )
    parts = await build_ca(settings, api, registry=new_registry())
    assert parts.ca.bundle.source == f"secret {ns}/istio-ca-secret"
    assert await parts.publisher.reconcile(ns) is Outcome.CREATED
    server = grpc.aio.server()
    ca_pb2_grpc.add_IstioCertificateServiceServicer_to_server(parts.servicer, server)
    port = server.add_secure_port("127.0.0.1:0", parts.serving.credentials())
    await server.start()
    root = kube_cluster.get("configmap", "istio-ca-root-cert", ns)["data"][ROOT_CERT_KEY]
    client = CaClient(
        CaClientConfig(
            address=f"127.0.0.1:{port}",
            root_ca=root,  # what ztunnel mounts from the ConfigMap
            token=lambda: token(kube_cluster, ns, "ztunnel", pod="zt-a"),
            server_name=f"istiod.{ns}.svc",
        )
    )
    try:
        assert (await client.fetch(Identity("cluster.local", ns, "web"))).identity.service_account == "web"
        with pytest.raises(CaClientError, match="request impersonation authentication failure"):
            await client.fetch(Identity("cluster.local", ns, "db"))
    finally:
        await client.close()
        await server.stop(None)
