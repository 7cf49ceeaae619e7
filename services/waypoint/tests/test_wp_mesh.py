"""Network-namespace integration: client → ztunnel → waypoint → ztunnel → server, all real (root).

Covers the issue's list: an L7 DENY on a path (403, other paths fine), a 90/10 HTTPRoute-style split over
1,000 requests within binomial bounds, a header-match route, a retry hiding one failing endpoint, a
fault-injected abort, a JWT-required path, and one trace id across the hops.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import jwt
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from meshproto.ambient.waypoint.v1 import waypoint_pb2 as pb
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from waypoint.app import App, build
from waypoint.config import TYPE_URL
from waypoint.settings import Settings

from .wpmesh import HOST, VIP, OneNodeMesh

pytestmark = [pytest.mark.root, pytest.mark.slow]
ISS = "testing@secure.istio.io"
IPS = {"v1": "10.79.1.11", "v2": "10.79.1.12", "bad": "10.79.1.13"}


def _cluster(subset: str, names: list[str], lb: int = pb.LB_DEFAULT) -> pb.Cluster:
    return pb.Cluster(
        name=f"inbound-vip|80|{subset}|{HOST}",
        hostname=HOST,
        port=80,
        subset=subset,
        lb=lb,  # type: ignore[arg-type]
        endpoints=[
            pb.Endpoint(
                address=IPS[n],
                port=8080,
                healthy=True,
                workload=f"reviews-{n}",
                namespace="default",
                identity="spiffe://cluster.local/ns/default/sa/reviews",
            )
            for n in names
        ],
    )


def _ref(subset: str, weight: int = 1) -> pb.WeightedCluster:
    return pb.WeightedCluster(cluster=f"inbound-vip|80|{subset}|{HOST}", weight=weight)


def _config(key: rsa.RSAPrivateKey) -> pb.WaypointConfig:
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="k1", alg="RS256")
    prefix = lambda p: pb.RouteMatch(path=pb.StringMatch(path_prefix=p))  # noqa: E731
    return pb.WaypointConfig(
        name="waypoint",
        namespace="default",
        services=[
            pb.Service(
                hostname=HOST,
                name="reviews",
                namespace="default",
                vips=[VIP],
                ports=[pb.ServicePort(port=80, target_port=8080, protocol=pb.HTTP)],
                routes=[
                    pb.Route(
                        name="header",
                        backends=[_ref("v2")],
                        matches=[
                            pb.RouteMatch(
                                headers=[pb.HeaderMatch(name="end-user", value=pb.StringMatch(exact="jason"))]
                            )
                        ],
                    ),
                    pb.Route(
                        name="split", matches=[prefix("/split")], backends=[_ref("v1", 90), _ref("v2", 10)]
                    ),
                    pb.Route(name="retry", matches=[prefix("/flaky")], backends=[_ref("flaky")]),
                    pb.Route(
                        name="fault",
                        matches=[prefix("/fault")],
                        backends=[_ref("v1")],
                        fault=pb.Fault(abort_percent=100, abort_status=418),
                    ),
                    pb.Route(name="rest", backends=[_ref("v1")]),
                ],
                policies=[
                    pb.Policy(
                        name="deny-admin",
                        namespace="default",
                        action=pb.DENY,
                        rules=[pb.Rule(operations=[pb.Operation(paths=["/admin*"])])],
                    ),
                    pb.Policy(
                        name="require-jwt",
                        namespace="default",
                        action=pb.DENY,
                        rules=[
                            pb.Rule(
                                sources=[pb.Source(not_request_principals=["*"])],
                                operations=[pb.Operation(paths=["/jwt*"])],
                            )
                        ],
                    ),
                ],
                jwt=pb.JwtRules(providers=[pb.JwtProvider(issuer=ISS, jwks=json.dumps({"keys": [jwk]}))]),
            )
        ],
        clusters=[
            _cluster("v1", ["v1"]),
            _cluster("v2", ["v2"]),
            _cluster("flaky", ["bad", "v1"], pb.ROUND_ROBIN),
            _cluster("http", ["v1"]),
        ],
    )


class Env:
    def __init__(
        self, mesh: OneNodeMesh, waypoint: App, spans: InMemorySpanExporter, key: rsa.RSAPrivateKey
    ) -> None:
        self.mesh, self.waypoint, self.spans, self.key = mesh, waypoint, spans, key


@pytest_asyncio.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    mesh = OneNodeMesh(str(tmp_path))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    spans = InMemorySpanExporter()
    try:
        mesh.build_topology()
        for name in ("v1", "v2"):
            await mesh.start_app(name)
        await mesh.start_app("bad", status=503)
        await mesh.start_ztunnel()

        async def source(store, synced):  # type: ignore[no-untyped-def]
            store.apply(TYPE_URL, [("default/waypoint", _config(key))], [])
            synced()

        settings = Settings(
            hbone_addr="0.0.0.0:15008",
            admin_addr="127.0.0.1:0",
            stats_addr="127.0.0.1:0",
            readiness_addr="127.0.0.1:0",
            pod_ip=mesh.pods["waypoint"].ip,
        )
        waypoint = await build(
            settings,
            fetcher=mesh.fetcher,
            config_source=source,
            span_exporter=spans,
            socket_factory=mesh.factory(mesh.pods["waypoint"]),
            connector=mesh.waypoint_connector(),
        )
        mesh.closers.append(waypoint.close)
        await waypoint.readiness.wait_ready()
        yield Env(mesh, waypoint, spans, key)
    finally:
        await mesh.close()


async def test_l7_through_ztunnel_and_waypoint(env: Env) -> None:
    conn = await env.mesh.connect()
    try:
        # plain request: via the waypoint (x-request-id is added there; ztunnel alone never adds it)
        resp = await conn.request("/productpage")
        assert resp.status == 200
        assert resp.header("x-backend") == "v1"
        assert resp.header("echo-x-request-id")
        # L7 DENY on a path, others pass
        denied = await conn.request("/admin/x")
        assert (denied.status, denied.body) == (403, b"RBAC: access denied")
        assert (await conn.request("/reviews/1")).status == 200
        # header-match route
        assert (await conn.request("/r", [("end-user", "jason")])).header("x-backend") == "v2"
        # retry hides the failing endpoint
        assert [(await conn.request(f"/flaky/{i}")).status for i in range(10)] == [200] * 10
        assert env.mesh.apps["bad"].requests
        # fault abort
        assert (await conn.request("/fault")).status == 418
        # JWT-required path
        assert (await conn.request("/jwt")).status == 403
        token = jwt.encode(
            {"iss": ISS, "sub": "sub-1", "exp": int(time.time()) + 60},
            env.key,
            "RS256",
            headers={"kid": "k1"},
        )
        assert (await conn.request("/jwt", [("authorization", f"Bearer {token}")])).status == 200
        assert (await conn.request("/jwt", [("authorization", "Bearer not.a.jwt")])).status == 401
        # one trace id across the hops
        trace_id = "0af7651916cd43dd8448eb211c80319c"
        resp = await conn.request("/trace", [("traceparent", f"00-{trace_id}-b7ad6b7169203331-01")])
        seen = (resp.header("echo-traceparent") or "").split("-")
        assert seen[1] == trace_id
        assert seen[2] != "b7ad6b7169203331"
        assert env.waypoint.tracing.provider is not None
        env.waypoint.tracing.provider.force_flush()
        assert any(
            s.context is not None and f"{s.context.trace_id:032x}" == trace_id
            for s in env.spans.get_finished_spans()
        )
    finally:
        conn.close()
    # the server saw the waypoint as its peer (ztunnel spoofs the HBONE peer IP towards the app)
    assert env.mesh.apps["v1"].requests


async def test_split_90_10_over_1000_requests(env: Env) -> None:
    conn = await env.mesh.connect()
    try:
        counts = Counter([(await conn.request(f"/split/{i}")).header("x-backend") for i in range(1000)])
    finally:
        conn.close()
    # Binomial(1000, 0.9): sd 9.5; 857..943 is ±4.5 sd (false failure < 1e-5).
    assert 857 <= counts["v1"] <= 943, counts
    assert counts["v1"] + counts["v2"] == 1000
