"""Kubernetes access shared by istiod and the CNI node agent: a raw JSON client, resource descriptors,
list+watch informers (:mod:`meshkit.k8s.informer`) and Lease-based leader election
(:mod:`meshkit.k8s.leader`).
"""

from meshkit.k8s.client import ApiError, Conflict, Gone, KubeClient, NotFound
from meshkit.k8s.informer import Callbacks, Event, EventType, Informer
from meshkit.k8s.resources import Obj, Resource, object_key, resource_version

__all__ = [
    "ApiError",
    "Callbacks",
    "Conflict",
    "Event",
    "EventType",
    "Gone",
    "Informer",
    "KubeClient",
    "NotFound",
    "Obj",
    "Resource",
    "object_key",
    "resource_version",
]
