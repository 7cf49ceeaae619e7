"""Small readers over Kubernetes object dicts shared by the transformations: metadata, label selectors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Obj = dict[str, Any]


def name(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def namespace(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("namespace", ""))


def labels(obj: Obj | None) -> dict[str, str]:
    return dict(((obj or {}).get("metadata") or {}).get("labels") or {})


def annos(obj: Obj | None) -> dict[str, str]:
    return dict(((obj or {}).get("metadata") or {}).get("annotations") or {})


def spec(obj: Obj | None) -> Obj:
    return dict((obj or {}).get("spec") or {})


def matches_labels(selector: Mapping[str, str] | None, target: Mapping[str, str]) -> bool:
    """``matchLabels`` semantics: every selector pair is present in ``target`` (empty selects all)."""
    return all(target.get(k) == v for k, v in (selector or {}).items())


def matches_label_selector(selector: Obj | None, target: Mapping[str, str]) -> bool:
    """A full ``metav1.LabelSelector`` (matchLabels + matchExpressions); absent matches nothing."""
    if selector is None:
        return False
    if not matches_labels(selector.get("matchLabels"), target):
        return False
    for expr in selector.get("matchExpressions") or ():
        key, op, values = expr.get("key", ""), expr.get("operator", ""), expr.get("values") or []
        ok = {
            "In": key in target and target[key] in values,
            "NotIn": key not in target or target[key] not in values,
            "Exists": key in target,
            "DoesNotExist": key not in target,
        }.get(op, False)
        if not ok:
            return False
    return True
