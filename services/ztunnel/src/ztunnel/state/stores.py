"""The three stores and their indexes. Not thread-safe and not async: only :class:`~ztunnel.state.state.State`
changes them, from the event loop, one resource at a time.

Invariant of every store: an insert first removes the previous record with the same key from every index,
then adds the new record to every index, so an index never points at a stale record.
"""

from __future__ import annotations

from collections import defaultdict

from ztunnel.state.records import Authorization, Endpoint, NetworkAddress, Service, Workload

__all__ = ["PolicyStore", "ServiceStore", "WorkloadStore"]


class WorkloadStore:
    """Workloads by uid, by (network, ip), and by (name, namespace, service account) for ZDS matching.

    Several workloads may claim one address (a pod and a WorkloadEntry, or a pod that is going away and the
    new pod that got its IP): the address index keeps all of them and a lookup prefers a pod, then a
    captured (HBONE) workload, then the latest, as upstream does, so a WorkloadEntry cannot take over a pod's
    IP and the removal of one claimant never hides the others. HostNetwork workloads share their node's IP
    and are not indexed by address at all.
    """

    def __init__(self) -> None:
        self.by_uid: dict[str, Workload] = {}
        self.by_addr: dict[NetworkAddress, list[str]] = {}
        self.by_pod: dict[tuple[str, str, str], set[str]] = defaultdict(set)

    def __len__(self) -> int:
        return len(self.by_uid)

    def insert(self, wl: Workload) -> Workload | None:
        old = self.remove(wl.uid)
        self.by_uid[wl.uid] = wl
        if wl.network_mode != "HostNetwork":
            for ip in wl.addresses:
                self.by_addr.setdefault((wl.network, ip), []).append(wl.uid)
        self.by_pod[(wl.name, wl.namespace, wl.service_account)].add(wl.uid)
        return old

    def remove(self, uid: str) -> Workload | None:
        old = self.by_uid.pop(uid, None)
        if old is None:
            return None
        for ip in old.addresses:
            uids = self.by_addr.get((old.network, ip))
            if uids is not None and uid in uids:
                uids.remove(uid)
                if not uids:
                    del self.by_addr[(old.network, ip)]
        key = (old.name, old.namespace, old.service_account)
        self.by_pod[key].discard(uid)
        if not self.by_pod[key]:
            del self.by_pod[key]
        return old

    def find_by_addr(self, network: str, ip: str) -> Workload | None:
        uids = self.by_addr.get((network, ip))
        if not uids:
            return None
        best: Workload | None = None
        for uid in uids:  # later claimants win ties
            wl = self.by_uid[uid]
            if best is None or _addr_rank(wl) >= _addr_rank(best):
                best = wl
        return best


def _addr_rank(wl: Workload) -> tuple[bool, bool]:
    """Pods first (their IPs are assigned by the cluster, not written by users), then captured workloads."""
    return wl.is_pod, wl.hbone


class ServiceStore:
    """Services by key ("ns/hostname"), VIP and hostname; endpoints per service key, derived from workloads.

    Endpoints of a service not received yet are kept too (upstream's "staged services") so that they are in
    place the moment the service arrives.
    """

    def __init__(self) -> None:
        self.by_key: dict[str, Service] = {}
        self.by_vip: dict[NetworkAddress, set[str]] = defaultdict(set)
        self.by_hostname: dict[str, set[str]] = defaultdict(set)
        self.endpoints: dict[str, dict[str, Endpoint]] = defaultdict(dict)

    def __len__(self) -> int:
        return len(self.by_key)

    def insert(self, svc: Service) -> Service | None:
        old = self.remove(svc.key)
        self.by_key[svc.key] = svc
        for vip in svc.vips:
            self.by_vip[vip].add(svc.key)
        self.by_hostname[svc.hostname].add(svc.key)
        return old

    def remove(self, key: str) -> Service | None:
        old = self.by_key.pop(key, None)
        if old is None:
            return None
        for vip in old.vips:
            self.by_vip[vip].discard(key)
            if not self.by_vip[vip]:
                del self.by_vip[vip]
        self.by_hostname[old.hostname].discard(key)
        if not self.by_hostname[old.hostname]:
            del self.by_hostname[old.hostname]
        return old

    def set_endpoints_of(self, old: Workload | None, new: Workload | None) -> None:
        """Re-derive the endpoints a workload contributes (old removed, new added)."""
        if old is not None:
            for key in old.services:
                eps = self.endpoints.get(key)
                if eps is not None:
                    eps.pop(old.uid, None)
                    if not eps:
                        del self.endpoints[key]
        if new is not None:
            for key, ports in new.services.items():
                self.endpoints[key][new.uid] = Endpoint(new.uid, ports)

    def staged(self) -> dict[str, dict[str, Endpoint]]:
        """Endpoints whose service has not arrived yet."""
        return {key: eps for key, eps in self.endpoints.items() if key not in self.by_key}


class PolicyStore:
    """Authorizations by key ("ns/name"); NAMESPACE-scoped ones also by namespace, GLOBAL ones in a set."""

    def __init__(self) -> None:
        self.by_key: dict[str, Authorization] = {}
        self.by_namespace: dict[str, set[str]] = defaultdict(set)
        self.global_keys: set[str] = set()

    def __len__(self) -> int:
        return len(self.by_key)

    def insert(self, pol: Authorization) -> Authorization | None:
        old = self.remove(pol.key)
        self.by_key[pol.key] = pol
        if pol.scope == "NAMESPACE":
            self.by_namespace[pol.namespace].add(pol.key)
        elif pol.scope == "GLOBAL":
            self.global_keys.add(pol.key)
        return old

    def remove(self, key: str) -> Authorization | None:
        old = self.by_key.pop(key, None)
        if old is None:
            return None
        self.by_namespace[old.namespace].discard(key)
        if not self.by_namespace[old.namespace]:
            del self.by_namespace[old.namespace]
        self.global_keys.discard(key)
        return old

    def for_workload(self, wl: Workload) -> list[Authorization]:
        """GLOBAL + NAMESPACE(wl.namespace) + wl.authorization_policies (unknown keys skipped), §4.6."""
        keys = (
            set(self.global_keys)
            | self.by_namespace.get(wl.namespace, set())
            | set(wl.authorization_policies)
        )
        return [self.by_key[k] for k in sorted(keys) if k in self.by_key]
