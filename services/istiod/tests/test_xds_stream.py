"""A real grpc.aio istiod (``app.build``) and the meshkit xDS client in one process: adds, updates, removals,
partial NACKs, TLS with root verification, authentication, and a kill-and-restart of istiod mid-stream."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from google.protobuf.message import Message
from istiod.app import App, build
from istiod.settings import Settings
from meshkit.drain import TaskOwner
from meshkit.xds.client import XdsClient, XdsClientConfig
from meshkit.xds.client_core import ClientCore, Rejected
from meshkit.xds.types import ADDRESS_TYPE, AUTHORIZATION_TYPE, NodeId
from meshproto.envoy.config.core.v3 import base_pb2

SETTINGS = Settings(
    secure_xds_addr="", plaintext_xds_addr="127.0.0.1:0", monitoring_addr="127.0.0.1:0",
    readiness_addr="127.0.0.1:0", ca_enabled=False, leader_election=False, debounce_s=0.01,
)  # fmt: skip
NODE = base_pb2.Node(id=str(NodeId.ztunnel("10.0.0.9", "ztunnel-x", "istio-system")))


class Store:
    """A test updater: what the client holds, with every apply recorded; rejects names in ``reject``."""

    def __init__(self, reject: Callable[[str, Message], str] | None = None) -> None:
        self.items: dict[str, dict[str, Message]] = {ADDRESS_TYPE: {}, AUTHORIZATION_TYPE: {}}
        self.upserts: list[str] = []
        self.removes: list[str] = []
        self.reject = reject
        self.changed = asyncio.Event()

    def apply(self, type_url: str, upserts: list[tuple[str, Message]], removes: list[str]) -> list[Rejected]:
        rejected = []
        for name, msg in upserts:
            reason = self.reject(name, msg) if self.reject else ""
            if reason:
                rejected.append(Rejected(name, reason))
                continue
            self.items[type_url][name] = msg
            self.upserts.append(name)
        for name in removes:
            self.items[type_url].pop(name, None)
            self.removes.append(name)
        self.changed.set()
        return rejected

    async def wait(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(10):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


READY = [{"type": "Ready", "status": "True"}]


def pod(name: str, ip: str, ns: str = "app", labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns, "labels": labels or {"app": "web"}},
            "spec": {"nodeName": "n1", "serviceAccountName": "web"},
            "status": {"phase": "Running", "podIP": ip, "conditions": READY}}  # fmt: skip


def put(app: App, kind: str, *objs: dict[str, Any]) -> None:
    app.index.inputs[kind].apply({f"{o['metadata']['namespace']}/{o['metadata']['name']}": o for o in objs})


@dataclass
class Running:
    app: App
    client: XdsClient
    store: Store
    owner: TaskOwner


@pytest.fixture
async def stack() -> AsyncIterator[Callable[..., Any]]:
    started: list[Running] = []

    async def start(store: Store | None = None, settings: Settings = SETTINGS, **client_kw: Any) -> Running:
        app = await build(settings)
        store = store or Store()
        plain = app.addresses.get("xds_plaintext")
        address = f"http://127.0.0.1:{plain}" if plain else f"127.0.0.1:{app.addresses['xds']}"
        config = XdsClientConfig(address=address, **client_kw)
        client = XdsClient(config, ClientCore(NODE, store))
        owner = TaskOwner("test-xds")
        owner.spawn(client.run(), name="client")
        running = Running(app, client, store, owner)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.owner.close()
        await running.app.shutdown()


async def test_adds_updates_removals(stack: Callable[..., Any]) -> None:
    s: Running = await stack()
    async with asyncio.timeout(10):
        await s.client.synced.wait()  # answered although the index is empty
    assert s.store.items[ADDRESS_TYPE] == {}
    put(s.app, "pods", pod("a", "10.0.0.1"), pod("b", "10.0.0.2"))
    put(
        s.app,
        "authorizationpolicies",
        {"metadata": {"name": "p", "namespace": "app"}, "spec": {"rules": [{}]}},
    )
    await s.store.wait(
        lambda: len(s.store.items[ADDRESS_TYPE]) == 2 and "app/p" in s.store.items[AUTHORIZATION_TYPE]
    )
    put(s.app, "pods", pod("a", "10.0.0.1", labels={"app": "web", "unrelated": "x"}))
    put(s.app, "pods", pod("b", "10.0.0.3"))
    await s.store.wait(lambda: s.store.items[ADDRESS_TYPE]["Kubernetes//Pod/app/b"].workload.addresses  # type: ignore[attr-defined]
                       == [bytes([10, 0, 0, 3])])  # fmt: skip
    assert (
        s.store.upserts.count("Kubernetes//Pod/app/a") == 1
    )  # a label change that alters nothing is not pushed
    s.app.index.inputs["pods"].delete("app/a")
    await s.store.wait(lambda: "Kubernetes//Pod/app/a" not in s.store.items[ADDRESS_TYPE])
    assert s.store.removes == ["Kubernetes//Pod/app/a"]


async def test_nack_partial_apply_and_no_resend(stack: Callable[..., Any]) -> None:
    def reject(name: str, _msg: Message) -> str:
        return "bad address" if name.endswith("/bad") else ""

    s: Running = await stack(Store(reject))
    put(s.app, "pods", pod("good", "10.0.0.1"), pod("bad", "10.0.0.2"))
    await s.store.wait(lambda: "Kubernetes//Pod/app/good" in s.store.items[ADDRESS_TYPE])
    async with asyncio.timeout(10):
        await s.app.server.nacked.wait()
    assert s.app.registry.get_sample_value("pilot_total_xds_rejects_total", {"type": "address"}) == 1
    (conn,) = s.app.server.connections.values()
    assert conn.nacks == ["Kubernetes//Pod/app/bad: bad address"]
    assert "Kubernetes//Pod/app/bad" not in s.store.items[ADDRESS_TYPE]
    # an unrelated change is pushed; the NACKed resource is not resent with it
    put(s.app, "pods", pod("other", "10.0.0.3"))
    await s.store.wait(lambda: "Kubernetes//Pod/app/other" in s.store.items[ADDRESS_TYPE])
    assert s.app.registry.get_sample_value("pilot_total_xds_rejects_total", {"type": "address"}) == 1
    assert conn.nacks == ["Kubernetes//Pod/app/bad: bad address"]


async def test_kill_and_restart_istiod_mid_stream(stack: Callable[..., Any]) -> None:
    s: Running = await stack()
    put(s.app, "pods", *(pod(f"p{i}", f"10.0.0.{i}") for i in range(1, 6)))
    await s.store.wait(lambda: len(s.store.items[ADDRESS_TYPE]) == 5)
    port = s.app.addresses["xds_plaintext"]
    await s.app.shutdown()  # istiod dies; the client keeps serving its last good state
    assert len(s.store.items[ADDRESS_TYPE]) == 5
    upserts_before = len(s.store.upserts)
    fresh = await build(replace(SETTINGS, plaintext_xds_addr=f"127.0.0.1:{port}"))
    try:
        # the new istiod's view: p1 changed, p2 gone, p6 new, p3..p5 identical
        put(fresh, "pods", pod("p1", "10.0.0.1", labels={"app": "other"}), pod("p1", "10.0.0.1"))
        put(fresh, "pods", pod("p1", "10.0.0.11"), *(pod(f"p{i}", f"10.0.0.{i}") for i in (3, 4, 5)),
            pod("p6", "10.0.0.6"))  # fmt: skip
        await s.store.wait(
            lambda: set(s.store.items[ADDRESS_TYPE]) == {f"Kubernetes//Pod/app/p{i}" for i in (1, 3, 4, 5, 6)}
        )
        assert s.client.connections >= 2
        resent = s.store.upserts[upserts_before:]
        assert sorted(resent) == ["Kubernetes//Pod/app/p1", "Kubernetes//Pod/app/p6"]  # nothing duplicated
        assert s.store.removes == ["Kubernetes//Pod/app/p2"]
    finally:
        await fresh.shutdown()


def _tls_material() -> tuple[bytes, bytes, bytes]:
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test mesh")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(hours=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    san = x509.SubjectAlternativeName([x509.DNSName("istiod.istio-system.svc")])
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(2).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(hours=1)).add_extension(san, critical=True)
            .sign(ca_key, hashes.SHA256()))  # fmt: skip
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return ca.public_bytes(pem), leaf.public_bytes(pem), key_pem


@dataclass(frozen=True)
class FakeCaller:
    service_account_namespace: str


class TokenAuthenticator:
    """Test authenticator: the bearer token is the caller's namespace."""

    async def authenticate(self, metadata: Any) -> FakeCaller:
        headers = dict(metadata)
        token = str(headers.get("authorization", ""))
        if not token.startswith("Bearer "):
            raise PermissionError("no token")
        return FakeCaller(token.removeprefix("Bearer "))


async def test_tls_with_root_verification_and_authentication(tmp_path: Any) -> None:
    root, cert, key = _tls_material()
    creds = grpc.ssl_server_credentials([(key, cert)])
    settings = replace(SETTINGS, secure_xds_addr="127.0.0.1:0", plaintext_xds_addr="")
    app = await build(settings, tls=creds, authenticator=TokenAuthenticator())
    owner = TaskOwner("tls-test")
    token = tmp_path / "token"
    token.write_text("istio-system")
    try:
        store = Store()
        config = XdsClientConfig(address=f"127.0.0.1:{app.addresses['xds']}", root_cert_pem=root,
                                 server_name="istiod.istio-system.svc", token=str(token))  # fmt: skip
        good = XdsClient(config, ClientCore(NODE, store))
        owner.spawn(good.run(), name="good")
        async with asyncio.timeout(10):
            await good.synced.wait()
        # a client trusting another root refuses the server's certificate
        other_root, _, _ = _tls_material()
        mistrust = XdsClient(replace(config, root_cert_pem=other_root), ClientCore(NODE, Store()))
        owner.spawn(mistrust.run(), name="mistrust")
        async with asyncio.timeout(10):
            await mistrust.ended.wait()
        assert not mistrust.synced.is_set()
        assert mistrust.last_error.startswith("UNAVAILABLE")
        # a token for another namespace than the proxy's fails the identity check
        token.write_text("other-namespace")
        denied = XdsClient(config, ClientCore(NODE, Store()))
        task = owner.spawn(denied.run(), name="denied")
        async with asyncio.timeout(10):
            await app.server.refused.wait()
        assert not denied.synced.is_set()
        task.cancel()
    finally:
        await owner.close()
        await app.shutdown()


async def test_changes_in_one_debounce_window_are_one_push(stack: Callable[..., Any]) -> None:
    s: Running = await stack(settings=replace(SETTINGS, debounce_s=0.3))
    async with asyncio.timeout(10):
        await s.client.synced.wait()
    rounds = s.app.server.push_rounds
    for i in range(1, 6):
        put(s.app, "pods", pod(f"p{i}", f"10.0.0.{i}"))
    await s.store.wait(lambda: len(s.store.items[ADDRESS_TYPE]) == 5)
    assert s.app.server.push_rounds == rounds + 1
    pushes = s.app.registry.get_sample_value("pilot_xds_pushes_total", {"type": "address"})
    assert pushes == 2  # the initial answer and one batched push


async def test_no_xds_until_inputs_synced() -> None:
    """A restarted istiod with a half-listed index would tell ztunnel that live workloads are gone: streams
    are refused (UNAVAILABLE, as upstream) until every watched kind has synced, then served in full."""
    app = await build(SETTINGS)
    try:
        app.readiness.register("sync pods")  # as _watch does before the informers have listed
        put(app, "pods", pod("a", "10.0.0.1"))  # the first page of a slow list
        store = Store()
        address = f"http://127.0.0.1:{app.addresses['xds_plaintext']}"
        client = XdsClient(XdsClientConfig(address=address), ClientCore(NODE, store))
        owner = TaskOwner("test-xds")
        owner.spawn(client.run(), name="client")
        try:
            async with asyncio.timeout(10):
                await app.server.refused_not_ready.wait()
            assert not client.synced.is_set()
            assert store.upserts == []
            assert store.removes == []
            put(app, "pods", pod("b", "10.0.0.2"))  # the rest of the list
            app.readiness.set("sync pods")
            async with asyncio.timeout(20):
                await client.synced.wait()
            await store.wait(lambda: len(store.items[ADDRESS_TYPE]) == 2)
            assert store.removes == []
        finally:
            await owner.close()
    finally:
        await app.shutdown()
