"""The node authorizer: may this node proxy have a certificate for that identity? (wire-contracts.md §4.3)

Only a trusted node account (``CA_TRUSTED_NODE_ACCOUNTS``, ztunnel's ServiceAccount) may impersonate, and only
identities with a pod on its own node. The caller's node is not taken from anything the caller says: it is the
node of the pod its token is bound to, and that pod must still exist with the same UID and ServiceAccount. So
a broken-into ztunnel can get certificates for the pods on its node and nothing else (anchors.md §5c).

Stricter than upstream in one point: the requested identity must be in this mesh's trust domain (or an alias),
because the CA writes that URI into the certificate verbatim.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from istiod.ca.errors import ImpersonationDenied
from istiod.security.authn import Caller
from meshkit.identity.spiffe import Identity, InvalidIdentity
from meshkit.k8s import Event, EventType, Informer, Obj

__all__ = ["InformerPodLookup", "KubePodLookup", "NodeAuthorizer", "PodInfo", "PodLookup"]


@dataclass(frozen=True, slots=True)
class PodInfo:
    namespace: str
    name: str
    uid: str
    service_account: str
    node_name: str
    phase: str


class PodLookup(Protocol):
    """Pod queries the node authorizer needs; istiod's pod informer satisfies it."""

    async def get_pod(self, namespace: str, name: str) -> PodInfo | None: ...

    async def pods_on_node(self, node: str, namespace: str, service_account: str) -> Sequence[PodInfo]:
        """Pods on ``node`` in ``namespace`` that run as ``service_account`` (any phase)."""
        ...


def pod_info(pod: Any) -> PodInfo:
    """A :class:`PodInfo` from a ``kubernetes`` client V1Pod."""
    spec, status = pod.spec, pod.status
    return PodInfo(
        namespace=pod.metadata.namespace,
        name=pod.metadata.name,
        uid=pod.metadata.uid or "",
        service_account=(spec.service_account_name if spec else None) or "default",
        node_name=(spec.node_name if spec else None) or "",
        phase=(status.phase if status else None) or "",
    )


class KubePodLookup:
    """:class:`PodLookup` straight from the API server (no cache): simple, for small clusters and tests."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client

        self._api = client.CoreV1Api(api_client)

    def _get(self, namespace: str, name: str) -> PodInfo | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return pod_info(self._api.read_namespaced_pod(name, namespace))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _on_node(self, node: str, namespace: str, service_account: str) -> list[PodInfo]:
        selector = f"spec.nodeName={node},spec.serviceAccountName={service_account}"
        pods = self._api.list_namespaced_pod(namespace, field_selector=selector).items
        return [pod_info(p) for p in pods]

    async def get_pod(self, namespace: str, name: str) -> PodInfo | None:
        return await asyncio.to_thread(self._get, namespace, name)

    async def pods_on_node(self, node: str, namespace: str, service_account: str) -> Sequence[PodInfo]:
        return await asyncio.to_thread(self._on_node, node, namespace, service_account)


def pod_info_from_dict(obj: Obj) -> PodInfo:
    """A :class:`PodInfo` from a raw Pod object (as :class:`meshkit.k8s.Informer` stores them)."""
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    return PodInfo(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        service_account=str(spec.get("serviceAccountName") or "default"),
        node_name=str(spec.get("nodeName") or ""),
        phase=str(status.get("phase") or ""),
    )


class InformerPodLookup:
    """:class:`PodLookup` over istiod's pod informer, with a (node, namespace, service account) index.

    The index is kept by an informer subscription, so both run on the event loop and never disagree.
    """

    def __init__(self, informer: Informer) -> None:
        self._informer = informer
        self._by_node: dict[tuple[str, str, str], set[str]] = {}
        self._index_key: dict[str, tuple[str, str, str]] = {}
        informer.subscribe(self._on_events)

    def _on_events(self, batch: list[Event]) -> None:
        for event in batch:
            old = self._index_key.pop(event.key, None)
            if old is not None:
                self._by_node.get(old, set()).discard(event.key)
            if event.type is not EventType.DELETED:
                pod = pod_info_from_dict(event.obj)
                key = (pod.node_name, pod.namespace, pod.service_account)
                self._index_key[event.key] = key
                self._by_node.setdefault(key, set()).add(event.key)

    async def get_pod(self, namespace: str, name: str) -> PodInfo | None:
        obj = self._informer.get(f"{namespace}/{name}")
        return None if obj is None else pod_info_from_dict(obj)

    async def pods_on_node(self, node: str, namespace: str, service_account: str) -> Sequence[PodInfo]:
        keys = self._by_node.get((node, namespace, service_account), set())
        return [pod_info_from_dict(obj) for k in sorted(keys) if (obj := self._informer.get(k)) is not None]


class NodeAuthorizer:
    def __init__(
        self,
        trusted_accounts: Iterable[str],
        pods: PodLookup,
        trust_domains: Iterable[str] = ("cluster.local",),
    ) -> None:
        self._trusted = frozenset(a.strip() for a in trusted_accounts if a.strip())
        self._pods = pods
        self._trust_domains = frozenset(trust_domains)

    async def authorize(self, caller: Caller, requested: str) -> Identity:
        """The identity to issue, or :class:`ImpersonationDenied` naming the check that failed."""
        if not self._trusted:
            raise ImpersonationDenied("impersonation is disabled: CA_TRUSTED_NODE_ACCOUNTS is empty")
        if caller.service_account not in self._trusted:
            raise ImpersonationDenied(
                f"caller service account {caller.service_account} is not in CA_TRUSTED_NODE_ACCOUNTS"
            )
        try:
            target = Identity.parse(requested)
        except InvalidIdentity as exc:
            raise ImpersonationDenied(f"requested identity is not valid: {exc}") from None
        if target.trust_domain not in self._trust_domains:
            raise ImpersonationDenied(
                f"requested identity {target} is outside this mesh's trust domain "
                f"({', '.join(sorted(self._trust_domains))})"
            )
        try:
            node = await self._caller_node(caller)
            await self._require_pod_on_node(target, node)
        except ImpersonationDenied:
            raise
        except Exception as exc:  # the pod index is unreachable: deny, as upstream does, but say why
            raise ImpersonationDenied(f"pod lookup failed: {exc}") from exc
        return target

    async def _caller_node(self, caller: Caller) -> str:
        if not caller.pod_name or not caller.pod_uid:
            raise ImpersonationDenied(
                f"caller token for {caller.service_account} is not bound to a pod (use a projected token)"
            )
        ns, name = caller.service_account_namespace, caller.pod_name
        pod = await self._pods.get_pod(ns, name)
        if pod is None:
            raise ImpersonationDenied(f"caller pod {ns}/{name} (bound to the token) does not exist")
        if pod.uid != caller.pod_uid:
            raise ImpersonationDenied(
                f"caller pod {ns}/{name} has UID {pod.uid}, but the token is bound to UID {caller.pod_uid}"
            )
        if pod.service_account != caller.service_account_name:
            raise ImpersonationDenied(
                f"caller pod {ns}/{name} runs as {pod.service_account}, not {caller.service_account_name}"
            )
        if not pod.node_name:
            raise ImpersonationDenied(f"caller pod {ns}/{name} is not scheduled on a node")
        return pod.node_name

    async def _require_pod_on_node(self, target: Identity, node: str) -> None:
        pods = await self._pods.pods_on_node(node, target.namespace, target.service_account)
        if not any(p.node_name == node and p.phase != "Failed" for p in pods):
            raise ImpersonationDenied(
                f"no pod with service account {target.namespace}/{target.service_account} "
                f"is running on the caller's node {node}"
            )
