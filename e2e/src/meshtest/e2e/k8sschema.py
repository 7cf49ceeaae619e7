"""Offline check of Kubernetes objects against the API's field schema, as the ``kubernetes`` client's
generated
models describe it (``openapi_types`` / ``attribute_map`` per kind, generated from the API server's OpenAPI).

It catches what ``helm lint`` cannot: a misspelt or misplaced field (``readinessprobe``, ``ports`` under the
pod), a list where an object belongs, a number where a string is required (an unquoted env value). Required
fields and value formats are left to the API server's own validation (the ``cluster`` chart tests run a
server-side dry-run for that).
"""

from __future__ import annotations

import datetime
import re
from typing import Any

import kubernetes.client as models

_LIST = re.compile(r"^List\[(.+)\]$")
_DICT = re.compile(r"^Dict\[str, (.+)\]$")
#: map-valued fields whose values are Kubernetes quantities: "500m", but also bare numbers in YAML
_QUANTITY_MAPS = {"requests", "limits", "capacity", "allocatable", "hard"}


def model_for(obj: dict[str, Any]) -> type | None:
    """``apps/v1`` + ``Deployment`` → ``V1Deployment``; ``None`` for kinds without a model."""
    version = str(obj.get("apiVersion", "")).rsplit("/", 1)[-1]
    name = version[:1].upper() + version[1:] + str(obj.get("kind", ""))
    found = getattr(models, name, None)
    return found if isinstance(found, type) and hasattr(found, "openapi_types") else None


def validate(obj: dict[str, Any]) -> list[str]:
    """Problems found in ``obj`` (empty when it fits its kind's schema)."""
    model = model_for(obj)
    if model is None:
        return [f"no schema for {obj.get('apiVersion')}/{obj.get('kind')}"]
    errors: list[str] = []
    _check(obj, model.__name__, f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}", errors, "")
    return errors


def _check(value: Any, type_name: str, path: str, errors: list[str], field: str) -> None:
    if value is None:
        return
    if m := _LIST.match(type_name):
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list, got {type(value).__name__}")
            return
        for i, item in enumerate(value):
            _check(item, m.group(1), f"{path}[{i}]", errors, field)
        return
    if m := _DICT.match(type_name):
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a map, got {type(value).__name__}")
            return
        inner = m.group(1)
        for key, item in value.items():
            if inner == "str" and field in _QUANTITY_MAPS and isinstance(item, int | float):
                continue
            _check(item, inner, f"{path}.{key}", errors, field)
        return
    scalar = _scalar(type_name)
    if scalar is not None:
        if not isinstance(value, scalar) or (scalar is int and isinstance(value, bool)):
            errors.append(f"{path}: expected {type_name}, got {type(value).__name__} {value!r}")
        return
    if type_name == "object":  # int-or-string, free-form JSON
        return
    model = getattr(models, type_name, None)
    if model is None:
        return
    if not isinstance(value, dict):
        errors.append(f"{path}: expected an object ({type_name}), got {type(value).__name__}")
        return
    json_to_attr = {json: attr for attr, json in model.attribute_map.items()}
    for key, item in value.items():
        attr = json_to_attr.get(key)
        if attr is None:
            errors.append(f"{path}: unknown field {key!r} in {type_name}")
            continue
        _check(item, model.openapi_types[attr], f"{path}.{key}", errors, key)


def _scalar(type_name: str) -> type | tuple[type, ...] | None:
    table: dict[str, type | tuple[type, ...]] = {
        "str": str,
        "int": int,
        "bool": bool,
        "float": (int, float),
        "datetime": (str, datetime.datetime),
        "bytes": str,
    }
    return table.get(type_name)
