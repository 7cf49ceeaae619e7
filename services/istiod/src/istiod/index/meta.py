"""Small readers over Kubernetes object dicts shared by the transformations: metadata, label selectors.

The readers are total: a field of the wrong shape (a list where a map belongs, a number for a label value)
reads as empty, so one malformed object cannot make the derivations of *other* objects fail (STYLE.md
practice 7); a derivation of the malformed object itself may still fail and then yields nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Obj = dict[str, Any]


def as_map(value: Any) -> Obj:
    """``value`` if it is a map, else an empty one."""
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    """``value`` if it is a list, else an empty one (a string is not a list of its characters)."""
    return value if isinstance(value, list) else []


def number(value: Any) -> int | None:
    """A non-negative int, or a string of ASCII decimal digits as an int (Go's ``strconv.ParseUint``);
    else None. (``str.isdigit`` alone also accepts ``"²"``, which ``int()`` then refuses.)"""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        return int(value)
    return None


def _metadata(obj: Obj | None) -> Obj:
    return as_map(as_map(obj).get("metadata"))


def name(obj: Obj) -> str:
    return str(_metadata(obj).get("name", ""))


def namespace(obj: Obj) -> str:
    return str(_metadata(obj).get("namespace", ""))


def _string_map(value: Any) -> dict[str, str]:
    return {k: v for k, v in as_map(value).items() if isinstance(k, str) and isinstance(v, str)}


def labels(obj: Obj | None) -> dict[str, str]:
    return _string_map(_metadata(obj).get("labels"))


def annos(obj: Obj | None) -> dict[str, str]:
    return _string_map(_metadata(obj).get("annotations"))


def spec(obj: Obj | None) -> Obj:
    return dict(as_map(as_map(obj).get("spec")))


def matches_labels(selector: Any, target: Mapping[str, str]) -> bool:
    """``matchLabels`` semantics: every selector pair is present in ``target`` (empty selects all); a
    selector that is not a map selects nothing."""
    if selector is None:
        return True
    if not isinstance(selector, Mapping):
        return False
    return all(target.get(k) == v for k, v in selector.items())


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
