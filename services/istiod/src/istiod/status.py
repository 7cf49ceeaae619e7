"""AuthorizationPolicy status: the ``ZtunnelAccepted`` condition istiod writes (leader only).

Desired conditions are a derived collection over the policies (pure: :func:`ztunnel_condition`); the writer
follows its changes and, while this replica leads, writes each one with read-modify-write on the ``status``
subresource, replacing only its own condition type (the waypoint controller owns ``WaypointAccepted``).
Our own writes come back through the informer but derive the same condition, so they cause no further write.
Policies with ``targetRef(s)`` get no ZtunnelAccepted condition (they are waypoint policies, §5.5).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from meshkit.k8s import Conflict, KubeClient, NotFound
from meshkit.k8s.resources import AUTHORIZATIONPOLICIES
from meshkit.logs import kv

from istiod.index import meta
from istiod.index.ambient import AmbientIndex
from istiod.index.authz import ConvertedPolicy
from istiod.index.krt import Change, Context, Derived

__all__ = ["CONDITION_TYPE", "PolicyCondition", "StatusWriter", "ztunnel_condition"]

log = logging.getLogger("status")
CONDITION_TYPE = "ZtunnelAccepted"
Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class PolicyCondition:
    status: bool
    reason: str
    message: str
    observed_generation: int

    def matches(self, existing: Obj) -> bool:
        return (existing.get("status") == ("True" if self.status else "False")
                and existing.get("reason") == self.reason and existing.get("message") == self.message
                and int(existing.get("observedGeneration") or 0) == self.observed_generation)  # fmt: skip

    def to_condition(self) -> Obj:
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"type": CONDITION_TYPE, "status": "True" if self.status else "False", "reason": self.reason,
                "message": self.message, "observedGeneration": self.observed_generation,
                "lastTransitionTime": now}  # fmt: skip


def ztunnel_condition(policy: Obj, converted: ConvertedPolicy | None) -> PolicyCondition | None:
    spec = meta.spec(policy)
    if converted is None or spec.get("targetRef") or spec.get("targetRefs"):
        return None
    generation = int((policy.get("metadata") or {}).get("generation") or 0)
    accepted = converted.authorization is not None
    if (
        converted.status is not None
    ):  # UnsupportedValue: still accepted with HTTP fields dropped, else refused
        return PolicyCondition(accepted, converted.status.reason, converted.status.message, generation)
    return PolicyCondition(True, "Accepted", "attached to ztunnel", generation)


class StatusWriter:
    def __init__(self, index: AmbientIndex, client: KubeClient) -> None:
        self.index = index
        self.client = client
        self.desired: Derived[Obj, PolicyCondition] = Derived(
            "policy-conditions", index.inputs["authorizationpolicies"], self._derive
        )
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self.writes = 0
        self.desired.subscribe(self._changed)

    def _derive(self, ctx: Context, policy: Obj) -> dict[str, PolicyCondition]:
        key = f"{meta.namespace(policy)}/{meta.name(policy)}"
        condition = ztunnel_condition(policy, ctx.get(self.index.converted_policies, key))
        return {key: condition} if condition else {}

    def _changed(self, changes: list[Change[PolicyCondition]]) -> None:
        for change in changes:
            if change.new is not None:
                self._queue.put_nowait(change.key)

    async def run(self) -> None:
        """Write every desired condition once, then follow changes (run only while leading)."""
        for key, _ in self.desired.items():
            self._queue.put_nowait(key)
        while True:
            key = await self._queue.get()
            condition = self.desired.get(key)
            if condition is None:
                continue
            try:
                await asyncio.to_thread(self._write, key, condition)
            except Exception as exc:
                log.warning("status write failed", extra=kv(policy=key, error=str(exc)))

    def _write(self, key: str, condition: PolicyCondition, attempts: int = 3) -> None:
        namespace, name = key.split("/", 1)
        for _ in range(attempts):
            try:
                current = self.client.get(AUTHORIZATIONPOLICIES, name, namespace)
            except NotFound:
                return
            status = dict(current.get("status") or {})
            conditions = [c for c in status.get("conditions") or () if c.get("type") != CONDITION_TYPE]
            existing = next(
                (c for c in status.get("conditions") or () if c.get("type") == CONDITION_TYPE), None
            )
            if existing is not None and condition.matches(existing):
                return
            current["status"] = {**status, "conditions": [*conditions, condition.to_condition()]}
            try:
                self.client.replace_status(AUTHORIZATIONPOLICIES, current, namespace)
                self.writes += 1
                return
            except Conflict:
                continue  # someone wrote in between: re-read and try again
