"""Offline validation of custom resources against CRD schemas, with the API server's strict field validation:
a structural schema becomes a JSON Schema in which objects reject fields they do not declare (unless marked
``x-kubernetes-preserve-unknown-fields``), as ``kubectl apply --validate=strict`` would."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jsonschema  # type: ignore[import-untyped]  # no stubs in the dev group

Obj = dict[str, Any]


def to_json_schema(schema: Obj) -> Obj:
    out: Obj = {}
    for key, value in schema.items():
        if key.startswith("x-kubernetes-"):
            continue
        if key == "properties":
            out[key] = {name: to_json_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = to_json_schema(value)
        else:
            out[key] = value
    if (
        schema.get("type") == "object"
        and "properties" in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
        and "additionalProperties" not in schema
    ):
        out["additionalProperties"] = False
    return out


class CrdValidator:
    """Validators for every served version of the given CRDs, keyed by (apiVersion, kind)."""

    def __init__(self, crds: Iterable[Obj]) -> None:
        self.schemas: dict[tuple[str, str], Obj] = {}
        for crd in crds:
            spec = crd["spec"]
            for version in spec["versions"]:
                root = dict(version["schema"]["openAPIV3Schema"])
                props = dict(root.get("properties", {}))
                props.update(
                    {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                    }
                )
                root["properties"] = props
                key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                self.schemas[key] = to_json_schema(root)

    def knows(self, obj: Obj) -> bool:
        return (obj.get("apiVersion"), obj.get("kind")) in self.schemas

    def errors(self, obj: Obj) -> list[str]:
        key = (str(obj.get("apiVersion")), str(obj.get("kind")))
        schema = self.schemas.get(key)
        if schema is None:
            return [f"no CRD serves {key[0]} {key[1]}"]
        validator = jsonschema.Draft7Validator(schema)
        name = obj.get("metadata", {}).get("name")
        return [
            f"{key[1]}/{name} {'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(obj)
        ]
