"""Root of trust: plug-in CA preferred, self-signed root created once and shared by racing replicas."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from istiod.ca.errors import RootOfTrustError
from istiod.ca.rootoftrust import load_root_of_trust

from .conftest import MemorySecrets, PluggedCa


async def test_self_signed_root_created_once_and_reused() -> None:
    store = MemorySecrets()
    first = await load_root_of_trust(store, "istio-system", trust_domain="cluster.local", rsa_key_size=2048)
    again = await load_root_of_trust(store, "istio-system", trust_domain="cluster.local")
    assert first.roots == again.roots
    assert store.creates == 1
    assert store.types[("istio-system", "istio-ca-secret")] == "istio.io/ca-root"
    assert set(store.data[("istio-system", "istio-ca-secret")]) >= {"ca-cert.pem", "ca-key.pem"}
    assert first.intermediates == ()


async def test_two_replicas_racing_end_with_the_same_root() -> None:
    store = MemorySecrets()
    a, b = await asyncio.gather(
        load_root_of_trust(store, "istio-system", trust_domain="cluster.local"),
        load_root_of_trust(store, "istio-system", trust_domain="cluster.local"),
    )
    assert store.creates == 2  # both tried; one lost with AlreadyExists and re-read
    assert a.roots == b.roots
    assert a.signing_cert == b.signing_cert


async def test_plugged_cacerts_secret_wins(plugged: PluggedCa) -> None:
    store = MemorySecrets()
    store.data[("istio-system", "cacerts")] = {
        "ca-cert.pem": plugged.ca_cert_pem,
        "ca-key.pem": plugged.ca_key_pem,
        "cert-chain.pem": plugged.cert_chain_pem,
        "root-cert.pem": plugged.root_pem,
    }
    bundle = await load_root_of_trust(store, "istio-system", trust_domain="cluster.local")
    assert bundle.roots_pem == plugged.root_pem
    assert bundle.source == "secret istio-system/cacerts"
    assert store.creates == 0


async def test_plugged_files_win(plugged: PluggedCa, tmp_path: Path) -> None:
    (tmp_path / "ca-cert.pem").write_bytes(plugged.ca_cert_pem)
    (tmp_path / "ca-key.pem").write_bytes(plugged.ca_key_pem)
    (tmp_path / "cert-chain.pem").write_bytes(plugged.cert_chain_pem)
    (tmp_path / "root-cert.pem").write_bytes(plugged.root_pem)
    bundle = await load_root_of_trust(MemorySecrets(), "ns", trust_domain="td", cacerts_dir=tmp_path)
    assert bundle.roots_pem == plugged.root_pem


async def test_incomplete_cacerts_is_an_error(plugged: PluggedCa) -> None:
    store = MemorySecrets()
    store.data[("istio-system", "cacerts")] = {"ca-cert.pem": plugged.ca_cert_pem}
    with pytest.raises(RootOfTrustError, match=r"lacks ca-key\.pem"):
        await load_root_of_trust(store, "istio-system", trust_domain="cluster.local")
