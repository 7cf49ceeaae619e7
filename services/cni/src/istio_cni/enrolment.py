"""Which pods belong in the mesh (behaviour.md §3.2). Pure functions over plain Kubernetes JSON objects.

Shared by the CNI plugin (which must stay light: standard library only) and the node agent. A pod is enrolled
when any enablement selector matches it and its namespace, unless it is host-networked, already has a sidecar
(``sidecar.istio.io/status``) or lives in an excluded namespace.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

DATAPLANE_MODE = "istio.io/dataplane-mode"
SIDECAR_STATUS = "sidecar.istio.io/status"
REDIRECTION_ANNOTATION = "ambient.istio.io/redirection"
BYPASS_INBOUND = "ambient.istio.io/bypass-inbound-capture"
DNS_CAPTURE_ANNOTATION = "ambient.istio.io/dns-capture"
REROUTE_INTERFACES = "istio.io/reroute-virtual-interfaces"

Obj = Mapping[str, Any]

#: Helm's default ``ambient.enablementSelectors``: pod label, or namespace label unless the pod opts out.
DEFAULT_SELECTORS: list[dict[str, Any]] = [
    {"podSelector": {"matchLabels": {DATAPLANE_MODE: "ambient"}}},
    {
        "podSelector": {
            "matchExpressions": [{"key": DATAPLANE_MODE, "operator": "NotIn", "values": ["none"]}]
        },
        "namespaceSelector": {"matchLabels": {DATAPLANE_MODE: "ambient"}},
    },
]


class SelectorError(ValueError):
    """An enablement selector is malformed (names the offending part)."""


def labels_of(obj: Obj | None) -> Mapping[str, str]:
    if not obj:
        return {}
    return obj.get("metadata", {}).get("labels") or {}


def annotations_of(obj: Obj | None) -> Mapping[str, str]:
    if not obj:
        return {}
    return obj.get("metadata", {}).get("annotations") or {}


def selector_matches(selector: Obj | None, labels: Mapping[str, str]) -> bool:
    """Kubernetes LabelSelector semantics; an absent selector matches everything."""
    if not selector:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    return all(_expression(expr, labels) for expr in selector.get("matchExpressions") or ())


def _expression(expr: Obj, labels: Mapping[str, str]) -> bool:
    key, op, values = str(expr.get("key")), expr.get("operator"), expr.get("values") or []
    if op == "In":
        return key in labels and labels[key] in values
    if op == "NotIn":
        return key not in labels or labels[key] not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    raise SelectorError(f"unknown label selector operator {op!r} in {dict(expr)!r}")


def validate_selectors(selectors: Any) -> list[dict[str, Any]]:
    """Check the shape of an enablement selector list (from the chart) and return it."""
    if not isinstance(selectors, list):
        raise SelectorError("enablement selectors must be a list of {podSelector, namespaceSelector}")
    for item in selectors:
        if not isinstance(item, dict) or not set(item) <= {"podSelector", "namespaceSelector"}:
            raise SelectorError(f"bad enablement selector {item!r}")
        for sel in item.values():
            for expr in (sel or {}).get("matchExpressions") or ():
                _expression(expr, {})
    return selectors


def namespace_selected(pod: Obj, namespace: Obj | None, selectors: Sequence[Obj]) -> bool:
    pod_labels, ns_labels = labels_of(pod), labels_of(namespace)
    return any(
        selector_matches(s.get("podSelector"), pod_labels)
        and selector_matches(s.get("namespaceSelector"), ns_labels)
        for s in selectors
    )


def skip_reason(
    pod: Obj, exclude_namespaces: Sequence[str], system_namespace: str = "istio-system"
) -> str | None:
    """Why a pod can never be enrolled, whatever the labels say; None if it can."""
    meta, spec = pod.get("metadata", {}), pod.get("spec", {})
    if meta.get("namespace") in exclude_namespaces:
        return "namespace excluded"
    if meta.get("namespace") == system_namespace and labels_of(pod).get("app") == "ztunnel":
        return "ztunnel itself"
    if spec.get("hostNetwork"):
        return "host network"
    if SIDECAR_STATUS in annotations_of(pod):
        return "sidecar injected"
    return None


def should_enrol(pod: Obj, namespace: Obj | None, selectors: Sequence[Obj], exclude: Sequence[str]) -> bool:
    return skip_reason(pod, exclude) is None and namespace_selected(pod, namespace, selectors)


def pod_is_running(pod: Obj) -> bool:
    """Terminal or deleting pods are cleaned up, never enrolled."""
    status = pod.get("status", {})
    return status.get("phase") not in ("Succeeded", "Failed") and not pod.get("metadata", {}).get(
        "deletionTimestamp"
    )
