"""LiteCaClient (CreateCertificate over ztunnel.grpclite) against a grpc.aio CA server, on loopback."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from meshkit.hbone.testing import TestCA
from meshkit.identity.caclient import CaClientError, CaClientSettings
from meshkit.identity.spiffe import Identity
from meshkit.settings import load
from meshproto.istio.v1.auth import ca_pb2
from ztunnel.grpclite import ConfigError
from ztunnel.identity import CREATE_CERTIFICATE, LiteCaClient

ID = Identity("cluster.local", "default", "app")


class FakeCa:
    """Signs CSRs; records the metadata and request of each call; can refuse."""

    def __init__(self) -> None:
        self.ca = TestCA(name="test root")
        self.calls: list[tuple[dict[str, str], ca_pb2.IstioCertificateRequest]] = []
        self.refuse = False
        self.wrong_identity = False

    async def create(
        self, request: ca_pb2.IstioCertificateRequest, context: grpc.aio.ServicerContext
    ) -> ca_pb2.IstioCertificateResponse:
        self.calls.append((dict(context.invocation_metadata() or ()), request))  # type: ignore[arg-type]
        if self.refuse:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad token")
        uri = (
            "spiffe://cluster.local/ns/default/sa/other"
            if self.wrong_identity
            else request.metadata["ImpersonatedIdentity"]
        )
        ttl = dt.timedelta(seconds=request.validity_duration)
        return ca_pb2.IstioCertificateResponse(
            cert_chain=self.ca.sign_csr(request.csr.encode(), [uri], ttl=ttl)
        )


@dataclass
class CaServer:
    fake: FakeCa
    plain_port: int  # plaintext, for http:// addresses
    tls_port: int  # TLS with a "localhost" certificate signed by ``root``
    root: bytes


@pytest_asyncio.fixture
async def ca(tls_material: Callable[..., tuple[bytes, bytes, bytes]]) -> AsyncIterator[CaServer]:
    fake = FakeCa()
    service, method = CREATE_CERTIFICATE.lstrip("/").split("/")
    handler = grpc.unary_unary_rpc_method_handler(
        fake.create,
        request_deserializer=ca_pb2.IstioCertificateRequest.FromString,
        response_serializer=ca_pb2.IstioCertificateResponse.SerializeToString,
    )
    root, cert, key = tls_material()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(service, {method: handler})])
    plain = server.add_insecure_port("127.0.0.1:0")
    tls = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(key, cert)]))
    await server.start()
    try:
        yield CaServer(fake, plain, tls, root)
    finally:
        await server.stop(None)


def client(address: str, root_ca: str = "") -> LiteCaClient:
    env = {
        "CA_ADDRESS": address,
        "CA_ROOT_CA": root_ca,
        "ALT_CA_HOSTNAME": "localhost",
        "AUTH_TOKEN": "tok",
        "SECRET_TTL": "1h",
    }
    return LiteCaClient(load(CaClientSettings, env))


def tls_client(ca: CaServer, scheme: str = "") -> LiteCaClient:
    return client(f"{scheme}127.0.0.1:{ca.tls_port}", ca.root.decode())


async def test_fetch_signs_and_validates(ca: CaServer) -> None:
    lite = tls_client(ca)
    try:
        cert = await lite.fetch(ID)
        again = await lite.fetch(ID)  # the connection is reused
    finally:
        await lite.close()
    assert cert.identity == ID
    assert cert.serial != again.serial
    assert b"BEGIN CERTIFICATE" in cert.roots_pem
    assert b"PRIVATE KEY" in cert.private_key_pem
    metadata, request = ca.fake.calls[0]
    assert metadata["authorization"] == "Bearer tok"
    assert metadata["clusterid"] == "Kubernetes"
    assert request.validity_duration == 3600
    assert request.metadata["ImpersonatedIdentity"] == ID.uri


async def test_refusal_and_wrong_identity_are_errors(ca: CaServer) -> None:
    lite = tls_client(ca, "https://")
    try:
        ca.fake.refuse = True
        with pytest.raises(CaClientError, match="status 16"):
            await lite.fetch(ID)
        ca.fake.refuse, ca.fake.wrong_identity = False, True
        with pytest.raises(CaClientError, match="invalid CreateCertificate response"):
            await lite.fetch(ID)
    finally:
        await lite.close()


async def test_unreachable_ca(ca: CaServer) -> None:
    lite = client("127.0.0.1:1", ca.root.decode())
    try:
        with pytest.raises(CaClientError):
            await lite.fetch(ID)
    finally:
        await lite.close()


@pytest.mark.parametrize("address", ["127.0.0.1:15012", "https://127.0.0.1:15012"])
def test_tls_address_without_a_root_is_a_startup_error(address: str) -> None:
    # an empty CA_ROOT_CA used to mean plaintext, with the bearer token in the clear
    with pytest.raises(ConfigError, match="CA_ROOT_CA is empty"):
        client(address, "")


async def test_missing_root_file_fails_the_fetch_clearly(ca: CaServer, tmp_path: Path) -> None:
    lite = client(f"127.0.0.1:{ca.tls_port}", str(tmp_path / "nope.pem"))
    try:
        with pytest.raises(CaClientError, match="cannot read the root certificate"):
            await lite.fetch(ID)
    finally:
        await lite.close()
    assert ca.fake.calls == []


async def test_plaintext_only_for_http_and_never_with_the_token(ca: CaServer) -> None:
    lite = client(f"http://127.0.0.1:{ca.plain_port}")
    try:
        cert = await lite.fetch(ID)
    finally:
        await lite.close()
    assert cert.identity == ID
    metadata, _ = ca.fake.calls[0]
    assert "authorization" not in metadata


async def test_plaintext_server_behind_a_tls_address_fails(ca: CaServer) -> None:
    lite = client(f"127.0.0.1:{ca.plain_port}", ca.root.decode())  # no scheme: TLS, never a downgrade
    try:
        with pytest.raises(CaClientError):
            await lite.fetch(ID)
    finally:
        await lite.close()
    assert ca.fake.calls == []
