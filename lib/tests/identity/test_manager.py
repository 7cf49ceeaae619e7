"""CertificateManager in fake time: prefetch, sharing, half-life rotation, back-off, forgetting."""

from __future__ import annotations

import asyncio
import base64
import random
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta

import pytest
from meshkit.identity.certs import WorkloadCertificate
from meshkit.identity.clock import ManualClock
from meshkit.identity.manager import (
    Backoff,
    CertificateManager,
    CertificateMetrics,
    CertificateUnavailable,
)
from meshkit.identity.spiffe import Identity
from meshkit.metrics import new_registry
from prometheus_client import CollectorRegistry

ALICE = Identity("cluster.local", "ns1", "alice")
BOB = Identity("cluster.local", "ns1", "bob")
TTL = timedelta(hours=24)


class FakeCa:
    """Issues records (no crypto: the manager never parses them); can be told to fail or to hold requests."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.calls: list[Identity] = []
        self.fail = False
        self.gate: asyncio.Event | None = None
        self.called = asyncio.Event()
        self.serial = 0

    async def fetch(self, identity: Identity) -> WorkloadCertificate:
        self.calls.append(identity)
        self.called.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise ConnectionError("istiod unreachable")
        self.serial += 1
        now = self.clock.now()
        return WorkloadCertificate(identity, b"chain", b"key", b"roots", now, now + TTL, self.serial)

    async def wait_calls(self, n: int) -> None:
        async with asyncio.timeout(5):
            while len(self.calls) < n:
                self.called.clear()
                await self.called.wait()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def ca(clock: ManualClock) -> FakeCa:
    return FakeCa(clock)


@pytest.fixture
def registry() -> CollectorRegistry:
    return new_registry()


@pytest.fixture
async def manager(
    ca: FakeCa, clock: ManualClock, registry: CollectorRegistry
) -> AsyncIterator[CertificateManager]:
    mgr = CertificateManager(
        ca,
        clock=clock,
        metrics=CertificateMetrics(registry),
        backoff=Backoff(jitter=0.0),
        rng=random.Random(1),
    )
    yield mgr
    await mgr.close()


def metric(registry: CollectorRegistry, name: str) -> float:
    value = registry.get_sample_value(name, {"request_type": "csr"} if name.startswith("num_") else {})
    assert value is not None
    return value


async def test_workload_arrival_prefetches(manager: CertificateManager, ca: FakeCa) -> None:
    events: list[tuple[Identity, WorkloadCertificate | None]] = []
    manager.add_listener(lambda i, c: events.append((i, c)))
    manager.workload_added("uid-1", ALICE)
    await ca.wait_calls(1)
    cert = await manager.fetch_certificate(ALICE)
    assert manager.find_certificate(ALICE) is cert
    assert events == [(ALICE, cert)]


async def test_find_does_not_wait(manager: CertificateManager, ca: FakeCa) -> None:
    ca.gate = asyncio.Event()
    manager.workload_added("uid-1", ALICE)
    await ca.wait_calls(1)
    assert manager.find_certificate(ALICE) is None
    ca.gate.set()
    assert (await manager.fetch_certificate(ALICE)).identity == ALICE


async def test_concurrent_requests_share_one_csr(manager: CertificateManager, ca: FakeCa) -> None:
    ca.gate = asyncio.Event()
    waiters = [asyncio.create_task(manager.fetch_certificate(ALICE)) for _ in range(20)]
    await ca.wait_calls(1)
    ca.gate.set()
    certs = await asyncio.gather(*waiters)
    assert len(ca.calls) == 1
    assert len({c.serial for c in certs}) == 1


async def test_rotation_at_half_life(
    manager: CertificateManager, ca: FakeCa, clock: ManualClock, registry: CollectorRegistry
) -> None:
    rotated: list[WorkloadCertificate | None] = []
    manager.add_listener(lambda _i, c: rotated.append(c))
    manager.workload_added("uid-1", ALICE)
    first = await manager.fetch_certificate(ALICE)
    await clock.wait_for_sleepers()
    assert clock.next_deadline() == first.refresh_at()
    await clock.advance(TTL.total_seconds() / 2 - 1)
    assert len(ca.calls) == 1  # not yet
    await clock.advance(1)
    await ca.wait_calls(2)
    await clock.wait_for_sleepers()
    second = manager.find_certificate(ALICE)
    assert second is not None
    assert second.serial != first.serial
    assert rotated == [first, second]
    assert metric(registry, "num_outgoing_requests_total") == 2
    assert metric(registry, "workload_certificates_held") == 1


async def test_backoff_doubles_and_caps_at_150s(
    manager: CertificateManager, ca: FakeCa, clock: ManualClock
) -> None:
    ca.fail = True
    manager.workload_added("uid-1", ALICE)
    delays = []
    for attempt in range(1, 11):
        await ca.wait_calls(attempt)
        await clock.wait_for_sleepers()
        deadline = clock.next_deadline()
        assert deadline is not None
        delays.append((deadline - clock.now()).total_seconds())
        await clock.advance(delays[-1])
    assert delays == [1, 2, 4, 8, 16, 32, 64, 128, 150, 150]
    with pytest.raises(CertificateUnavailable, match="istiod unreachable"):
        await manager.fetch_certificate(ALICE)


def test_backoff_jitter_never_exceeds_cap() -> None:
    rng = random.Random(7)
    delays = [Backoff().delay(n, rng) for n in range(1, 40)]
    assert max(delays) <= 150.0
    assert 0.8 <= delays[0] <= 1.2


async def test_failed_renewal_keeps_serving_valid_cert(
    manager: CertificateManager, ca: FakeCa, clock: ManualClock, registry: CollectorRegistry
) -> None:
    manager.workload_added("uid-1", ALICE)
    first = await manager.fetch_certificate(ALICE)
    await clock.wait_for_sleepers()
    ca.fail = True
    await clock.advance(TTL.total_seconds() / 2)
    await ca.wait_calls(2)
    await clock.wait_for_sleepers()
    assert manager.find_certificate(ALICE) is first
    assert await manager.fetch_certificate(ALICE) is first
    assert metric(registry, "num_failed_outgoing_requests_total") == 1
    # Recovery on the next retry replaces it.
    ca.fail = False
    await clock.advance(1)
    await ca.wait_calls(3)
    await clock.wait_for_sleepers()
    renewed = manager.find_certificate(ALICE)
    assert renewed is not None
    assert renewed.serial != first.serial


async def test_retry_never_scheduled_past_expiry_and_expired_cert_is_dropped(
    manager: CertificateManager, ca: FakeCa, clock: ManualClock
) -> None:
    gone: list[WorkloadCertificate | None] = []
    manager.add_listener(lambda _i, c: gone.append(c))
    manager.workload_added("uid-1", ALICE)
    first = await manager.fetch_certificate(ALICE)
    await clock.wait_for_sleepers()
    ca.fail = True
    await clock.advance(TTL.total_seconds() / 2)
    attempts = 1
    while clock.now() < first.not_after:
        attempts += 1
        await ca.wait_calls(attempts)
        await clock.wait_for_sleepers()
        deadline = clock.next_deadline()
        assert deadline is not None
        assert deadline <= first.not_after  # a retry never waits past the expiry of the cert it replaces
        clock.advance_to(deadline)
    await ca.wait_calls(attempts + 1)
    await clock.wait_for_sleepers()
    assert manager.find_certificate(ALICE) is None
    assert gone[-1] is None
    with pytest.raises(CertificateUnavailable):
        await manager.fetch_certificate(ALICE)


async def test_last_workload_leaving_forgets(
    manager: CertificateManager, ca: FakeCa, registry: CollectorRegistry
) -> None:
    events: list[tuple[Identity, WorkloadCertificate | None]] = []
    manager.add_listener(lambda i, c: events.append((i, c)))
    manager.workload_added("uid-1", ALICE)
    manager.workload_added("uid-2", ALICE)
    manager.workload_added("uid-3", BOB)
    await manager.fetch_certificate(ALICE)
    await manager.fetch_certificate(BOB)
    assert metric(registry, "workload_certificates_held") == 2
    manager.workload_removed("uid-1")
    assert manager.find_certificate(ALICE) is not None
    manager.workload_removed("uid-2")
    assert manager.find_certificate(ALICE) is None
    assert events[-1] == (ALICE, None)
    assert [s.identity for s in manager.statuses()] == [BOB]
    assert metric(registry, "workload_certificates_held") == 1
    assert len(ca.calls) == 2


async def test_on_demand_identity_is_dropped_at_refresh(
    manager: CertificateManager, ca: FakeCa, clock: ManualClock
) -> None:
    cert = await manager.fetch_certificate(BOB)
    await clock.wait_for_sleepers()
    await clock.advance((cert.refresh_at() - clock.now()).total_seconds())
    assert manager.find_certificate(BOB) is None
    assert len(ca.calls) == 1  # not refreshed for nobody


async def test_identity_change_for_same_uid(manager: CertificateManager, ca: FakeCa) -> None:
    manager.workload_added("uid-1", ALICE)
    await manager.fetch_certificate(ALICE)
    manager.workload_added("uid-1", ALICE)  # idempotent
    manager.workload_added("uid-1", BOB)
    assert manager.find_certificate(ALICE) is None
    assert (await manager.fetch_certificate(BOB)).identity == BOB


async def test_statuses_for_config_dump(manager: CertificateManager, ca: FakeCa) -> None:
    ca.fail = True
    manager.workload_added("uid-1", ALICE)
    await ca.wait_calls(1)
    with pytest.raises(CertificateUnavailable):
        await manager.fetch_certificate(ALICE)
    [status] = manager.statuses()
    assert status.state == "Unavailable"
    assert "istiod unreachable" in status.last_error
    assert status.workloads == 1
    assert isinstance(status.next_attempt, datetime)


async def test_config_dump_matches_ztunnel(sign: Callable[[bytes, list[str]], list[str]]) -> None:
    from meshkit.identity.csr import create_csr
    from meshkit.identity.pem import certificate_from_response

    class RealishCa:
        async def fetch(self, identity: Identity) -> WorkloadCertificate:
            if identity == BOB:
                raise ConnectionError("denied")
            csr = create_csr(identity)
            return certificate_from_response(identity, sign(csr.csr_pem, [identity.uri]), csr.private_key_pem)

    mgr = CertificateManager(RealishCa())
    try:
        cert = await mgr.fetch_certificate(ALICE)
        with pytest.raises(CertificateUnavailable):
            await mgr.fetch_certificate(BOB)
        dump = mgr.config_dump()
    finally:
        await mgr.close()
    assert [d["identity"] for d in dump] == [ALICE.uri, BOB.uri]
    alice, bob = dump
    assert alice["state"] == "Available"
    [leaf] = alice["certChain"]
    assert base64.b64decode(leaf["pem"]) == cert.chain_pem
    assert leaf["serialNumber"] == str(cert.serial)
    assert leaf["expirationTime"] == cert.not_after.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert len(alice["rootCerts"]) == 1
    assert bob == {"identity": BOB.uri, "state": "Unavailable: denied", "certChain": [], "rootCerts": []}


async def test_waiters_released_when_identity_is_forgotten(manager: CertificateManager, ca: FakeCa) -> None:
    ca.gate = asyncio.Event()
    manager.workload_added("uid-1", ALICE)
    waiter = asyncio.create_task(manager.fetch_certificate(ALICE))
    await ca.wait_calls(1)
    manager.workload_removed("uid-1")
    with pytest.raises(CertificateUnavailable, match="the identity is no longer needed"):
        await asyncio.wait_for(waiter, 5)


async def test_waiters_released_on_close(ca: FakeCa, clock: ManualClock) -> None:
    ca.gate = asyncio.Event()
    mgr = CertificateManager(ca, clock=clock)
    waiter = asyncio.create_task(mgr.fetch_certificate(ALICE))
    await ca.wait_calls(1)
    await mgr.close()
    with pytest.raises(CertificateUnavailable, match="closed"):
        await asyncio.wait_for(waiter, 5)
