"""The composition root against a small fake API server on loopback (real HTTP and informer threads):
readiness waits for every kind's initial sync, debug endpoints, and Lease leader election between replicas."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from istiod.app import build
from istiod.settings import Settings
from meshkit.drain import TaskOwner
from meshkit.k8s import KubeClient
from meshkit.k8s.leader import LeaderElector

SETTINGS = Settings(
    secure_xds_addr="", plaintext_xds_addr="127.0.0.1:0", monitoring_addr="127.0.0.1:0",
    readiness_addr="127.0.0.1:0", ca_enabled=False, leader_election=False, debounce_s=0.01,
)  # fmt: skip


class FakeApi:
    """Lists (empty unless seeded), idle watches, and get/create/replace with resourceVersion conflicts."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, dict[str, Any]]] = {}
        self.held: dict[str, asyncio.Event] = {}
        self.version = 10
        self.closing = asyncio.Event()
        self.written = asyncio.Event()

    def hold(self, plural: str) -> asyncio.Event:
        self.held[plural] = asyncio.Event()
        return self.held[plural]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        parts = request.path.strip("/").split("/")
        collection, name = self._split(parts)
        plural = collection.rsplit("/", 1)[-1]
        items = self.objects.setdefault(collection, {})
        if request.method == "GET" and name is None:
            if request.query.get("watch") == "true":
                response = web.StreamResponse()
                await response.prepare(request)
                await self.closing.wait()
                return response
            if plural in self.held:
                await self.held[plural].wait()
            return web.json_response(
                {"metadata": {"resourceVersion": str(self.version)}, "items": list(items.values())}
            )
        if request.method == "GET":
            if name not in items:
                return web.json_response({"reason": "NotFound"}, status=404)
            return web.json_response(items[name])
        body = await request.json()
        self.version += 1
        if request.method == "POST":
            name = body["metadata"]["name"]
            if name in items:
                return web.json_response({"reason": "AlreadyExists"}, status=409)
        elif name not in items or items[name]["metadata"]["resourceVersion"] != body["metadata"].get(
            "resourceVersion"
        ):
            return web.json_response({"reason": "Conflict"}, status=409)
        assert name is not None
        body["metadata"]["resourceVersion"] = str(self.version)
        items[name] = body
        self.written.set()
        return web.json_response(body)

    @staticmethod
    def _split(parts: list[str]) -> tuple[str, str | None]:
        # /api/v1/[namespaces/ns/]plural[/name] or /apis/g/v/[namespaces/ns/]plural[/name]
        base = 2 if parts[0] == "api" else 3
        rest = parts[base:]
        if len(rest) >= 3 and rest[0] == "namespaces":
            prefix, rest = "/".join(parts[: base + 2]), rest[2:]
        else:
            prefix = "/".join(parts[:base])
        if rest == ["namespaces"] or len(rest) == 1:
            return f"{prefix}/{rest[0]}", None
        return f"{prefix}/{rest[0]}", rest[1]


@pytest.fixture
async def fake_api() -> AsyncIterator[tuple[FakeApi, KubeClient]]:
    fake = FakeApi()
    app = web.Application()
    app.router.add_route("*", "/{path:.*}", fake.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client = KubeClient.for_host(f"http://127.0.0.1:{port}")
    yield fake, client
    fake.closing.set()
    for event in fake.held.values():
        event.set()
    await runner.cleanup()


async def get(url: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text()


async def test_ready_only_after_every_kind_synced(fake_api: tuple[FakeApi, KubeClient]) -> None:
    fake, client = fake_api
    release = fake.hold("pods")
    fake.objects["api/v1/services"] = {"web": {
        "metadata": {"name": "web", "namespace": "app", "resourceVersion": "3"},
        "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.1", "ports": [{"port": 80}]}}}  # fmt: skip
    app = await build(SETTINGS, kube_client=client)
    try:
        ready_url = f"http://127.0.0.1:{app.addresses['readiness']}/ready"
        async with asyncio.timeout(10):
            await asyncio.gather(*(i.wait_synced() for kind, i in app.informers.items() if kind != "pods"))
        status, text = await get(ready_url)
        assert status == 503
        assert "sync pods" in text
        release.set()
        async with asyncio.timeout(10):
            await app.readiness.wait_ready()
        assert (await get(ready_url))[0] == 200
        monitoring = f"http://127.0.0.1:{app.addresses['monitoring']}"
        status, body = await get(f"{monitoring}/debug/index")
        assert status == 200
        assert "app/web.app.svc.cluster.local" in json.loads(body)["addresses"]
        status, body = await get(f"{monitoring}/debug/inputs")
        assert json.loads(body)["services"] == {"objects": 1, "synced": True}
        status, body = await get(f"{monitoring}/metrics")
        assert "pilot_xds" in body
    finally:
        await app.shutdown()


async def test_lease_leader_election_hands_over(fake_api: tuple[FakeApi, KubeClient]) -> None:
    _fake, client = fake_api
    events: list[str] = []

    def elector(identity: str) -> LeaderElector:
        return LeaderElector(client, "istio-system", "istio-leader", identity, lease_duration_s=1.0,
                             renew_deadline_s=0.5, retry_s=0.05,
                             on_started=lambda: events.append(f"{identity} leads"),
                             on_stopped=lambda: events.append(f"{identity} stops"))  # fmt: skip

    a, b = elector("replica-a"), elector("replica-b")
    task_a = asyncio.get_running_loop().create_task(a.run())
    try:
        async with asyncio.timeout(10):
            await a.leading.wait()
        task_b = asyncio.get_running_loop().create_task(b.run())
        try:
            assert not await asyncio.to_thread(b.try_acquire_or_renew)  # held and fresh: b cannot take it
            task_a.cancel()  # replica a dies without releasing
            async with asyncio.timeout(10):
                await b.leading.wait()  # after the lease expires
            assert events[0] == "replica-a leads"
            assert events[-1] == "replica-b leads"
        finally:
            task_b.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task_b
    finally:
        task_a.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task_a


async def test_debug_endpoints_refuse_remote_callers() -> None:
    from aiohttp.test_utils import make_mocked_request
    from istiod.debug import _local_only

    handler = _local_only(lambda _r: {"ok": True})
    remote = make_mocked_request("GET", "/debug/index", transport=_Transport(("10.1.2.3", 4444)))
    assert (await handler(remote)).status == 403
    local = make_mocked_request("GET", "/debug/index", transport=_Transport(("127.0.0.1", 4444)))
    assert (await handler(local)).status == 200


class _Transport:
    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peer if name == "peername" else default


async def test_policy_status_written_by_the_leader(fake_api: tuple[FakeApi, KubeClient]) -> None:
    fake, client = fake_api
    allow = {"metadata": {"name": "l7", "namespace": "app", "resourceVersion": "5", "generation": 2},
             "spec": {"rules": [{"to": [{"operation": {"methods": ["GET"]}}]}]}}  # fmt: skip
    audit = {"metadata": {"name": "audit", "namespace": "app", "resourceVersion": "6", "generation": 1},
             "spec": {"action": "AUDIT", "rules": [{}]}}  # fmt: skip
    waypoint = {"metadata": {"name": "wp", "namespace": "app", "resourceVersion": "7", "generation": 1},
                "spec": {"targetRefs": [{"kind": "Gateway", "name": "w"}], "rules": [{}]}}  # fmt: skip
    objects: dict[str, dict[str, Any]] = {"l7": allow, "audit": audit, "wp": waypoint}
    fake.objects["apis/security.istio.io/v1/authorizationpolicies"] = objects
    fake.objects["apis/security.istio.io/v1/namespaces/app/authorizationpolicies"] = objects
    app = await build(SETTINGS, kube_client=client)
    try:
        async with asyncio.timeout(10):
            while not ("status" in objects["l7"] and "status" in objects["audit"]):
                fake.written.clear()
                await fake.written.wait()
        (l7,) = objects["l7"]["status"]["conditions"]
        assert (l7["type"], l7["status"], l7["reason"], l7["observedGeneration"]) == (
            "ZtunnelAccepted",
            "True",
            "UnsupportedValue",
            2,
        )
        assert "found: methods" in l7["message"]
        (refused,) = objects["audit"]["status"]["conditions"]
        assert (refused["status"], refused["message"]) == (
            "False",
            "ztunnel does not support the AUDIT action",
        )
        assert "status" not in objects["wp"]  # a waypoint policy: not ours to report
    finally:
        await app.shutdown()


async def test_ca_serving_certificate_on_the_xds_port(fake_api: tuple[FakeApi, KubeClient]) -> None:
    """With the CA on, 15012 serves the CA-issued certificate for istiod.<ns>.svc: a client trusting the mesh
    root completes TLS and is then refused only for lacking a token (the JWT authenticator is wired)."""
    from meshkit.xds.client import XdsClient, XdsClientConfig
    from meshkit.xds.client_core import ClientCore

    from .test_xds_stream import NODE, Store

    _fake, client = fake_api
    settings = replace(SETTINGS, ca_enabled=True, secure_xds_addr="127.0.0.1:0", plaintext_xds_addr="")
    app = await build(settings, kube_client=client)
    try:
        root = app.ca.ca.roots_pem
        config = XdsClientConfig(address=f"127.0.0.1:{app.addresses['xds']}", root_cert_pem=root,
                                 server_name="istiod.istio-system.svc")  # fmt: skip
        xds = XdsClient(config, ClientCore(NODE, Store()))
        async with TaskOwner("ca-test") as owner:
            owner.spawn(xds.run(), name="xds")
            async with asyncio.timeout(20):
                await app.server.refused.wait()
                await xds.ended.wait()
        assert not xds.synced.is_set()
        # refused by the JWT authenticator (not by TLS): counted as an auth failure on the server
        assert (app.registry.get_sample_value("pilot_xds_auth_failures_total") or 0) >= 1
        # the client usually sees the UNAUTHENTICATED status; when its write of the initial request races the
        # server's abort, grpc-python replaces the status with INTERNAL "Internal error from Core" (a client
        # library quirk, measured at ~25 % of attempts), so either is the refusal
        assert xds.last_error.startswith(("UNAUTHENTICATED", "INTERNAL: Internal error from Core"))
    finally:
        await app.shutdown()
