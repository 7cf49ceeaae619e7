"""ztunnel's state: the three stores behind one updater, plus the lookups the proxies use.

``apply_addresses`` / ``apply_authorizations`` are the only way in (xDS, static config and tests all call
them). Each resource is converted to a record first and rejected alone if it is bad; the returned list of
``(name, reason)`` becomes the NACK. ``find_*`` lookups are synchronous; ``fetch_*`` may wait (bounded) for a
record that has not arrived yet (behaviour.md §4.1: the source workload is waited for up to 5 s).

Listeners registered with :meth:`State.on_policy_change` run after every change to the policy store, or to
a workload's policy list, so inbound connections can be re-checked (§4.6 "existing connections").
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from meshkit.logs import kv
from meshproto.istio.security import authorization_pb2 as authz_pb2
from meshproto.istio.workload import workload_pb2 as wl_pb2

from ztunnel.state.convert import (
    InvalidResource,
    authorization_from_proto,
    service_from_proto,
    workload_from_proto,
)
from ztunnel.state.records import Authorization, Endpoint, Service, Workload
from ztunnel.state.stores import PolicyStore, ServiceStore, WorkloadStore

__all__ = ["ADDRESS_TYPE", "AUTHORIZATION_TYPE", "Rejected", "State"]

log = logging.getLogger("state")

ADDRESS_TYPE = "type.googleapis.com/istio.workload.Address"
AUTHORIZATION_TYPE = "type.googleapis.com/istio.security.Authorization"

Rejected = tuple[str, str]


class State:
    """Workloads, services and policies known to this ztunnel, changed only through the apply methods."""

    def __init__(self, network: str = "") -> None:
        self.network = network
        self.workloads = WorkloadStore()
        self.services = ServiceStore()
        self.policies = PolicyStore()
        self._changed = asyncio.Event()
        self._policy_listeners: list[Callable[[], None]] = []

    # --- the updater -------------------------------------------------------------------------------------
    def apply(
        self, type_url: str, upserts: Sequence[tuple[str, bytes]], removes: Sequence[str]
    ) -> list[Rejected]:
        """Apply one xDS update of raw ``Resource.resource.value`` bytes; unknown type URLs are ignored."""
        if type_url == ADDRESS_TYPE:
            return self.apply_addresses([(n, _decode(wl_pb2.Address, b)) for n, b in upserts], removes)
        if type_url == AUTHORIZATION_TYPE:
            return self.apply_authorizations(
                [(n, _decode(authz_pb2.Authorization, b)) for n, b in upserts], removes
            )
        log.info("ignoring unknown type", extra=kv(type_url=type_url))
        return []

    def apply_addresses(
        self, upserts: Sequence[tuple[str, wl_pb2.Address | None]], removes: Sequence[str]
    ) -> list[Rejected]:
        rejected: list[Rejected] = []
        policy_touched = False
        for name, msg in upserts:
            try:
                policy_touched |= self._upsert_address(name, msg)
            except InvalidResource as exc:
                rejected.append((name, str(exc)))
        for name in removes:
            policy_touched |= self._remove_address(name)
        self._notify(policy_touched)
        return rejected

    def apply_authorizations(
        self, upserts: Sequence[tuple[str, authz_pb2.Authorization | None]], removes: Sequence[str]
    ) -> list[Rejected]:
        rejected: list[Rejected] = []
        for name, msg in upserts:
            try:
                pol = authorization_from_proto(msg)
                if pol.key != name:
                    log.warning("policy resource name differs from ns/name", extra=kv(name=name, key=pol.key))
                self.policies.insert(pol)
            except InvalidResource as exc:
                rejected.append((name, str(exc)))
        for name in removes:
            self.policies.remove(name)
        self._notify(True)
        return rejected

    def insert_workload(self, wl: Workload) -> None:
        old = self.workloads.insert(wl)
        self.services.set_endpoints_of(old, wl)
        self._notify(_policies_changed(old, wl))

    def insert_service(self, svc: Service) -> None:
        self.services.insert(svc)
        self._notify(False)

    def insert_policy(self, pol: Authorization) -> None:
        self.policies.insert(pol)
        self._notify(True)

    def _upsert_address(self, name: str, msg: wl_pb2.Address | None) -> bool:
        kind = None if msg is None else msg.WhichOneof("type")
        if msg is None or kind is None:
            raise InvalidResource("unknown address type")
        if kind == "workload":
            wl = workload_from_proto(msg.workload)
            old = self.workloads.insert(wl)
            self.services.set_endpoints_of(old, wl)
            return _policies_changed(old, wl)
        self.services.insert(service_from_proto(msg.service))
        return False

    def _remove_address(self, name: str) -> bool:
        old = self.workloads.remove(name)
        if old is not None:
            self.services.set_endpoints_of(old, None)
            return True
        _ns, _, rest = name.partition("/")
        if "/" not in rest:  # a uid with slashes that we do not know: ignore, as upstream
            self.services.remove(name)
        return False

    def _notify(self, policy_touched: bool) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
        if policy_touched:
            for listener in list(self._policy_listeners):
                try:
                    listener()
                except Exception:
                    log.exception("policy listener failed")

    def on_policy_change(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` after policies (or a workload's policy list) change; returns an unsubscriber."""
        self._policy_listeners.append(listener)
        return lambda: self._policy_listeners.remove(listener)

    # --- lookups ---------------------------------------------------------------------------------------
    def find_workload_by_ip(self, ip: str) -> Workload | None:
        return self.workloads.find_by_addr(self.network, ip)

    def find_service_by_vip(self, ip: str, src_namespace: str) -> Service | None:
        """The service owning this VIP as seen from ``src_namespace`` (behaviour.md §4.1 step 2)."""
        keys = self.services.by_vip.get((self.network, ip))
        if keys:
            return _prefer(self.services.by_key[k] for k in keys if k in self.services.by_key)(src_namespace)
        return self._find_by_cidr(ip, src_namespace)

    def _find_by_cidr(self, ip: str, src_namespace: str) -> Service | None:
        addr = ipaddress.ip_address(ip)
        best: tuple[tuple[int, int, int], Service] | None = None
        for svc in self.services.by_key.values():
            for network, cidr in svc.cidr_vips:
                if network != self.network or addr not in cidr or not svc.visible_to(src_namespace):
                    continue
                rank = (svc.namespace == src_namespace, cidr.prefixlen, svc.canonical)
                if best is None or rank > best[0]:
                    best = (rank, svc)
        return None if best is None else best[1]

    def find_services_by_hostname(self, hostname: str, src_namespace: str) -> Service | None:
        keys = self.services.by_hostname.get(hostname)
        if not keys:
            return None
        return _prefer(self.services.by_key[k] for k in keys)(src_namespace)

    def find_service(self, key: str) -> Service | None:
        return self.services.by_key.get(key)

    def endpoints(self, svc: Service) -> list[tuple[Workload, Endpoint]]:
        eps = self.services.endpoints.get(svc.key, {})
        return [(self.workloads.by_uid[uid], ep) for uid, ep in eps.items() if uid in self.workloads.by_uid]

    def find_pod_workload(
        self, name: str, namespace: str, service_account: str, node: str
    ) -> Workload | None:
        """The WDS workload of a captured pod: same name/ns/sa and on this node (wire-contracts §5.4).

        A Pod workload wins over any other kind with the same name (a WorkloadEntry is written by users)."""
        found = [
            self.workloads.by_uid[uid]
            for uid in sorted(self.workloads.by_pod.get((name, namespace, service_account), ()))
            if not node or self.workloads.by_uid[uid].node == node
        ]
        return max(found, key=lambda wl: wl.is_pod, default=None)

    async def fetch_pod_workload(
        self, name: str, namespace: str, service_account: str, node: str, timeout_s: float
    ) -> Workload | None:
        """Like :meth:`find_pod_workload`, waiting up to ``timeout_s`` for it to arrive."""
        found: Workload | None = await self.wait_for(
            lambda: self.find_pod_workload(name, namespace, service_account, node), timeout_s
        )
        return found

    async def wait_for(self, probe: Callable[[], Any], timeout_s: float) -> Any:
        """Re-run ``probe`` after each change until it returns non-None or the timeout passes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (found := probe()) is None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return found

    def policies_for(self, wl: Workload) -> list[Authorization]:
        return self.policies.for_workload(wl)


def _prefer(candidates: Iterable[Service]) -> Callable[[str], Service | None]:
    """Visible to the source namespace, then same namespace, then canonical (ties: by key)."""
    pool = sorted(candidates, key=lambda s: s.key)

    def pick(src_namespace: str) -> Service | None:
        visible = [s for s in pool if s.visible_to(src_namespace)]
        if not visible:
            return None
        return max(visible, key=lambda s: (s.namespace == src_namespace, s.canonical))

    return pick


def _decode(cls: Any, raw: bytes) -> Any:
    msg = cls()
    try:
        msg.ParseFromString(raw)
    except Exception:
        return None
    return msg


def _policies_changed(old: Workload | None, new: Workload) -> bool:
    """Whether a workload update can change any authorization decision (its own policy list)."""
    before = old.authorization_policies if old is not None else ()
    return before != new.authorization_policies
