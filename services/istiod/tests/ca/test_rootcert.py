"""The istio-ca-root-cert publisher: every namespace, kept in sync, recreated if deleted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence

from istiod.ca.rootcert import ROOT_CERT_KEY, ConfigMapConflict, Outcome, RootCertPublisher, WatchEvent

NAME = "istio-ca-root-cert"


class MemoryConfigMaps:
    def __init__(self, namespaces: Sequence[str]) -> None:
        self.namespaces = list(namespaces)
        self.maps: dict[tuple[str, str], dict[str, str]] = {}
        self.labels: dict[tuple[str, str], dict[str, str]] = {}
        self.writes = 0

    async def list_namespaces(self) -> Sequence[str]:
        return list(self.namespaces)

    async def get(self, namespace: str, name: str) -> Mapping[str, str] | None:
        return self.maps.get((namespace, name))

    async def create(
        self, namespace: str, name: str, data: Mapping[str, str], labels: Mapping[str, str]
    ) -> None:
        if (namespace, name) in self.maps:
            raise ConfigMapConflict("exists")
        self.writes += 1
        self.maps[(namespace, name)] = dict(data)
        self.labels[(namespace, name)] = dict(labels)

    async def replace(
        self, namespace: str, name: str, data: Mapping[str, str], labels: Mapping[str, str]
    ) -> None:
        if (namespace, name) not in self.maps:
            raise ConfigMapConflict("gone")
        self.writes += 1
        self.maps[(namespace, name)] = dict(data)


async def test_published_in_every_namespace() -> None:
    store = MemoryConfigMaps(["default", "istio-system", "app"])
    results = await RootCertPublisher(store, "ROOT1").reconcile_all()
    assert results == dict.fromkeys(["default", "istio-system", "app"], Outcome.CREATED)
    assert all(store.maps[(ns, NAME)] == {ROOT_CERT_KEY: "ROOT1"} for ns in store.namespaces)
    assert store.labels[("app", NAME)] == {"istio.io/config": "true"}


async def test_idempotent_and_kept_in_sync() -> None:
    store = MemoryConfigMaps(["app"])
    pub = RootCertPublisher(store, "ROOT1")
    await pub.reconcile_all()
    assert await pub.reconcile("app") is Outcome.UNCHANGED
    assert store.writes == 1
    store.maps[("app", NAME)] = {ROOT_CERT_KEY: "tampered", "other": "kept"}
    assert await pub.on_configmap("MODIFIED", "app", NAME) is Outcome.UPDATED
    assert store.maps[("app", NAME)] == {ROOT_CERT_KEY: "ROOT1", "other": "kept"}
    pub.set_root("ROOT2")
    assert await pub.reconcile("app") is Outcome.UPDATED
    assert store.maps[("app", NAME)][ROOT_CERT_KEY] == "ROOT2"


async def test_recreated_when_deleted_and_created_for_new_namespaces() -> None:
    store = MemoryConfigMaps(["app"])
    pub = RootCertPublisher(store, "ROOT1")

    async def events() -> AsyncIterator[WatchEvent]:
        """What the watch would report, with the cluster changing as it reports it."""
        assert store.maps[("app", NAME)] == {ROOT_CERT_KEY: "ROOT1"}  # run() reconciled everything first
        del store.maps[("app", NAME)]
        yield WatchEvent("ConfigMap", "DELETED", "app", NAME)
        store.namespaces.append("new")
        yield WatchEvent("Namespace", "ADDED", "new", "new")
        yield WatchEvent("Namespace", "MODIFIED", "dying", "dying", terminating=True)
        yield WatchEvent("ConfigMap", "DELETED", "other", "unrelated")

    async with asyncio.timeout(5):
        await pub.run(events())
    assert store.maps[("app", NAME)] == {ROOT_CERT_KEY: "ROOT1"}
    assert store.maps[("new", NAME)] == {ROOT_CERT_KEY: "ROOT1"}
    assert ("dying", NAME) not in store.maps
    assert ("other", "unrelated") not in store.maps


async def test_deleted_with_its_namespace_is_not_recreated() -> None:
    store = MemoryConfigMaps([])
    assert await RootCertPublisher(store, "R").on_configmap("DELETED", "gone", NAME) is Outcome.SKIPPED
    assert store.writes == 0


async def test_create_race_falls_back_to_update() -> None:
    store = MemoryConfigMaps(["app"])

    class Racing(MemoryConfigMaps):
        async def get(self, namespace: str, name: str) -> Mapping[str, str] | None:
            current = self.maps.get((namespace, name))
            if current is None:  # another istiod creates it between our get and our create
                self.maps[(namespace, name)] = {ROOT_CERT_KEY: "OLD"}
                return None
            return current

    racing = Racing(store.namespaces)
    assert await RootCertPublisher(racing, "ROOT1").reconcile("app") is Outcome.UPDATED
    assert racing.maps[("app", NAME)] == {ROOT_CERT_KEY: "ROOT1"}
