"""build_ca wiring (with fakes for the API server) and the plug-in CA reload."""

from __future__ import annotations

import grpc
from istiod.ca.assemble import build_ca
from istiod.ca.settings import CaSettings
from meshkit.identity.csr import create_csr
from meshkit.identity.pem import load_certificates
from meshkit.identity.spiffe import Identity
from meshkit.metrics import new_registry
from meshkit.settings import load

from .conftest import FakePods, FakeReviewer, MemorySecrets, make_plugged_ca

WEB = Identity("cluster.local", "app", "web")


def cacerts(secrets: MemorySecrets, name: str) -> bytes:
    plugged = make_plugged_ca(name)
    secrets.data[("istio-system", "cacerts")] = {
        "ca-cert.pem": plugged.ca_cert_pem,
        "ca-key.pem": plugged.ca_key_pem,
        "cert-chain.pem": plugged.cert_chain_pem,
        "root-cert.pem": plugged.root_pem,
    }
    return plugged.root_pem


async def test_build_ca_and_reload_a_rotated_plugin_ca() -> None:
    secrets = MemorySecrets()
    first_root = cacerts(secrets, "first")
    settings = load(CaSettings, {"CACERTS_DIR": "", "CA_TRUSTED_NODE_ACCOUNTS": "istio-system/ztunnel"})
    registry = new_registry()
    parts = await build_ca(
        settings,
        None,
        registry=registry,
        pod_lookup=FakePods(),
        token_reviewer=FakeReviewer(),
        secret_store=secrets,
    )
    assert parts.ca.roots_pem == first_root
    assert parts.publisher.root_pem == first_root.decode()
    assert registry.get_sample_value("citadel_server_root_cert_expiry_timestamp")
    assert parts.serving._fetch() is None
    assert await parts.reloader.check_once() is False  # nothing changed

    published: list[bytes] = []
    parts.reloader._listeners[1:] = [
        lambda b: published.append(b.roots_pem)
    ]  # not the real reconcile_all here
    second_root = cacerts(secrets, "second")
    assert await parts.reloader.check_once() is True
    assert parts.ca.roots_pem == second_root
    assert parts.publisher.root_pem == second_root.decode()
    assert published == [second_root]
    assert parts.serving._fetch() is not None  # istiod's own certificate is re-issued from the new CA at once
    chain = parts.ca.sign(create_csr(WEB).csr_pem, uris=[WEB.uri]).chain
    assert load_certificates(chain[-1])[0].subject.rfc4514_string() == "CN=second root"


async def test_broken_reload_keeps_the_current_ca() -> None:
    secrets = MemorySecrets()
    root = cacerts(secrets, "first")
    settings = load(CaSettings, {"CACERTS_DIR": ""})
    parts = await build_ca(
        settings,
        None,
        registry=new_registry(),
        pod_lookup=FakePods(),
        token_reviewer=FakeReviewer(),
        secret_store=secrets,
    )
    secrets.data[("istio-system", "cacerts")]["ca-key.pem"] = b"garbage"
    assert await parts.reloader.check_once() is False
    assert parts.ca.roots_pem == root


def test_servicer_status_codes_are_grpc() -> None:
    from istiod.ca.errors import CsrError, ImpersonationDenied, TtlError

    assert CsrError("x").code is grpc.StatusCode.INVALID_ARGUMENT
    assert TtlError("x").code is grpc.StatusCode.INVALID_ARGUMENT
    assert ImpersonationDenied("x").code is grpc.StatusCode.UNAUTHENTICATED
