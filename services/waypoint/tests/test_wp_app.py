"""The whole waypoint in-process: HBONE in, L7 processing, HBONE out to echo backends (real TLS + HTTP/2)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import h2.config
import h2.connection
import h2.events
import jwt
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from meshkit.hbone.errors import ConnectFailed, HboneError
from meshkit.hbone.pool import ConnectionPool, PoolKey
from meshkit.hbone.testing import TestCA
from meshkit.identity.spiffe import Identity
from meshkit.metrics import render
from meshproto.ambient.waypoint.v1 import waypoint_pb2 as pb
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from waypoint.app import App, build
from waypoint.config import TYPE_URL
from waypoint.settings import Settings

from .wphelpers import (
    TD,
    Backend,
    Fetcher,
    MeshClient,
    get,
    h2c_call,
    mapping_connector,
    server_tls,
    start_backend,
)

HOST = "reviews.default.svc.cluster.local"
VIP = "10.96.0.10"
ISS = "testing@secure.istio.io"
ADDRS = {"v1": "10.79.1.1", "v2": "10.79.1.2", "bad": "10.79.1.3", "good": "10.79.1.4", "authz": "10.79.1.9"}
AUTHZ_HOST = "authz.default.svc.cluster.local"


def _cluster(subset: str, names: list[str], lb: int = pb.LB_DEFAULT) -> pb.Cluster:
    return pb.Cluster(
        name=f"inbound-vip|80|{subset}|{HOST}",
        hostname=HOST,
        port=80,
        subset=subset,
        lb=lb,  # type: ignore[arg-type]
        endpoints=[
            pb.Endpoint(
                address=ADDRS[n],
                port=8080,
                healthy=True,
                workload=f"reviews-{n}",
                namespace="default",
                identity=f"spiffe://{TD}/ns/default/sa/reviews",
                canonical_name="reviews",
                canonical_revision=n,
            )
            for n in names
        ],
    )


def _ref(subset: str, weight: int = 1) -> pb.WeightedCluster:
    return pb.WeightedCluster(cluster=f"inbound-vip|80|{subset}|{HOST}", weight=weight)


def _jwks(key: rsa.RSAPrivateKey) -> str:
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid="k1", alg="RS256")
    return json.dumps({"keys": [jwk]})


def config(key: rsa.RSAPrivateKey) -> pb.WaypointConfig:
    hdr = pb.RouteMatch(headers=[pb.HeaderMatch(name="end-user", value=pb.StringMatch(exact="jason"))])
    return pb.WaypointConfig(
        name="waypoint",
        namespace="default",
        trust_domain=TD,
        services=[
            pb.Service(
                hostname=HOST,
                name="reviews",
                namespace="default",
                vips=[VIP],
                ports=[pb.ServicePort(port=80, target_port=8080, protocol=pb.PROTOCOL_UNSPECIFIED)],
                routes=[
                    pb.Route(
                        name="header",
                        matches=[hdr],
                        backends=[_ref("v2")],
                        request_headers=pb.HeaderMutation(set={"x-added": "yes"}),
                    ),
                    pb.Route(
                        name="split",
                        matches=[pb.RouteMatch(path=pb.StringMatch(path_prefix="/split"))],
                        backends=[_ref("v1", 90), _ref("v2", 10)],
                    ),
                    pb.Route(
                        name="retry",
                        matches=[pb.RouteMatch(path=pb.StringMatch(path_prefix="/flaky"))],
                        backends=[_ref("flaky")],
                    ),
                    pb.Route(
                        name="fault",
                        matches=[pb.RouteMatch(path=pb.StringMatch(path_prefix="/fault"))],
                        backends=[_ref("v1")],
                        fault=pb.Fault(abort_percent=100, abort_status=418),
                    ),
                    pb.Route(
                        name="slow",
                        matches=[pb.RouteMatch(path=pb.StringMatch(path_prefix="/slow"))],
                        backends=[_ref("v1")],
                        timeout_ms=100,
                    ),
                    pb.Route(
                        name="rest",
                        backends=[_ref("v1")],
                        response_headers=pb.HeaderMutation(add={"x-route": "rest"}),
                    ),
                ],
                policies=[
                    pb.Policy(
                        name="deny-admin",
                        namespace="default",
                        action=pb.DENY,
                        rules=[pb.Rule(operations=[pb.Operation(paths=["/admin*"])])],
                    ),
                    pb.Policy(
                        name="ext",
                        namespace="default",
                        action=pb.CUSTOM,
                        rules=[pb.Rule(operations=[pb.Operation(paths=["/ext*"])])],
                        provider=pb.ExtAuthz(
                            name="ext", service=AUTHZ_HOST, port=8000, include_request_headers=["x-allow"]
                        ),
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
                jwt=pb.JwtRules(providers=[pb.JwtProvider(issuer=ISS, jwks=_jwks(key))]),
            ),
            pb.Service(
                hostname="reviews-v2-pod.default.pod",
                name="reviews-v2-pod",
                namespace="default",
                vips=[ADDRS["v2"]],
                workload=pb.Endpoint(address=ADDRS["v2"], identity=f"spiffe://{TD}/ns/default/sa/reviews"),
            ),
        ],
        clusters=[
            _cluster("v1", ["v1"]),
            _cluster("v2", ["v2"]),
            _cluster("flaky", ["bad", "good"], pb.ROUND_ROBIN),
            _cluster("http", ["v1"]),
            pb.Cluster(
                name=f"inbound-vip|8000|http|{AUTHZ_HOST}",
                hostname=AUTHZ_HOST,
                port=8000,
                endpoints=[
                    pb.Endpoint(
                        address=ADDRS["authz"],
                        port=8000,
                        healthy=True,
                        identity=f"spiffe://{TD}/ns/default/sa/reviews",
                    )
                ],
            ),
        ],
    )


@dataclass
class Env:
    app: App
    client: MeshClient
    backends: dict[str, Backend]
    spans: InMemorySpanExporter
    key: rsa.RSAPrivateKey


@pytest_asyncio.fixture
async def env() -> AsyncIterator[Env]:
    ca = TestCA(TD)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    backends = {
        n: await start_backend(ca, n, Identity(TD, "default", "reviews"), 503 if n == "bad" else 200)
        for n in ADDRS
    }
    ports = {ADDRS[n]: b.port for n, b in backends.items()}
    spans = InMemorySpanExporter()
    settings = Settings(
        hbone_addr="127.0.0.1:0",
        admin_addr="127.0.0.1:0",
        stats_addr="127.0.0.1:0",
        readiness_addr="127.0.0.1:0",
        trust_domain=TD,
    )

    async def source(store, synced):  # type: ignore[no-untyped-def]
        store.apply(TYPE_URL, [("default/waypoint", config(key))], [])
        synced()

    app = await build(
        settings,
        fetcher=Fetcher(ca),
        config_source=source,
        connector=mapping_connector(lambda: ports),
        span_exporter=spans,
    )
    await app.readiness.wait_ready()
    client = MeshClient(ca, app.hbone_address)
    try:
        yield Env(app, client, backends, spans, key)
    finally:
        await client.close()
        await app.close()
        for b in backends.values():
            assert b.server is not None
            await b.server.close()


async def test_routes_default_path_with_request_id_and_headers(env: Env) -> None:
    stream = await env.client.open(f"{VIP}:80")
    resp = await env.client.request(stream, get("/productpage"))
    assert resp.status == 200
    assert resp.header("x-backend") == "v1"
    assert resp.header("x-route") == "rest"
    assert resp.header("echo-x-request-id")
    # keep-alive: a second request on the same tunnel
    assert (await env.client.request(stream, get("/again"))).status == 200


async def test_l7_deny_on_a_path_others_succeed(env: Env) -> None:
    stream = await env.client.open(f"{VIP}:80")
    denied = await env.client.request(stream, get("/admin/users"))
    assert denied.status == 403
    assert denied.body == b"RBAC: access denied"
    assert (await env.client.request(stream, get("/reviews/1"))).status == 200
    assert not any(r.path.startswith("/admin") for b in env.backends.values() for r in b.requests)


async def test_weighted_split_90_10_over_1000_requests(env: Env) -> None:
    stream = await env.client.open(f"{VIP}:80")
    counts: Counter[str] = Counter()
    for i in range(1000):
        resp = await env.client.request(stream, get(f"/split/{i}"))
        counts[resp.header("x-backend") or "?"] += 1
    # Binomial(1000, 0.9): sd = 9.5; 4.5 sd either side keeps a false failure below 1e-5.
    assert 857 <= counts["v1"] <= 943, counts
    assert counts["v1"] + counts["v2"] == 1000


async def test_header_match_route(env: Env) -> None:
    stream = await env.client.open(f"{VIP}:80")
    resp = await env.client.request(stream, get("/reviews", headers=[("end-user", "jason")]))
    assert resp.header("x-backend") == "v2"
    assert resp.header("echo-x-added") == "yes"
    assert (await env.client.request(stream, get("/reviews"))).header("x-backend") == "v1"


async def test_retry_hides_one_failing_endpoint(env: Env) -> None:
    stream = await env.client.open(f"{VIP}:80")
    statuses = [(await env.client.request(stream, get(f"/flaky/{i}"))).status for i in range(20)]
    assert statuses == [200] * 20
    assert env.backends["bad"].requests, "the failing endpoint was tried (and hidden by the retry)"


async def test_fault_abort_and_timeout(env: Env) -> None:
    stream = await env.client.open(f"{VIP}:80")
    resp = await env.client.request(stream, get("/fault"))
    assert resp.status == 418
    started = time.monotonic()
    resp = await env.client.request(stream, get("/slow?delay=1"))
    assert resp.status == 504
    assert time.monotonic() - started < 1.5


async def test_jwt_required_path(env: Env) -> None:
    stream = await env.client.open(f"{VIP}:80")
    good = jwt.encode(
        {"iss": ISS, "sub": "sub-1", "exp": int(time.time()) + 60}, env.key, "RS256", headers={"kid": "k1"}
    )
    expired = jwt.encode(
        {"iss": ISS, "sub": "sub-1", "exp": int(time.time()) - 600}, env.key, "RS256", headers={"kid": "k1"}
    )
    assert (await env.client.request(stream, get("/jwt"))).status == 403
    bad = await env.client.request(stream, get("/jwt", headers=[("authorization", f"Bearer {expired}")]))
    assert bad.status == 401
    assert b"expired" in bad.body
    ok = await env.client.request(stream, get("/jwt", headers=[("authorization", f"Bearer {good}")]))
    assert ok.status == 200
    assert env.backends["v1"].requests[-1].header("authorization") is None  # not forwarded by default


async def test_one_trace_id_across_hops(env: Env) -> None:
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    stream = await env.client.open(f"{VIP}:80")
    resp = await env.client.request(
        stream, get("/t", headers=[("traceparent", f"00-{trace_id}-{parent}-01")])
    )
    seen = resp.header("echo-traceparent") or ""
    assert seen.split("-")[1] == trace_id
    assert seen.split("-")[2] != parent
    env.app.tracing.provider.force_flush()  # type: ignore[union-attr]
    spans = env.spans.get_finished_spans()
    assert any(
        f"{s.context.trace_id:032x}" == trace_id and f"{s.context.span_id:016x}" == seen.split("-")[2]
        for s in spans
        if s.context is not None
    )


async def test_unbound_service_is_refused(env: Env) -> None:
    with pytest.raises(ConnectFailed) as info:
        await env.client.open("10.96.0.99:80")
    assert info.value.status == 503


async def test_metrics_and_config_dump(env: Env) -> None:
    stream = await env.client.open(f"{VIP}:80")
    await env.client.request(stream, get("/m"))
    await env.client.request(stream, get("/admin"))
    async with aiohttp.ClientSession() as http:
        async with http.get(env.app.url("stats") + "/metrics") as r:
            text = await r.text()
        async with http.get(env.app.url("admin") + "/config_dump") as r:
            dump = await r.json()
        async with http.get(env.app.url("readiness") + "/healthz/ready") as r:
            assert r.status == 200
    line = next(
        ln
        for ln in text.splitlines()
        if ln.startswith("istio_requests_total{") and 'response_code="200"' in ln
    )
    for label in (
        'reporter="waypoint"',
        'source_workload="sleep"',
        'source_principal="spiffe://cluster.local/ns/default/sa/sleep"',
        f'destination_service="{HOST}"',
        'destination_workload="reviews-v1"',
        'request_protocol="http"',
        'connection_security_policy="mutual_tls"',
    ):
        assert label in line, (label, line)
    # every exported label, pinned (Istio's standard set, behaviour.md §6.3)
    assert dict(re.findall(r'(\w+)="([^"]*)"', line)) == {
        "connection_security_policy": "mutual_tls",
        "destination_app": "reviews",
        "destination_canonical_revision": "v1",
        "destination_canonical_service": "reviews",
        "destination_cluster": "unknown",
        "destination_principal": "spiffe://cluster.local/ns/default/sa/reviews",
        "destination_service": HOST,
        "destination_service_name": "reviews",
        "destination_service_namespace": "default",
        "destination_version": "v1",
        "destination_workload": "reviews-v1",
        "destination_workload_namespace": "default",
        "grpc_response_status": "",
        "reporter": "waypoint",
        "request_protocol": "http",
        "response_code": "200",
        "response_flags": "-",
        "source_app": "sleep",
        "source_canonical_revision": "v1",
        "source_canonical_service": "sleep",
        "source_cluster": "Kubernetes",
        "source_principal": "spiffe://cluster.local/ns/default/sa/sleep",
        "source_version": "v1",
        "source_workload": "sleep",
        "source_workload_namespace": "default",
    }
    assert 'response_code="403"' in text
    assert 'response_flags="RBAC"' in text
    assert "istio_request_duration_milliseconds_bucket" in text
    assert "istio_response_bytes_bucket" in text
    assert dump["waypoint"]["config"]["services"][0]["hostname"] == HOST


def _without_policies(env: Env) -> pb.WaypointConfig:
    """The test config minus its (L7) policies: for TCP, their DENY rules would deny everything (below)."""
    cfg = config(env.key)
    del cfg.services[0].policies[:]
    return cfg


async def test_tcp_passthrough_for_non_http(env: Env) -> None:
    assert env.app.store.apply(TYPE_URL, [("default/waypoint", _without_policies(env))], []) == []
    stream = await env.client.open(f"{VIP}:80")
    stream.write(b"\x00\x01binary-not-http")
    assert await stream.read() == b"v1:\x00\x01binary-not-http"
    stream.write_eof()
    assert await stream.read() == b""


async def test_custom_policy_asks_the_ext_authz_provider(env: Env) -> None:
    stream = await env.client.open(f"{VIP}:80")
    denied = await env.client.request(stream, get("/ext/a"))
    assert denied.status == 403
    assert denied.body == b"denied by ext authz"
    assert (await env.client.request(stream, get("/ext/a", headers=[("x-allow", "yes")]))).status == 200
    assert (await env.client.request(stream, get("/other"))).status == 200  # the CUSTOM rule does not match
    assert env.backends["authz"].requests[0].path == "/ext/a"


async def test_remote_jwks_is_fetched(env: Env) -> None:
    from aiohttp import web

    async def keys(_req: web.Request) -> web.Response:
        return web.Response(text=_jwks(env.key))

    jwks = web.Application()
    jwks.router.add_get("/keys", keys)
    runner = web.AppRunner(jwks)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/keys"
    try:
        cfg = config(env.key)
        cfg.services[0].jwt.providers.append(pb.JwtProvider(issuer="remote-iss", jwks_uri=url))
        assert env.app.store.apply(TYPE_URL, [("default/waypoint", cfg)], []) == []
        await asyncio.wait_for(env.app.jwks.wait_fetched(url), 10)
        token = jwt.encode(
            {"iss": "remote-iss", "sub": "s", "exp": int(time.time()) + 60},
            env.key,
            "RS256",
            headers={"kid": "k1"},
        )
        stream = await env.client.open(f"{VIP}:80")
        ok = await env.client.request(stream, get("/jwt", headers=[("authorization", f"Bearer {token}")]))
        assert ok.status == 200
    finally:
        await env.app.jwks.close()
        await runner.cleanup()


async def test_drain_finishes_in_flight_requests_and_refuses_new_tunnels(env: Env) -> None:
    stream = await env.client.open(f"{VIP}:80")
    in_flight = asyncio.ensure_future(env.client.request(stream, get("/slow-but-ok?delay=1")))
    await asyncio.wait_for(env.backends["v1"].arrived("/slow-but-ok"), 10)
    drain = asyncio.ensure_future(env.app.drain(5.0))
    resp = await asyncio.wait_for(in_flight, 10)
    assert resp.status == 200
    await asyncio.wait_for(drain, 10)
    assert env.app.stopped.is_set()
    with pytest.raises((ConnectFailed, OSError, HboneError)):
        await env.client.open(f"{VIP}:80")


async def test_grpc_over_h2c_is_routed_and_denied_as_grpc(env: Env) -> None:
    stream = await env.client.open(f"{VIP}:80")
    message = b"\x00\x00\x00\x00\x05hello"
    headers, body, trailers = await h2c_call(stream, "/echo.Echo/Call", message)
    assert headers[":status"] == "200"
    assert headers["x-backend"] == "v1"
    assert body == message
    assert trailers == {"grpc-status": "0"}
    text, _ = render(env.app.registry)
    assert b"istio_request_messages_total{" in text
    assert b'request_protocol="grpc"' in text
    assert b'grpc_response_status="0"' in text
    other = await env.client.open(f"{VIP}:80")
    headers, body, trailers = await h2c_call(other, "/admin.Admin/Wipe", message)
    assert headers[":status"] == "200"
    assert headers["grpc-status"] == "7"  # PERMISSION_DENIED, trailers-only, as Envoy answers gRPC
    assert "RBAC: access denied" in headers["grpc-message"]
    assert body == b""


async def test_workload_addressed_traffic_goes_to_that_pod_on_the_dialled_port(env: Env) -> None:
    stream = await env.client.open(f"{ADDRS['v2']}:8080")
    resp = await env.client.request(stream, get("/direct"))
    assert resp.status == 200
    assert resp.header("x-backend") == "v2"
    assert (await env.client.request(stream, get("/admin"))).status == 200  # Service policies do not apply


async def test_tcproute_sends_tcp_to_its_backend(env: Env) -> None:
    cfg = _without_policies(env)
    cfg.services[0].tcp_routes.append(
        pb.TcpRoute(
            name="tcp", port=80, backends=[pb.WeightedCluster(cluster=f"inbound-vip|80|v2|{HOST}", weight=1)]
        )
    )
    assert env.app.store.apply(TYPE_URL, [("default/waypoint", cfg)], []) == []
    stream = await env.client.open(f"{VIP}:80")
    stream.write(b"\x00raw")
    assert await stream.read() == b"v2:\x00raw"
    assert env.backends["v2"].requests == []  # TCP, not parsed as HTTP by the waypoint or the backend


async def test_unreachable_endpoint_is_503_with_details_in_the_access_log(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = config(env.key)
    dead = f"inbound-vip|80|dead|{HOST}"
    cfg.clusters.append(
        pb.Cluster(
            name=dead,
            hostname=HOST,
            port=80,
            endpoints=[
                pb.Endpoint(
                    address="10.79.1.99",
                    port=8080,
                    healthy=True,
                    identity=f"spiffe://{TD}/ns/default/sa/reviews",
                )
            ],
        )
    )
    cfg.services[0].routes.insert(
        0,
        pb.Route(
            name="dead",
            matches=[pb.RouteMatch(path=pb.StringMatch(path_prefix="/dead"))],
            backends=[pb.WeightedCluster(cluster=dead, weight=1)],
        ),
    )
    assert env.app.store.apply(TYPE_URL, [("default/waypoint", cfg)], []) == []
    stream = await env.client.open(f"{VIP}:80")
    with caplog.at_level("INFO", logger="access"):
        resp = await env.client.request(stream, get("/dead"))
    assert resp.status == 503
    assert b"reset reason: connect-failure" in resp.body
    record = next(r for r in caplog.records if r.name == "access" and r.kv["path"] == "/dead")  # type: ignore[attr-defined]
    assert record.kv["response_flags"] == "UF"  # type: ignore[attr-defined]
    assert record.kv["attempts"] == 3  # type: ignore[attr-defined]
    assert "no backend at 10.79.1.99" in record.kv["error"]  # type: ignore[attr-defined]
    assert record.levelname == "ERROR"


async def test_xfcc_carries_the_client_identity_when_asked(env: Env) -> None:
    spoof = [("x-forwarded-client-cert", "By=x;URI=spiffe://cluster.local/ns/kube-system/sa/admin")]
    stream = await env.client.open(f"{VIP}:80")
    assert (await env.client.request(stream, get("/xfcc", headers=spoof))).status == 200
    assert env.backends["v1"].requests[-1].header("x-forwarded-client-cert") is None  # sanitized
    cfg = config(env.key)
    cfg.xfcc_client_identity = True
    assert env.app.store.apply(TYPE_URL, [("default/waypoint", cfg)], []) == []
    stream = await env.client.open(f"{VIP}:80")
    assert (await env.client.request(stream, get("/xfcc", headers=spoof))).status == 200
    xfcc = env.backends["v1"].requests[-1].header("x-forwarded-client-cert")
    assert (
        xfcc
        == "By=spiffe://cluster.local/ns/default/sa/waypoint;URI=spiffe://cluster.local/ns/default/sa/sleep"
    )


async def test_h2c_client_to_an_http_port_is_sent_upstream_as_http1(env: Env) -> None:
    cfg = config(env.key)
    cfg.services[0].ports[0].protocol = pb.HTTP
    assert env.app.store.apply(TYPE_URL, [("default/waypoint", cfg)], []) == []
    stream = await env.client.open(f"{VIP}:80")
    headers, body, _trailers = await h2c_call(stream, "/h2-to-h1", b"payload")
    assert headers[":status"] == "200"
    assert body == b"backend=v1 path=/h2-to-h1\n"
    assert env.backends["v1"].requests[-1].body == b"payload"


async def test_concurrent_tunnels_and_requests(env: Env) -> None:
    async def client(i: int) -> list[int]:
        stream = await env.client.open(f"{VIP}:80")
        return [(await env.client.request(stream, get(f"/c/{i}/{j}"))).status for j in range(10)]

    results = await asyncio.gather(*(client(i) for i in range(40)))
    assert all(r == [200] * 10 for r in results)
    assert env.app.proxy.upstreams.opened <= 40 + 5  # keep-alive tunnels are reused, not one per request


async def test_destinationrule_tls_simple_originates_tls_to_the_app(env: Env) -> None:
    ca = TestCA(TD)
    env.backends["good"].tls = server_tls(ca, Identity(TD, "default", "reviews"))
    cfg = config(env.key)
    name = f"inbound-vip|80|tls|{HOST}"
    cluster = cfg.clusters.add()
    cluster.CopyFrom(_cluster("tls", ["good"]))
    cluster.tls.ca_certificates = ca.roots_pem.decode()
    cfg.services[0].routes.insert(
        0,
        pb.Route(
            name="tls",
            matches=[pb.RouteMatch(path=pb.StringMatch(path_prefix="/tls"))],
            backends=[pb.WeightedCluster(cluster=name, weight=1)],
        ),
    )
    assert env.app.store.apply(TYPE_URL, [("default/waypoint", cfg)], []) == []
    stream = await env.client.open(f"{VIP}:80")
    resp = await env.client.request(stream, get("/tls/a"))
    assert resp.status == 200
    assert resp.header("x-backend") == "good"
    assert (await env.client.request(stream, get("/tls/b"))).status == 200  # the TLS session is kept alive
    assert env.app.proxy.upstreams.opened == 1


async def test_connection_pool_limits_overflow_with_503(env: Env) -> None:
    cfg = config(env.key)
    limited = next(c for c in cfg.clusters if c.name == f"inbound-vip|80|http|{HOST}")
    limited.max_connections = 1
    limited.max_pending_requests = 1
    limited.max_requests_per_connection = 1
    cfg.services[0].ClearField("routes")  # the default route: straight to the "http" cluster
    assert env.app.store.apply(TYPE_URL, [("default/waypoint", cfg)], []) == []
    streams = [await env.client.open(f"{VIP}:80") for _ in range(3)]
    first = asyncio.ensure_future(env.client.request(streams[0], get("/pool/1?delay=1")))
    await asyncio.wait_for(env.backends["v1"].arrived("/pool/1"), 10)
    second = asyncio.ensure_future(env.client.request(streams[1], get("/pool/2")))
    limiter = env.app.proxy.forwarder.limits[limited.name]
    await asyncio.wait_for(limiter.queued.wait(), 10)  # the second request waits behind the first
    overflow = await env.client.request(streams[2], get("/pool/3"))
    assert overflow.status == 503
    assert b"overflow" in overflow.body
    assert [r.status for r in await asyncio.gather(first, second)] == [200, 200]
    assert env.app.proxy.upstreams.opened == 2  # maxRequestsPerConnection 1: no reuse


async def test_mirroring_sends_a_shadow_copy(env: Env) -> None:
    cfg = config(env.key)
    cfg.services[0].routes.insert(
        0,
        pb.Route(
            name="mirror",
            matches=[pb.RouteMatch(path=pb.StringMatch(path_prefix="/mirror"))],
            backends=[pb.WeightedCluster(cluster=f"inbound-vip|80|v1|{HOST}", weight=1)],
            mirrors=[pb.Mirror(cluster=f"inbound-vip|80|v2|{HOST}", percent=100)],
        ),
    )
    assert env.app.store.apply(TYPE_URL, [("default/waypoint", cfg)], []) == []
    stream = await env.client.open(f"{VIP}:80")
    resp = await env.client.request(stream, get("/mirror/x"))
    assert resp.header("x-backend") == "v1"
    await asyncio.wait_for(env.backends["v2"].arrived("/mirror/x"), 10)
    assert env.backends["v2"].requests[-1].header("host") == "reviews-shadow"


async def test_jwt_payload_is_forwarded_in_a_header_when_asked(env: Env) -> None:
    cfg = config(env.key)
    cfg.services[0].jwt.providers[0].output_payload_to_header = "x-jwt-payload"
    assert env.app.store.apply(TYPE_URL, [("default/waypoint", cfg)], []) == []
    token = jwt.encode(
        {"iss": ISS, "sub": "sub-1", "exp": int(time.time()) + 60}, env.key, "RS256", headers={"kid": "k1"}
    )
    stream = await env.client.open(f"{VIP}:80")
    ok = await env.client.request(stream, get("/jwt", headers=[("authorization", f"Bearer {token}")]))
    assert ok.status == 200
    payload = env.backends["v1"].requests[-1].header("x-jwt-payload") or ""
    decoded = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert decoded["sub"] == "sub-1"
    forged = [("x-jwt-payload", base64.urlsafe_b64encode(b'{"sub": "admin"}').decode())]
    assert (await env.client.request(stream, get("/reviews/1", headers=forged))).status == 200
    assert env.backends["v1"].requests[-1].header("x-jwt-payload") is None  # no token: nothing forwarded


async def test_websocket_upgrade_relays_raw_bytes_after_101(env: Env) -> None:
    stream = await env.client.open(f"{VIP}:80")
    stream.write(
        b"GET /ws HTTP/1.1\r\nhost: reviews\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\nPING1"
    )
    got = b""
    while b"echo:PING1" not in got:
        chunk = await asyncio.wait_for(stream.read(), 10)
        assert chunk, got
        got += chunk
    assert got.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"upgrade: websocket" in got
    assert b"hello;" in got
    stream.write(b"PING2")
    assert await asyncio.wait_for(stream.read(), 10) == b"echo:PING2"
    stream.write_eof()
    assert await asyncio.wait_for(stream.read(), 10) == b""
    req = env.backends["v1"].requests[-1]
    assert req.header("upgrade") == "websocket"
    assert req.header("x-request-id")  # it went through the L7 pipeline


async def _raw_exchange(env: Env, raw: bytes) -> bytes:
    """Send raw bytes in one tunnel and read until the waypoint closes it."""
    stream = await env.client.open(f"{VIP}:80")
    stream.write(raw)
    out = b""
    async with asyncio.timeout(10):
        while chunk := await stream.read():
            out += chunk
    return out


async def test_dot_segments_cannot_bypass_a_path_deny(env: Env) -> None:
    stream = await env.client.open(f"{VIP}:80")
    for path in (
        "/x/../admin/users",
        "/./admin/users",
        "/%2e%2e/admin/users",
        "/%61dmin/users",
        "/%2E/%61dmin",
    ):
        denied = await env.client.request(stream, get(path))
        assert (path, denied.status, denied.body) == (path, 403, b"RBAC: access denied")
    ok = await env.client.request(stream, get("/reviews/./1"))
    assert ok.status == 200
    assert ok.body == b"backend=v1 path=/reviews/1\n"  # the app gets the normalized path, as from Envoy
    assert not any("admin" in r.path for b in env.backends.values() for r in b.requests)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /r HTTP/1.1\r\nhost: reviews\r\nhost: admin\r\n\r\n", b"400"),
        (b"POST /r HTTP/1.1\r\nhost: reviews\r\ncontent-length: 1\r\ncontent-length: 5\r\n\r\nhello", b"400"),
        (
            b"POST /r HTTP/1.1\r\nhost: r\r\ncontent-length: 5\r\n"
            b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            b"400",
        ),
        (b"GET /r HTTP/1.1\r\nhost: reviews\r\nx-a: 1\rx-b: 2\r\n\r\n", b"400"),
        (b"GET /r HTTP/1.1\r\nhost: reviews\r\n" + b"x-pad: " + b"a" * 70_000 + b"\r\n\r\n", b"431"),
        (b"GET /r HTTP/1.1\r\nhost: reviews\r\n" + b"x-h: 1\r\n" * 101 + b"\r\n", b"431"),
    ],
    ids=["dup-host", "dup-content-length", "cl-and-te", "bare-cr", "huge-header", "too-many-headers"],
)
async def test_smuggling_and_oversized_heads_are_refused(env: Env, raw: bytes, status: bytes) -> None:
    answer = await _raw_exchange(env, raw)
    assert answer.startswith(b"HTTP/1.1 " + status + b" ")
    assert not any(r.path == "/r" for b in env.backends.values() for r in b.requests)


async def test_header_head_trickled_in_small_pieces_is_capped(env: Env) -> None:
    stream = await env.client.open(f"{VIP}:80")
    stream.write(b"GET /r HTTP/1.1\r\nhost: reviews\r\nx-pad: ")
    answer = b""
    async with asyncio.timeout(10):
        # the proxy may answer and reset the stream before all of it is sent: what it answered is still read
        with contextlib.suppress(HboneError):
            for _ in range(100):  # 100 x 1 KiB of one never-ending header value (httptools buffers it)
                stream.write(b"a" * 1024)
                await stream.drain()
        with contextlib.suppress(HboneError):
            while chunk := await stream.read():
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 431 ")


async def test_h2c_crlf_in_a_header_cannot_reach_an_http1_upstream(env: Env) -> None:
    cfg = config(env.key)
    cfg.services[0].ports[0].protocol = pb.HTTP
    assert env.app.store.apply(TYPE_URL, [("default/waypoint", cfg)], []) == []
    stream = await env.client.open(f"{VIP}:80")
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding="utf-8", validate_outbound_headers=False)
    )
    conn.initiate_connection()
    evil = [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/smuggle"),
        (":authority", "reviews"),
        ("x-evil", "a\r\n\r\nGET /admin/users HTTP/1.1\r\nhost: reviews"),
    ]
    conn.send_headers(1, evil, end_stream=True)
    stream.write(conn.data_to_send())
    status = None
    async with asyncio.timeout(10):
        while status is None:
            data = await stream.read()
            assert data, "tunnel closed without an answer"
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    status = dict(ev.headers)[":status"]
            stream.write(conn.data_to_send())
    assert status == "400"
    assert not any(r.path in {"/smuggle", "/admin/users"} for b in env.backends.values() for r in b.requests)


@pytest.mark.parametrize(
    "target",
    ["http://reviews/admin/users", "HTTP://reviews/./admin/users?x=1"],
)
async def test_absolute_form_target_is_authorized_on_its_path(env: Env, target: str) -> None:
    answer = await _raw_exchange(
        env, f"GET {target} HTTP/1.1\r\nhost: reviews\r\nconnection: close\r\n\r\n".encode()
    )
    assert answer.startswith(b"HTTP/1.1 403 ")
    assert answer.endswith(b"RBAC: access denied")
    assert not any("admin" in r.path for b in env.backends.values() for r in b.requests)


@pytest.mark.parametrize("target", ["/admin/users#frag", "reviews:80", "admin/users"])
async def test_fragments_and_odd_request_targets_are_400(env: Env, target: str) -> None:
    answer = await _raw_exchange(env, f"GET {target} HTTP/1.1\r\nhost: reviews\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert not any("admin" in r.path for b in env.backends.values() for r in b.requests)


async def test_h2c_upgrade_is_refused_so_nothing_is_relayed_past_authz(env: Env) -> None:
    answer = await _raw_exchange(
        env,
        b"GET /up HTTP/1.1\r\nhost: reviews\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\n"
        b"http2-settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 403 ")
    assert not any(r.path == "/up" for b in env.backends.values() for r in b.requests)


async def test_denied_websocket_upgrade_is_answered_and_closed(env: Env) -> None:
    answer = await _raw_exchange(
        env, b"GET /admin/ws HTTP/1.1\r\nhost: reviews\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 403 ")
    assert answer.endswith(b"RBAC: access denied")


async def test_h2c_buffered_bodies_are_capped_per_connection(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    import waypoint.h2c

    monkeypatch.setattr(waypoint.h2c, "MAX_BODY", 50_000)
    stream = await env.client.open(f"{VIP}:80")
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    head = [(":method", "POST"), (":scheme", "http"), (":path", "/big"), (":authority", "reviews")]
    for sid in (1, 3):  # two streams of 30 kB each, neither finished: 60 kB buffered in one connection
        conn.send_headers(sid, head)
        for _ in range(3):
            conn.send_data(sid, b"x" * 10_000)
    stream.write(conn.data_to_send())
    reset: set[int] = set()
    async with asyncio.timeout(10):
        while not reset:
            data = await stream.read()
            assert data, "tunnel closed"
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.StreamReset):
                    reset.add(ev.stream_id)
            stream.write(conn.data_to_send())
    assert reset == {3}


async def test_peers_without_a_mesh_certificate_are_refused(env: Env) -> None:
    cert = env.app.certs.find_certificate(env.app.identity)
    assert cert is not None
    # a leaf from a foreign root (same trust domain name) that trusts the waypoint's root: the client side of
    # TLS succeeds, so only the waypoint's own check of the peer can stop it
    rogue = TestCA(name="rogue root").issue(Identity(TD, "default", "sleep"), extra_roots_pem=cert.roots_pem)
    pool = ConnectionPool(lambda _i: rogue, name="rogue")
    try:
        key = PoolKey.of(
            Identity(TD, "default", "sleep"), "127.0.0.1", [cert.identity], env.app.hbone_address
        )
        with pytest.raises((ConnectFailed, HboneError, OSError)) as info:
            await pool.connect(key, f"{VIP}:80", [])
        assert "TLS handshake" not in str(info.value)  # the client's TLS succeeded: the waypoint refused
    finally:
        await pool.close()
    assert not any(b.requests for b in env.backends.values())
    # the same client with a leaf of the mesh's root gets through
    assert (await env.client.request(await env.client.open(f"{VIP}:80"), get("/reviews/1"))).status == 200


async def _tcp_echo(env: Env) -> bytes:
    stream = await env.client.open(f"{VIP}:80")
    stream.write(b"\x00\x01binary-not-http")
    async with asyncio.timeout(10):
        try:
            return await stream.read()
        except HboneError:
            return b""  # reset by the waypoint


@pytest.mark.parametrize(
    ("rules", "action", "passes"),
    [
        # Istio for TCP: a DENY ignores its HTTP-only fields (wider); an ALLOW rule naming one is dropped
        ([pb.Rule(operations=[pb.Operation(paths=["/admin*"])])], pb.DENY, False),
        ([pb.Rule(sources=[pb.Source(principals=["cluster.local/ns/default/sa/sleep"])])], pb.DENY, False),
        ([pb.Rule(sources=[pb.Source(principals=["cluster.local/ns/default/sa/other"])])], pb.DENY, True),
        ([pb.Rule(sources=[pb.Source(principals=["cluster.local/ns/default/sa/sleep"])])], pb.ALLOW, True),
        (
            [pb.Rule(sources=[pb.Source(namespaces=["default"])], operations=[pb.Operation(ports=["80"])])],
            pb.ALLOW,
            True,
        ),
        ([pb.Rule(operations=[pb.Operation(paths=["/"])])], pb.ALLOW, False),
        ([pb.Rule(sources=[pb.Source(principals=["cluster.local/ns/default/sa/other"])])], pb.ALLOW, False),
    ],
    ids=[
        "deny-l7-widens",
        "deny-principal",
        "deny-other",
        "allow-principal",
        "allow-ns-port",
        "allow-l7-dropped",
        "allow-other",
    ],
)
async def test_tcp_passthrough_is_authorized_at_l4(
    env: Env, rules: list[pb.Rule], action: int, passes: bool
) -> None:
    cfg = _without_policies(env)
    cfg.services[0].policies.append(pb.Policy(name="p", namespace="default", action=action, rules=rules))  # type: ignore[arg-type]
    assert env.app.store.apply(TYPE_URL, [("default/waypoint", cfg)], []) == []
    got = await _tcp_echo(env)
    assert (got == b"v1:\x00\x01binary-not-http") is passes, got


async def test_a_declared_http_port_never_falls_back_to_tcp(env: Env) -> None:
    cfg = _without_policies(env)
    cfg.services[0].ports[0].protocol = pb.HTTP
    assert env.app.store.apply(TYPE_URL, [("default/waypoint", cfg)], []) == []
    answer = await _raw_exchange(env, b"\x00\x01binary-not-http")
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert not any(b.requests for b in env.backends.values())
    assert b"binary" not in answer  # nothing was relayed to a backend
