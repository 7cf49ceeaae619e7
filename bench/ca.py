"""CA throughput and latency: CSRs signed per second by one istiod CA process, p99 at 50 concurrent callers.

Path measured: the real grpc.aio ``CertificateServicer`` over TLS (serving cert issued by the CA itself) in a
separate server process, with the real KubeJwtAuthenticator (TokenReview answered by an in-memory fake that
accepts, so the API server is not what we measure; answers are cached as in production) and the real
node authorizer over an in-memory pod index: every request impersonates a pod on the caller's node, as
ztunnel does.
CSRs are ECDSA P-256 (made up front, so client key generation is not timed). The CA signs with its default
self-signed RSA 2048 root (``ca.*``) and, for comparison, with an ECDSA P-256 plug-in CA (``ca.ec_root.*``).
``ca.core_sign_per_s`` is the CA core alone (CSR parse + checks + sign), no gRPC.

Run: ``uv run python bench/ca.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

CALLERS = 50
CHANNELS = 10  # ztunnels: each keeps one connection to istiod
DURATION_S = 12.0
WARMUP_S = 2.0
IDENTITIES = 50
HOST = "istiod.istio-system.svc"


def _token() -> str:
    claims = {
        "aud": ["istio-ca"],
        "exp": int(time.time()) + 3600,
        "sub": "system:serviceaccount:istio-system:zt",
    }
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"eyJhbGciOiJSUzI1NiJ9.{body}.c2ln"


def _ca(kind: str):  # type: ignore[no-untyped-def]
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    from istiod.ca.authority import (
        CertificateAuthority,
        KeyCertBundle,
        ca_certificate,
        generate_self_signed_root,
    )

    if kind == "rsa":
        cert, key = generate_self_signed_root("cluster.local")
    else:
        k = ec.generate_private_key(ec.SECP256R1())
        c = ca_certificate(
            x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bench")]), k, ttl=dt.timedelta(days=30)
        )
        cert = c.public_bytes(serialization.Encoding.PEM)
        key = k.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    return CertificateAuthority(KeyCertBundle.from_pem(cert, key, source=f"bench-{kind}"))


async def _serve(kind: str) -> None:
    """The istiod side (its own process): print port and root, then serve until stdin closes."""
    import grpc
    from istiod.ca.nodeauth import NodeAuthorizer, PodInfo
    from istiod.ca.service import CertificateServicer
    from istiod.ca.serving import RotatingServerCredentials
    from istiod.security.authn import KubeJwtAuthenticator, TokenReviewResult
    from meshproto.istio.v1.auth import ca_pb2_grpc

    class Accept:
        async def review(self, token: str, audiences: Sequence[str]) -> TokenReviewResult:
            extra = {
                "authentication.kubernetes.io/pod-name": ("zt-0",),
                "authentication.kubernetes.io/pod-uid": ("u",),
            }
            return TokenReviewResult(True, "system:serviceaccount:istio-system:ztunnel", ("istio-ca",), extra)

    class Pods:
        async def get_pod(self, namespace: str, name: str) -> PodInfo | None:
            return PodInfo(namespace, name, "u", "ztunnel", "node-0", "Running")

        async def pods_on_node(self, node: str, namespace: str, sa: str) -> Sequence[PodInfo]:
            return [PodInfo(namespace, f"{sa}-pod", "p", sa, node, "Running")]

    ca = _ca(kind)
    servicer = CertificateServicer(
        ca, KubeJwtAuthenticator(Accept()), NodeAuthorizer(["istio-system/ztunnel"], Pods())
    )
    server = grpc.aio.server()
    ca_pb2_grpc.add_IstioCertificateServiceServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", RotatingServerCredentials(ca, [HOST]).credentials())
    await server.start()
    print(json.dumps({"port": port, "root": ca.roots_pem.decode()}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop(None)


async def _load(port: int, root: bytes) -> tuple[float, list[float]]:
    """50 callers over 10 channels; returns (signed per second, latencies in ms) for the measured window."""
    import grpc
    from google.protobuf import struct_pb2
    from meshkit.identity.csr import create_csr
    from meshkit.identity.spiffe import Identity
    from meshproto.istio.v1.auth import ca_pb2, ca_pb2_grpc

    requests = []
    for i in range(IDENTITIES):
        identity = Identity("cluster.local", "bench", f"sa-{i}")
        meta = struct_pb2.Struct()
        meta.update({"ImpersonatedIdentity": identity.uri})
        requests.append(
            ca_pb2.IstioCertificateRequest(
                csr=create_csr(identity).csr_pem.decode(), validity_duration=86400, metadata=meta
            )
        )
    metadata = (("authorization", f"Bearer {_token()}"), ("clusterid", "Kubernetes"))
    creds = grpc.ssl_channel_credentials(root_certificates=root)
    options = [("grpc.ssl_target_name_override", HOST)]
    channels = [grpc.aio.secure_channel(f"127.0.0.1:{port}", creds, options=options) for _ in range(CHANNELS)]
    stubs = [ca_pb2_grpc.IstioCertificateServiceStub(c) for c in channels]
    latencies: list[float] = []
    done = 0
    start = time.perf_counter()
    measure_from, measure_to = start + WARMUP_S, start + WARMUP_S + DURATION_S

    async def caller(n: int) -> None:
        nonlocal done
        stub = stubs[n % CHANNELS]
        i = n
        while (t0 := time.perf_counter()) < measure_to:
            response = await stub.CreateCertificate(requests[i % IDENTITIES], metadata=metadata, timeout=30)
            t1 = time.perf_counter()
            assert len(response.cert_chain) == 2
            if t0 >= measure_from:
                latencies.append((t1 - t0) * 1000)
                done += 1
            i += CALLERS

    await asyncio.gather(*(caller(n) for n in range(CALLERS)))
    for channel in channels:
        await channel.close(None)
    return done / DURATION_S, latencies


def _run_against_server(kind: str) -> tuple[float, list[float]]:
    env = dict(os.environ, GRPC_VERBOSITY="ERROR")
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        hello = json.loads(proc.stdout.readline())
        return asyncio.run(_load(hello["port"], hello["root"].encode()))
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _core_rate(kind: str, seconds: float = 3.0) -> float:
    from meshkit.identity.csr import create_csr
    from meshkit.identity.spiffe import Identity

    ca = _ca(kind)
    identity = Identity("cluster.local", "bench", "sa")
    csrs = [create_csr(identity).csr_pem for _ in range(50)]
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        ca.sign(csrs[n % 50], uris=[identity.uri])
        n += 1
    return n / (time.perf_counter() - start)


def _p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 1000) - 1] if len(values) > 1 else float("nan")


def main() -> None:
    from _results import write_results

    figures: dict[str, float | int | str] = {"ca.host_load_1m_before": os.getloadavg()[0]}
    for kind, prefix in (("rsa", "ca"), ("ec", "ca.ec_root")):
        rate, lat = _run_against_server(kind)
        figures[f"{prefix}.csr_signed_per_s"] = rate
        figures[f"{prefix}.p50_ms"] = _p(lat, 0.5)
        figures[f"{prefix}.p99_ms"] = _p(lat, 0.99)
    figures["ca.core_sign_per_s"] = _core_rate("rsa")
    figures["ca.ec_root.core_sign_per_s"] = _core_rate("ec")
    figures["ca.callers"] = CALLERS
    # The machine is shared: a load above ~2 (2 cores) means other work competed with this run.
    figures["ca.host_load_1m_after"] = os.getloadavg()[0]
    figures["ca.path"] = (
        "grpc.aio CreateCertificate over TLS, real authn (fake TokenReview) + node authorizer"
    )
    figures["ca.root"] = "self-signed RSA 2048 (default); ec_root = ECDSA P-256 plug-in CA; CSRs ECDSA P-256"
    write_results("ca", figures)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--serve":
        sys.path[:0] = [str(Path(__file__).resolve().parent)]
        asyncio.run(_serve(sys.argv[2]))
    else:
        main()
