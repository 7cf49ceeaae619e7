"""Golden-file tests of policy translation (behaviour.md §5.5 to §5.7).

Each ``testdata/authz/<case>.yaml`` holds AuthorizationPolicies, PeerAuthentications and ``TestWorkload``
stand-ins (namespace + labels); ``<case>.golden.yaml`` holds what istiod sends: the Authorization resources
as the proto's JSON mapping (addresses shown as IP strings for review), the status conditions, and the policy
keys each workload lists. Regenerate with
``ISTIOD_REGEN_GOLDEN=1 uv run pytest services/istiod/tests -k golden`` and review the diff.
"""

from __future__ import annotations

import base64
import ipaddress
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf.json_format import MessageToDict
from istiod.index import meta, policies
from istiod.index.encode import encode_authorization
from istiod.index.records import Authorization

ROOT = "istio-system"
DATA = Path(__file__).parent / "testdata" / "authz"
CASES = sorted(p for p in DATA.glob("*.yaml") if not p.name.endswith(".golden.yaml"))


def _readable(node: Any) -> Any:
    """Show ``address`` bytes (base64 in the JSON mapping) as IP strings."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            is_ip = key == "address" and isinstance(value, str)
            out[key] = str(ipaddress.ip_address(base64.b64decode(value))) if is_ip else _readable(value)
        return out
    if isinstance(node, list):
        return [_readable(v) for v in node]
    return node


def _as_dict(auth: Authorization) -> dict[str, Any]:
    out = _readable(MessageToDict(encode_authorization(auth), preserving_proto_field_name=True))
    # the JSON mapping omits zero enums; show GLOBAL / ALLOW explicitly so a reviewer never has to guess
    out.setdefault("scope", "GLOBAL")
    out.setdefault("action", "ALLOW")
    return dict(out)


def translate(docs: list[dict[str, Any]]) -> dict[str, Any]:
    aps = [d for d in docs if d.get("kind") == "AuthorizationPolicy"]
    pas = [d for d in docs if d.get("kind") == "PeerAuthentication"]
    converted = policies.convert_all(aps, ROOT)
    resources = [c.authorization for c in converted if c.authorization is not None]
    resources += policies.converted_peer_authentications(pas, ROOT)
    authorizations = {a.resource_name: _as_dict(a) for a in sorted(resources, key=lambda a: a.resource_name)}
    statuses = {
        f"{meta.namespace(ap)}/{meta.name(ap)}": {"reason": c.status.reason, "message": c.status.message}
        for ap, c in zip(aps, converted, strict=True)
        if c.status is not None
    }
    workloads = {
        f"{meta.namespace(w)}/{meta.name(w)}": list(
            policies.workload_policy_keys(meta.namespace(w), meta.labels(w), converted, pas, ROOT)
        )
        for w in docs
        if w.get("kind") == "TestWorkload"
    }
    return {"authorizations": authorizations, "statuses": statuses, "workload_policies": workloads}


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_golden(case: Path) -> None:
    docs = [d for d in yaml.safe_load_all(case.read_text()) if d]
    got = translate(docs)
    golden = case.with_name(f"{case.stem}.golden.yaml")
    if os.environ.get("ISTIOD_REGEN_GOLDEN"):
        golden.write_text(yaml.safe_dump(got, sort_keys=True, width=110))
    assert golden.exists(), f"missing {golden.name}; run with ISTIOD_REGEN_GOLDEN=1 and review it"
    assert got == yaml.safe_load(golden.read_text())
