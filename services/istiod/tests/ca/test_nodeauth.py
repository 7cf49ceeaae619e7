"""The node authorizer: only ztunnel, only identities with a live pod on ztunnel's own node."""

from __future__ import annotations

import grpc
import pytest
from istiod.ca.errors import ImpersonationDenied
from istiod.ca.nodeauth import NodeAuthorizer
from istiod.security.authn import Caller
from meshkit.identity.spiffe import Identity

from .conftest import FakePods

ZTUNNEL = Caller(
    Identity("cluster.local", "istio-system", "ztunnel"), "istio-system", "ztunnel", "zt-a", "uid-zt-a", "K"
)
TARGET = "spiffe://cluster.local/ns/app/sa/web"


@pytest.fixture
def nodes(pods: FakePods) -> NodeAuthorizer:
    return NodeAuthorizer(["istio-system/ztunnel"], pods)


async def denied(nodes: NodeAuthorizer, caller: Caller, target: str) -> str:
    with pytest.raises(ImpersonationDenied) as info:
        await nodes.authorize(caller, target)
    assert info.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert info.value.message.startswith("request impersonation authentication failure: ")
    return info.value.message


async def test_pod_on_own_node_allowed(nodes: NodeAuthorizer) -> None:
    assert await nodes.authorize(ZTUNNEL, TARGET) == Identity.parse(TARGET)


async def test_pod_on_other_node_denied(nodes: NodeAuthorizer) -> None:
    message = await denied(nodes, ZTUNNEL, "spiffe://cluster.local/ns/app/sa/db")
    assert message == (
        "request impersonation authentication failure: no pod with service account app/db "
        "is running on the caller's node node-a"
    )


async def test_failed_pod_does_not_count(nodes: NodeAuthorizer) -> None:
    assert "app/job" in await denied(nodes, ZTUNNEL, "spiffe://cluster.local/ns/app/sa/job")


async def test_untrusted_caller_denied(nodes: NodeAuthorizer) -> None:
    web = Caller(Identity("cluster.local", "app", "web"), "app", "web", "web-1", "uid-web-1", "K")
    assert "caller service account app/web is not in CA_TRUSTED_NODE_ACCOUNTS" in await denied(
        nodes, web, TARGET
    )


async def test_disabled_when_no_trusted_accounts(pods: FakePods) -> None:
    assert "CA_TRUSTED_NODE_ACCOUNTS is empty" in await denied(NodeAuthorizer([], pods), ZTUNNEL, TARGET)


async def test_malformed_identity(nodes: NodeAuthorizer) -> None:
    assert "requested identity is not valid" in await denied(nodes, ZTUNNEL, "spiffe://cluster.local/app/web")


async def test_foreign_trust_domain(nodes: NodeAuthorizer) -> None:
    assert "outside this mesh's trust domain" in await denied(
        nodes, ZTUNNEL, "spiffe://evil.org/ns/app/sa/web"
    )


async def test_token_not_bound_to_pod(nodes: NodeAuthorizer) -> None:
    unbound = Caller(ZTUNNEL.identity, "istio-system", "ztunnel", None, None, "K")
    assert "not bound to a pod" in await denied(nodes, unbound, TARGET)


async def test_bound_pod_gone(nodes: NodeAuthorizer) -> None:
    ghost = Caller(ZTUNNEL.identity, "istio-system", "ztunnel", "zt-gone", "uid-x", "K")
    assert "caller pod istio-system/zt-gone (bound to the token) does not exist" in await denied(
        nodes, ghost, TARGET
    )


async def test_stale_token_of_recreated_pod(nodes: NodeAuthorizer) -> None:
    stale = Caller(ZTUNNEL.identity, "istio-system", "ztunnel", "zt-a", "uid-old", "K")
    assert "has UID uid-zt-a, but the token is bound to UID uid-old" in await denied(nodes, stale, TARGET)


async def test_bound_pod_runs_as_other_account(pods: FakePods) -> None:
    pods.add("istio-system", "imposter", "other", "node-a")
    caller = Caller(ZTUNNEL.identity, "istio-system", "ztunnel", "imposter", "uid-imposter", "K")
    nodes = NodeAuthorizer(["istio-system/ztunnel"], pods)
    assert "runs as other, not ztunnel" in await denied(nodes, caller, TARGET)


async def test_unscheduled_caller_pod(pods: FakePods) -> None:
    pods.add("istio-system", "zt-pending", "ztunnel", "")
    caller = Caller(ZTUNNEL.identity, "istio-system", "ztunnel", "zt-pending", "uid-zt-pending", "K")
    assert "is not scheduled on a node" in await denied(
        NodeAuthorizer(["istio-system/ztunnel"], pods), caller, TARGET
    )


class FakeInformer:
    """The two parts of meshkit.k8s.Informer the adapter uses: the store and the subscription."""

    def __init__(self) -> None:
        self.store: dict[str, dict[str, object]] = {}
        self.handlers: list[object] = []

    def subscribe(self, handler: object) -> None:
        self.handlers.append(handler)

    def get(self, key: str) -> dict[str, object] | None:
        return self.store.get(key)

    def apply(self, kind: str, obj: dict[str, object]) -> None:
        from meshkit.k8s import Event, EventType, object_key

        key = object_key(obj)
        if kind == "DELETED":
            self.store.pop(key, None)
        else:
            self.store[key] = obj
        for handler in self.handlers:
            handler([Event(EventType(kind), key, obj)])  # type: ignore[operator]


def raw_pod(ns: str, name: str, sa: str, node: str, phase: str = "Running") -> dict[str, object]:
    return {
        "metadata": {"namespace": ns, "name": name, "uid": f"uid-{name}"},
        "spec": {"serviceAccountName": sa, "nodeName": node},
        "status": {"phase": phase},
    }


async def test_informer_backed_lookup_follows_pod_events() -> None:
    from istiod.ca.nodeauth import InformerPodLookup

    informer = FakeInformer()
    nodes = NodeAuthorizer(["istio-system/ztunnel"], InformerPodLookup(informer))  # type: ignore[arg-type]
    informer.apply("ADDED", raw_pod("istio-system", "zt-a", "ztunnel", "node-a"))
    assert "app/web" in await denied(nodes, ZTUNNEL, TARGET)
    informer.apply("ADDED", raw_pod("app", "web-1", "web", "node-b"))
    assert "app/web" in await denied(nodes, ZTUNNEL, TARGET)
    informer.apply("UPDATED", raw_pod("app", "web-1", "web", "node-a"))  # (rescheduled under the same name)
    assert await nodes.authorize(ZTUNNEL, TARGET) == Identity.parse(TARGET)
    informer.apply("DELETED", raw_pod("app", "web-1", "web", "node-a"))
    assert "app/web" in await denied(nodes, ZTUNNEL, TARGET)
