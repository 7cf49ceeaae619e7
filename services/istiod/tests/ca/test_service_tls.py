"""The CA over the wire: an in-process grpc.aio CA server on 127.0.0.1:0 with TLS (its serving certificate
issued by the CA itself), exercised by meshkit's real CaClient; then real TLS 1.3 handshakes between the
issued identities over loopback sockets."""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from istiod.ca.authority import CertificateAuthority, KeyCertBundle
from istiod.ca.metrics import CaMetrics
from istiod.ca.nodeauth import NodeAuthorizer
from istiod.ca.service import CertificateServicer
from istiod.ca.serving import RotatingServerCredentials, istiod_dns_names
from istiod.security.authn import KubeJwtAuthenticator
from meshkit.identity.caclient import CaClient, CaClientConfig, CaClientError, token_source
from meshkit.identity.certs import WorkloadCertificate
from meshkit.identity.manager import CertificateManager
from meshkit.identity.pem import leaf_identities
from meshkit.identity.spiffe import Identity
from meshkit.metrics import new_registry
from meshproto.istio.v1.auth import ca_pb2_grpc

from .conftest import FakePods, FakeReviewer, PluggedCa, make_plugged_ca, sa_token

WEB = Identity("cluster.local", "app", "web")
API = Identity("cluster.local", "app", "api")
DB = Identity("cluster.local", "app", "db")
ISTIOD_HOST = "istiod.istio-system.svc"


@dataclass
class CaServer:
    port: int
    ca: CertificateAuthority
    tmp: Path
    registry: object

    def client(
        self,
        token: str | Callable[[], str | None],
        *,
        impersonate: bool = True,
        root: str | bytes | None = None,
    ) -> CaClient:
        source = token if callable(token) else (lambda: token)
        return CaClient(
            CaClientConfig(
                address=f"https://127.0.0.1:{self.port}",
                root_ca=self.ca.roots_pem if root is None else root,
                token=source,
                server_name=ISTIOD_HOST,
                impersonate=impersonate,
                ttl_seconds=3600,
            )
        )


@pytest.fixture
async def server(ca: CertificateAuthority, pods: FakePods, tmp_path: Path) -> AsyncIterator[CaServer]:
    registry = new_registry()
    authn = KubeJwtAuthenticator(FakeReviewer())
    servicer = CertificateServicer(
        ca, authn, NodeAuthorizer(["istio-system/ztunnel"], pods), CaMetrics(registry)
    )
    srv = grpc.aio.server()
    ca_pb2_grpc.add_IstioCertificateServiceServicer_to_server(servicer, srv)
    creds = RotatingServerCredentials(ca, istiod_dns_names("istio-system")).credentials()
    port = srv.add_secure_port("127.0.0.1:0", creds)
    await srv.start()
    try:
        yield CaServer(port, ca, tmp_path, registry)
    finally:
        await srv.stop(None)


ZT_A = sa_token("istio-system", "ztunnel", "zt-a", "uid-zt-a")
ZT_B = sa_token("istio-system", "ztunnel", "zt-b", "uid-zt-b")


async def fetch(client: CaClient, identity: Identity) -> WorkloadCertificate:
    try:
        return await client.fetch(identity)
    finally:
        await client.close()


async def test_ztunnel_gets_certificates_for_pods_on_its_node(server: CaServer) -> None:
    cert = await fetch(server.client(ZT_A), WEB)
    leaf = x509.load_pem_x509_certificate(cert.chain_pem)
    assert leaf_identities(leaf) == [WEB]
    assert cert.roots_pem == server.ca.roots_pem
    assert (cert.not_after - cert.not_before).total_seconds() == 3600 + 120


async def test_forged_impersonation_is_refused(server: CaServer) -> None:
    """A broken-into ztunnel on node-a asks for db, which runs only on node-b."""
    with pytest.raises(CaClientError) as info:
        await fetch(server.client(ZT_A), DB)
    assert info.value.code is grpc.StatusCode.UNAUTHENTICATED
    expected = (
        "request impersonation authentication failure: no pod with service account app/db "
        "is running on the caller's node node-a"
    )
    assert expected in str(info.value)
    print(f"\nFORGED IMPERSONATION: ztunnel@node-a asked for {DB}\n  -> {info.value}")  # for the closing note


async def test_workload_token_cannot_impersonate(server: CaServer) -> None:
    web_token = sa_token("app", "web", "web-1", "uid-web-1")
    with pytest.raises(
        CaClientError, match="caller service account app/web is not in CA_TRUSTED_NODE_ACCOUNTS"
    ):
        await fetch(server.client(web_token), API)


async def test_own_identity_without_impersonation(server: CaServer) -> None:
    cert = await fetch(server.client(sa_token("app", "web", "web-1", "uid-web-1"), impersonate=False), WEB)
    assert cert.identity == WEB


async def test_dedicated_mode_cannot_ask_for_another_identity(server: CaServer) -> None:
    # The CSR names api, the caller is web: the CA refuses the CSR rather than silently issuing web.
    with pytest.raises(CaClientError, match="INVALID_ARGUMENT: CSR asks for SAN"):
        await fetch(server.client(sa_token("app", "web", "web-1", "uid-web-1"), impersonate=False), API)


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (None, "no bearer token"),
        (sa_token("istio-system", "ztunnel", "zt-a", "uid-zt-a", exp_in=-5), "the token expired at"),
        (sa_token("istio-system", "ztunnel", "zt-a", "uid-zt-a", aud=["api"]), "bad token audience ['api']"),
    ],
)
async def test_authentication_failures_over_the_wire(
    server: CaServer, token: str | None, message: str
) -> None:
    with pytest.raises(CaClientError) as info:
        await fetch(server.client(lambda: token), WEB)
    assert info.value.code is grpc.StatusCode.UNAUTHENTICATED
    assert "request authenticate failure: " in str(info.value)
    assert message in str(info.value)


async def test_token_file_is_reread_on_every_call(server: CaServer, tmp_path: Path) -> None:
    token_file = tmp_path / "istio-token"
    token_file.write_text(ZT_A)
    client = server.client(token_source(str(token_file)))
    try:
        assert (await client.fetch(WEB)).identity == WEB
        with pytest.raises(CaClientError):
            await client.fetch(DB)
        token_file.write_text(ZT_B)  # the projected token rotated: now we are node-b's ztunnel
        assert (await client.fetch(DB)).identity == DB
    finally:
        await client.close()


async def test_server_verified_against_root_file_which_is_reread(server: CaServer, tmp_path: Path) -> None:
    root_file = tmp_path / "root-cert.pem"
    root_file.write_bytes(make_plugged_ca("foreign").root_pem)
    client = server.client(ZT_A, root=str(root_file))
    try:
        with pytest.raises(CaClientError, match="UNAVAILABLE"):
            await client.fetch(WEB)
        root_file.write_bytes(server.ca.roots_pem)  # the ConfigMap caught up: reconnect with the new root
        assert (await client.fetch(WEB)).identity == WEB
    finally:
        await client.close()


async def test_empty_root_file_fails_closed(server: CaServer, tmp_path: Path) -> None:
    """An empty root-cert.pem (ConfigMap not mounted yet) is refused with a clear message, never dialled."""
    root_file = tmp_path / "root-cert.pem"
    root_file.write_bytes(b"")
    client = server.client(ZT_A, root=str(root_file))
    try:
        with pytest.raises(CaClientError, match="holds no usable certificate"):
            await client.fetch(WEB)
    finally:
        await client.close()


async def test_server_name_is_checked(server: CaServer) -> None:
    """A mesh-signed certificate is not enough: it must name the host ztunnel dialled (ALT_CA_HOSTNAME)."""
    client = CaClient(
        CaClientConfig(
            address=f"https://127.0.0.1:{server.port}",
            root_ca=server.ca.roots_pem,
            token=lambda: ZT_A,
            server_name="istiod.other-namespace.svc",
        )
    )
    try:
        with pytest.raises(CaClientError, match="UNAVAILABLE"):
            await client.fetch(WEB)
    finally:
        await client.close()


def _leaf_asking_for_istiod_cn(ca: CertificateAuthority) -> tuple[bytes, bytes]:
    """(key, chain) the CA issues to the web workload for a CSR whose CN is istiod's host name."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISTIOD_HOST)]))
        .sign(key, hashes.SHA256())
    )
    issued = ca.sign(csr.public_bytes(serialization.Encoding.PEM), uris=[WEB.uri])
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, "".join(issued.chain[:-1]).encode()


async def test_workload_leaf_with_istiod_cn_is_not_istiod(ca: CertificateAuthority, pods: FakePods) -> None:
    """A workload asks for CN=istiod.istio-system.svc and serves the result: ztunnel must not take it for
    istiod. gRPC's host check falls back to the CN of a leaf without DNS SANs, so the CA must never copy the
    CSR's CN (it writes the SPIFFE id there instead)."""
    servicer = CertificateServicer(
        ca, KubeJwtAuthenticator(FakeReviewer()), NodeAuthorizer(["istio-system/ztunnel"], pods)
    )
    srv = grpc.aio.server()
    ca_pb2_grpc.add_IstioCertificateServiceServicer_to_server(servicer, srv)
    port = srv.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([_leaf_asking_for_istiod_cn(ca)]))
    await srv.start()
    try:
        client = CaServer(port, ca, Path("."), None).client(ZT_A)
        with pytest.raises(CaClientError, match="UNAVAILABLE"):
            await fetch(client, WEB)
    finally:
        await srv.stop(None)


async def test_certificate_manager_over_the_real_client(server: CaServer) -> None:
    client = server.client(ZT_A)
    manager = CertificateManager(client)
    try:
        manager.workload_added("web-1", WEB)
        results = await asyncio.gather(*[manager.fetch_certificate(WEB) for _ in range(10)])
        assert len({c.serial for c in results}) == 1
        with pytest.raises(Exception, match="request impersonation authentication failure"):
            await manager.fetch_certificate(DB)
    finally:
        await manager.close()
        await client.close()


async def test_serving_certificate_names(ca: CertificateAuthority) -> None:
    assert istiod_dns_names("istio-system", "canary", ["istiod.example.com"]) == [
        "istiod.istio-system.svc",
        "istiod-canary.istio-system.svc",
        "istiod.example.com",
    ]
    serving = RotatingServerCredentials(ca, istiod_dns_names("istio-system")).current
    leaf = x509.load_pem_x509_certificate(serving.chain_pem)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["istiod.istio-system.svc"]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == []


# --- TLS 1.3 between issued identities ---------------------------------------------------------------------


def context(cert: WorkloadCertificate, server_side: bool, roots: bytes | None = None) -> ssl.SSLContext:
    """HBONE's own contexts (TLS 1.3 only, mutual, chain verified to the roots); ``roots`` overrides the
    trust anchors, to pair a foreign-issued certificate with the mesh roots."""
    from meshkit.hbone import tls as hbone_tls

    if roots is not None:
        cert = dataclasses.replace(cert, roots_pem=roots)
    return hbone_tls.server_context(cert) if server_side else hbone_tls.client_context(cert)


def peer_identity(writer: asyncio.StreamWriter) -> list[Identity]:
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    return leaf_identities(x509.load_der_x509_certificate(der))


async def handshake(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> tuple[list[Identity], list[Identity]]:
    """Connect over loopback and echo one message; return the identities (client saw, server saw)."""
    seen: asyncio.Future[list[Identity]] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.set_result(peer_identity(writer))
        writer.write(await reader.readexactly(5))
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = srv.sockets[0].getsockname()[1]
    try:
        async with asyncio.timeout(10):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_ctx, server_hostname=""
            )
            try:
                assert writer.get_extra_info("ssl_object").version() == "TLSv1.3"
                client_saw = peer_identity(writer)
                writer.write(b"hello")
                assert await reader.readexactly(5) == b"hello"
            finally:
                writer.close()
            return client_saw, await seen
    finally:
        srv.close()
        await srv.wait_closed()


async def test_tls13_between_two_issued_identities(server: CaServer) -> None:
    web = await fetch(server.client(ZT_A), WEB)
    api = await fetch(server.client(ZT_A), API)
    client_saw, server_saw = await handshake(context(web, False), context(api, True))
    assert client_saw == [API]
    assert server_saw == [WEB]


async def test_client_cert_from_foreign_root_is_rejected(server: CaServer) -> None:
    api = await fetch(server.client(ZT_A), API)
    foreign = foreign_certificate(WEB)
    with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
        # The client trusts the mesh root and accepts the server; the server must refuse the foreign client.
        await handshake(context(foreign, False, roots=server.ca.roots_pem), context(api, True))


async def test_server_cert_from_foreign_root_is_rejected(server: CaServer) -> None:
    web = await fetch(server.client(ZT_A), WEB)
    foreign = foreign_certificate(API)
    with pytest.raises(ssl.SSLCertVerificationError):
        await handshake(context(web, False), context(foreign, True, roots=server.ca.roots_pem))


def foreign_certificate(identity: Identity) -> WorkloadCertificate:
    """The same identity, signed by some other CA (an attacker's, or another mesh's)."""
    from meshkit.identity.csr import create_csr
    from meshkit.identity.pem import certificate_from_response

    other = make_plugged_ca("foreign")
    bundle = KeyCertBundle.from_pem(
        other.ca_cert_pem, other.ca_key_pem, other.cert_chain_pem, other.root_pem, source="foreign"
    )
    csr = create_csr(identity)
    chain = CertificateAuthority(bundle).sign(csr.csr_pem, uris=[identity.uri]).chain
    return certificate_from_response(identity, chain, csr.private_key_pem)


async def test_ttl_above_max_refused_and_counted(server: CaServer) -> None:
    client = server.client(ZT_A)
    try:
        object.__setattr__(client._config, "ttl_seconds", 91 * 86400)  # a ztunnel with SECRET_TTL=91d
        with pytest.raises(CaClientError, match="INVALID_ARGUMENT: requested TTL 7862400s is greater than"):
            await client.fetch(WEB)
    finally:
        await client.close()
    registry = server.registry
    assert registry.get_sample_value("citadel_server_csr_parsing_err_count_total") == 1  # type: ignore[attr-defined]
    assert registry.get_sample_value("citadel_server_success_cert_issuance_count_total") == 0  # type: ignore[attr-defined]


async def test_metrics_count_issuance_and_authn_failures(server: CaServer) -> None:
    await fetch(server.client(ZT_A), WEB)
    with pytest.raises(CaClientError):
        await fetch(server.client(lambda: None), WEB)
    with pytest.raises(CaClientError):
        await fetch(server.client(ZT_A), DB)
    get = server.registry.get_sample_value  # type: ignore[attr-defined]
    assert get("citadel_server_csr_count_total") == 3
    assert get("citadel_server_success_cert_issuance_count_total") == 1
    assert get("citadel_server_authentication_failure_count_total") == 2


async def test_pod_index_outage_denies_with_reason(ca: CertificateAuthority) -> None:
    class Broken:
        async def get_pod(self, namespace: str, name: str) -> None:
            raise ConnectionError("informer not synced")

        async def pods_on_node(self, node: str, namespace: str, service_account: str) -> list[object]:
            return []

    from istiod.ca.errors import ImpersonationDenied
    from istiod.security.authn import Caller

    nodes = NodeAuthorizer(["istio-system/ztunnel"], Broken())  # type: ignore[arg-type]
    caller = Caller(
        Identity("cluster.local", "istio-system", "ztunnel"), "istio-system", "ztunnel", "zt-a", "u", "K"
    )
    with pytest.raises(ImpersonationDenied, match="pod lookup failed: informer not synced"):
        await nodes.authorize(caller, WEB.uri)


def test_serving_certificate_rotates_at_half_life(ca: CertificateAuthority) -> None:
    import datetime as dt

    now = [dt.datetime.now(dt.UTC)]
    fake_ca = CertificateAuthority(ca.bundle, clock=lambda: now[0])
    rotating = RotatingServerCredentials(fake_ca, [ISTIOD_HOST], ttl_s=3600, clock=lambda: now[0])
    first = rotating.current
    assert rotating._fetch() is None  # nothing to do yet: gRPC keeps the current one
    now[0] = first.refresh_at()
    assert rotating._fetch() is not None
    assert rotating.current.not_after == first.refresh_at() + dt.timedelta(hours=1)
    assert rotating._fetch() is None


async def test_plugged_intermediate_chain_over_the_wire_and_in_tls(
    plugged: PluggedCa, pods: FakePods, tmp_path: Path
) -> None:
    """With a cacerts intermediate, peers send leaf + intermediate and verify up to the root alone."""
    bundle = KeyCertBundle.from_pem(
        plugged.ca_cert_pem, plugged.ca_key_pem, plugged.cert_chain_pem, plugged.root_pem, source="cacerts"
    )
    ca = CertificateAuthority(bundle)
    servicer = CertificateServicer(
        ca, KubeJwtAuthenticator(FakeReviewer()), NodeAuthorizer(["istio-system/ztunnel"], pods)
    )
    srv = grpc.aio.server()
    ca_pb2_grpc.add_IstioCertificateServiceServicer_to_server(servicer, srv)
    port = srv.add_secure_port("127.0.0.1:0", RotatingServerCredentials(ca, [ISTIOD_HOST]).credentials())
    await srv.start()
    try:
        # ztunnel verifies istiod with the root alone: istiod's serving chain must carry the intermediate.
        client = CaServer(port, ca, tmp_path, None).client(ZT_A, root=plugged.root_pem)
        try:
            web, api = await client.fetch(WEB), await client.fetch(API)
        finally:
            await client.close()
    finally:
        await srv.stop(None)
    assert web.roots_pem == plugged.root_pem
    assert web.chain_pem.count(b"BEGIN CERTIFICATE") == 2
    client_saw, server_saw = await handshake(context(web, False), context(api, True))
    assert (client_saw, server_saw) == ([API], [WEB])


async def test_issued_certificates_work_with_hbone_tls_contexts(server: CaServer) -> None:
    """The same certificates through meshkit.hbone.tls, as HBONE will use them (ALPN h2, SAN checks)."""
    from meshkit.hbone import tls as hbone_tls

    web = await fetch(server.client(ZT_A), WEB)
    api = await fetch(server.client(ZT_A), API)
    seen: asyncio.Future[Identity] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.set_result(
            hbone_tls.verify_client_identity(writer.get_extra_info("ssl_object"), "cluster.local")
        )
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=hbone_tls.server_context(api))
    try:
        port = srv.sockets[0].getsockname()[1]
        async with asyncio.timeout(10):
            _, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=hbone_tls.client_context(web), server_hostname=""
            )
            ssl_object = writer.get_extra_info("ssl_object")
            assert ssl_object.selected_alpn_protocol() == "h2"
            assert hbone_tls.verify_server_identity(ssl_object, {API}) == API
            assert await seen == WEB
            writer.close()
    finally:
        srv.close()
        await srv.wait_closed()
