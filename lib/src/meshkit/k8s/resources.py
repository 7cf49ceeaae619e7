"""Descriptors of the Kubernetes resource kinds our controllers read and write.

A :class:`Resource` names one REST collection (group, version, plural) and knows how to build its URL paths,
so one generic client serves core kinds and CRDs alike. Objects travel as plain JSON dicts (no generated
model classes): decoding 10,000 pods into typed models would dominate istiod's start-up, and the index's pure
transformations read a few fields only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]
"""A Kubernetes object as decoded JSON."""


@dataclass(frozen=True, slots=True)
class Resource:
    """One REST collection: ``group``/``version``/``plural`` (empty group = the core API)."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        """``/api/v1/namespaces/ns/pods/name`` or ``/apis/g/v/plural`` (all namespaces for None)."""
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace is not None:
            base = f"{base}/namespaces/{namespace}"
        base = f"{base}/{self.plural}"
        return f"{base}/{name}" if name is not None else base

    def __str__(self) -> str:
        return f"{self.plural}.{self.group or 'core'}/{self.version}"


NAMESPACES = Resource("", "v1", "namespaces", "Namespace", namespaced=False)
NODES = Resource("", "v1", "nodes", "Node", namespaced=False)
PODS = Resource("", "v1", "pods", "Pod")
SERVICES = Resource("", "v1", "services", "Service")
CONFIGMAPS = Resource("", "v1", "configmaps", "ConfigMap")
SERVICEACCOUNTS = Resource("", "v1", "serviceaccounts", "ServiceAccount")
ENDPOINTSLICES = Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice")
LEASES = Resource("coordination.k8s.io", "v1", "leases", "Lease")
SERVICEENTRIES = Resource("networking.istio.io", "v1", "serviceentries", "ServiceEntry")
WORKLOADENTRIES = Resource("networking.istio.io", "v1", "workloadentries", "WorkloadEntry")
AUTHORIZATIONPOLICIES = Resource("security.istio.io", "v1", "authorizationpolicies", "AuthorizationPolicy")
PEERAUTHENTICATIONS = Resource("security.istio.io", "v1", "peerauthentications", "PeerAuthentication")
GATEWAYS = Resource("gateway.networking.k8s.io", "v1", "gateways", "Gateway")
GATEWAYCLASSES = Resource(
    "gateway.networking.k8s.io", "v1", "gatewayclasses", "GatewayClass", namespaced=False
)


def object_key(obj: Obj) -> str:
    """``namespace/name`` for namespaced objects, ``name`` for cluster-scoped ones (client-go keys)."""
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace")
    name = str(meta.get("name", ""))
    return f"{namespace}/{name}" if namespace else name


def resource_version(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))
