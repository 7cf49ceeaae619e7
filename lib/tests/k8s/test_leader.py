"""Lease expiry is judged on the local monotonic clock from when the record last changed (client-go's
observedTime), so a holder whose clock is skewed is not robbed while it keeps renewing."""

from __future__ import annotations

import copy
from typing import Any

from meshkit.k8s.client import NotFound
from meshkit.k8s.leader import LeaderElector
from meshkit.k8s.resources import Resource

Obj = dict[str, Any]


class FakeLeases:
    """The three Lease calls the elector makes, against one in-memory object."""

    def __init__(self) -> None:
        self.lease: Obj | None = None

    def get(self, _resource: Resource, _name: str, _namespace: str) -> Obj:
        if self.lease is None:
            raise NotFound(404, "NotFound")
        return copy.deepcopy(self.lease)

    def create(self, _resource: Resource, body: Obj, _namespace: str) -> Obj:
        self.lease = copy.deepcopy(body)
        return body

    def replace(self, _resource: Resource, body: Obj, _namespace: str) -> Obj:
        self.lease = copy.deepcopy(body)
        return body

    def renew_as(self, holder: str, renew_time: str) -> None:
        self.lease = {"metadata": {"name": "l"}, "spec": {"holderIdentity": holder, "renewTime": renew_time,
                                                          "acquireTime": "2000-01-01T00:00:00.000000Z",
                                                          "leaseDurationSeconds": 15}}  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _elector(leases: FakeLeases, clock: Clock) -> LeaderElector:
    return LeaderElector(leases, "ns", "l", "me", lease_duration_s=15, clock=clock)  # type: ignore[arg-type]


def test_a_renewing_holder_with_a_skewed_clock_keeps_the_lease() -> None:
    leases, clock = FakeLeases(), Clock()
    me = _elector(leases, clock)
    # the other replica's clock is an hour behind: its renewTime always looks stale to a wall-clock check
    for i in range(20):
        leases.renew_as("other", f"2000-01-01T00:00:{i:02d}.000000Z")
        assert not me.try_acquire_or_renew()
        clock.now += 5  # 100 s in all, far beyond the lease duration, but the record keeps changing
    assert leases.lease is not None
    assert leases.lease["spec"]["holderIdentity"] == "other"


def test_a_record_unchanged_for_the_lease_duration_is_taken_over() -> None:
    leases, clock = FakeLeases(), Clock()
    me = _elector(leases, clock)
    leases.renew_as("other", "2099-01-01T00:00:00.000000Z")  # even a renewTime in the future
    assert not me.try_acquire_or_renew()  # first seen now
    clock.now += 14
    assert not me.try_acquire_or_renew()
    clock.now += 2  # 16 s without a change
    assert me.try_acquire_or_renew()
    assert leases.lease is not None
    spec = leases.lease["spec"]
    assert (spec["holderIdentity"], spec["leaseTransitions"]) == ("me", 1)
    assert me.try_acquire_or_renew()  # renewing our own lease needs no waiting


def test_creates_a_missing_lease() -> None:
    leases, clock = FakeLeases(), Clock()
    assert _elector(leases, clock).try_acquire_or_renew()
    assert leases.lease is not None
    assert leases.lease["spec"]["holderIdentity"] == "me"
