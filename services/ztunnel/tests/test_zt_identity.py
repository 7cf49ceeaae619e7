"""LiteCaClient (CreateCertificate over ztunnel.grpclite) against a grpc.aio CA server, on loopback."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from meshkit.identity.caclient import CaClientError, CaClientSettings
from meshkit.identity.spiffe import Identity
from meshkit.settings import load
from meshproto.istio.v1.auth import ca_pb2
from ztunnel.identity import CREATE_CERTIFICATE, LiteCaClient

ID = Identity("cluster.local", "default", "app")


class FakeCa:
    """Signs CSRs; records the metadata and request of each call; can refuse."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test root")])
        now = dt.datetime.now(dt.UTC)
        self.root = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
            .serial_number(1).not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )  # fmt: skip
        self.calls: list[tuple[dict[str, str], ca_pb2.IstioCertificateRequest]] = []
        self.refuse = False
        self.wrong_identity = False

    async def create(
        self, request: ca_pb2.IstioCertificateRequest, context: grpc.aio.ServicerContext
    ) -> ca_pb2.IstioCertificateResponse:
        self.calls.append((dict(context.invocation_metadata() or ()), request))  # type: ignore[arg-type]
        if self.refuse:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad token")
        csr = x509.load_pem_x509_csr(request.csr.encode())
        uri = (
            "spiffe://cluster.local/ns/default/sa/other"
            if self.wrong_identity
            else request.metadata["ImpersonatedIdentity"]
        )
        now = dt.datetime.now(dt.UTC)
        leaf = (
            x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(self.root.subject)
            .public_key(csr.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(seconds=request.validity_duration))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), True)
            .sign(self.key, hashes.SHA256())
        )  # fmt: skip
        pem = serialization.Encoding.PEM
        return ca_pb2.IstioCertificateResponse(
            cert_chain=[leaf.public_bytes(pem).decode(), self.root.public_bytes(pem).decode()]
        )


@pytest_asyncio.fixture
async def ca() -> AsyncIterator[tuple[FakeCa, int]]:
    fake = FakeCa()
    service, method = CREATE_CERTIFICATE.lstrip("/").split("/")
    handler = grpc.unary_unary_rpc_method_handler(
        fake.create,
        request_deserializer=ca_pb2.IstioCertificateRequest.FromString,
        response_serializer=ca_pb2.IstioCertificateResponse.SerializeToString,
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(service, {method: handler})])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield fake, port
    finally:
        await server.stop(None)


def client(port: int) -> LiteCaClient:
    env = {"CA_ADDRESS": f"127.0.0.1:{port}", "CA_ROOT_CA": "", "AUTH_TOKEN": "tok", "SECRET_TTL": "1h"}
    return LiteCaClient(load(CaClientSettings, env))


async def test_fetch_signs_and_validates(ca: tuple[FakeCa, int]) -> None:
    fake, port = ca
    lite = client(port)
    try:
        cert = await lite.fetch(ID)
        again = await lite.fetch(ID)  # the connection is reused
    finally:
        await lite.close()
    assert cert.identity == ID
    assert cert.serial != again.serial
    assert b"BEGIN CERTIFICATE" in cert.roots_pem
    assert b"PRIVATE KEY" in cert.private_key_pem
    metadata, request = fake.calls[0]
    assert metadata["authorization"] == "Bearer tok"
    assert metadata["clusterid"] == "Kubernetes"
    assert request.validity_duration == 3600
    assert request.metadata["ImpersonatedIdentity"] == ID.uri


async def test_refusal_and_wrong_identity_are_errors(ca: tuple[FakeCa, int]) -> None:
    fake, port = ca
    lite = client(port)
    try:
        fake.refuse = True
        with pytest.raises(CaClientError, match="status 16"):
            await lite.fetch(ID)
        fake.refuse, fake.wrong_identity = False, True
        with pytest.raises(CaClientError, match="invalid CreateCertificate response"):
            await lite.fetch(ID)
    finally:
        await lite.close()


async def test_unreachable_ca(ca: tuple[FakeCa, int]) -> None:
    _fake, port = ca
    lite = client(1)
    try:
        with pytest.raises(CaClientError):
            await lite.fetch(ID)
    finally:
        await lite.close()
    _ = port
