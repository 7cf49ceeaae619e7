"""Route matching, weighted backends, LB policies, rewrites and redirects (pure logic)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from meshproto.ambient.waypoint.v1 import waypoint_pb2 as pb
from waypoint.config import compile_snapshot
from waypoint.http1 import Request
from waypoint.matching import compile_string_match, path_prefix_matches
from waypoint.records import Cluster, Endpoint
from waypoint.routing import Balancer, pick_backend, redirect_location, rewrite_request, select_route

from .conftest import cluster

HOST = "reviews.default.svc.cluster.local"


def _snapshot(routes: list[pb.Route]) -> pb.WaypointConfig:
    return pb.WaypointConfig(
        name="waypoint",
        namespace="default",
        services=[
            pb.Service(
                hostname=HOST,
                name="reviews",
                namespace="default",
                vips=["10.96.0.10"],
                ports=[pb.ServicePort(port=80, target_port=8080, protocol=pb.HTTP)],
                routes=routes,
            )
        ],
        clusters=[
            cluster(HOST, 80, [("10.0.0.1", 8080)], subset="v1"),
            cluster(HOST, 80, [("10.0.0.2", 8080)], subset="v2"),
        ],
    )


V1 = f"inbound-vip|80|v1|{HOST}"
V2 = f"inbound-vip|80|v2|{HOST}"


def _req(path: str = "/", method: str = "GET", headers: list[tuple[str, str]] | None = None) -> Request:
    p, _, q = path.partition("?")
    return Request(method, p, q, [("host", "reviews"), *(headers or [])])


@pytest.mark.parametrize(
    ("prefix", "path", "ok"),
    [
        ("/foo", "/foo", True),
        ("/foo", "/foo/bar", True),
        ("/foo", "/foobar", False),
        ("/", "/x", True),
        ("/foo/", "/foo", True),
        ("/foo/", "/foo/x", True),
    ],
)
def test_path_prefix_is_element_wise(prefix: str, path: str, ok: bool) -> None:
    assert path_prefix_matches(prefix, path) is ok


def test_string_match_kinds() -> None:
    assert compile_string_match("regex", "/api/v[0-9]+")("/api/v12")
    assert not compile_string_match("regex", "/api/v[0-9]+")("/api/v12/x")  # full match, as Envoy
    assert compile_string_match("exact", "ABC", ignore_case=True)("abc")
    assert compile_string_match("suffix", ".json")("/a.json")
    assert compile_string_match("", "")("")  # presence
    assert not compile_string_match("", "")(None)


def test_header_query_method_matches_and_first_route_wins() -> None:
    snap = compile_snapshot(
        _snapshot(
            [
                pb.Route(
                    name="hdr",
                    matches=[
                        pb.RouteMatch(
                            headers=[pb.HeaderMatch(name="End-User", value=pb.StringMatch(exact="jason"))]
                        )
                    ],
                    backends=[pb.WeightedCluster(cluster=V2, weight=1)],
                ),
                pb.Route(
                    name="query",
                    matches=[
                        pb.RouteMatch(
                            query_params=[pb.HeaderMatch(name="v", value=pb.StringMatch(exact="2"))]
                        )
                    ],
                    backends=[pb.WeightedCluster(cluster=V2, weight=1)],
                ),
                pb.Route(
                    name="post",
                    matches=[pb.RouteMatch(method="POST", path=pb.StringMatch(path_prefix="/api"))],
                    backends=[pb.WeightedCluster(cluster=V2, weight=1)],
                ),
                pb.Route(
                    name="absent",
                    matches=[pb.RouteMatch(headers=[pb.HeaderMatch(name="x-canary", invert=True)])],
                    backends=[pb.WeightedCluster(cluster=V1, weight=1)],
                ),
            ]
        )
    )
    routes = snap.services[0].routes
    assert select_route(routes, _req(headers=[("end-user", "jason")]), 80).name == "hdr"  # type: ignore[union-attr]
    assert select_route(routes, _req("/?v=2"), 80).name == "query"  # type: ignore[union-attr]
    assert select_route(routes, _req("/api/x", "POST", [("x-canary", "1")]), 80).name == "post"  # type: ignore[union-attr]
    assert select_route(routes, _req("/api/x", "GET"), 80).name == "absent"  # type: ignore[union-attr]
    assert select_route(routes, _req("/", headers=[("x-canary", "1")]), 80) is None


def test_weighted_split_is_proportional() -> None:
    snap = compile_snapshot(
        _snapshot(
            [
                pb.Route(
                    name="split",
                    backends=[
                        pb.WeightedCluster(cluster=V1, weight=90),
                        pb.WeightedCluster(cluster=V2, weight=10),
                    ],
                )
            ]
        )
    )
    route = snap.services[0].routes[0]
    rng = random.Random(7)
    counts = Counter(pick_backend(route, rng).cluster for _ in range(10_000))  # type: ignore[union-attr]
    assert 8_800 < counts[V1] < 9_200


def test_bad_regex_drops_only_that_route() -> None:
    warnings: list[str] = []
    snap = compile_snapshot(
        _snapshot(
            [
                pb.Route(
                    name="bad",
                    matches=[pb.RouteMatch(path=pb.StringMatch(regex="(("))],
                    backends=[pb.WeightedCluster(cluster=V1, weight=1)],
                ),
                pb.Route(name="good", backends=[pb.WeightedCluster(cluster=V2, weight=1)]),
            ]
        ),
        warn=warnings.append,
    )
    assert [r.name for r in snap.services[0].routes] == ["good"]
    assert "bad regex" in warnings[0]


def _eps(n: int) -> tuple[Endpoint, ...]:
    return tuple(Endpoint(f"10.0.0.{i}", 80) for i in range(1, n + 1))


def test_round_robin_cycles_and_skips_unhealthy() -> None:
    eps = (*_eps(3), Endpoint("10.0.0.9", 80, healthy=False))
    c = Cluster("c", HOST, 80, lb="ROUND_ROBIN", endpoints=eps)
    b = Balancer(random.Random(1))
    picks = [b.pick(c).address for _ in range(6)]  # type: ignore[union-attr]
    assert sorted(set(picks)) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert picks[:3] == picks[3:]


def test_least_request_prefers_idle_endpoint() -> None:
    eps = _eps(2)
    c = Cluster("c", HOST, 80, lb="LEAST_REQUEST", endpoints=eps)
    b = Balancer(random.Random(1))
    for _ in range(5):
        b.started("c", eps[0])
    assert all(b.pick(c) == eps[1] for _ in range(20))


def test_consistent_hash_is_sticky_and_exclude_avoids_previous_host() -> None:
    c = Cluster("c", HOST, 80, lb="CONSISTENT_HASH", hash_kind="header", hash_key="x-user", endpoints=_eps(5))
    b = Balancer(random.Random(1))
    first = b.pick(c, _req(headers=[("x-user", "alice")]))
    assert all(b.pick(c, _req(headers=[("x-user", "alice")])) == first for _ in range(10))
    other = b.pick(c, _req(headers=[("x-user", "alice")]), exclude={f"{first.address}:80"})  # type: ignore[union-attr]
    assert other != first


def test_rewrite_prefix_and_redirect() -> None:
    snap = compile_snapshot(
        _snapshot(
            [
                pb.Route(
                    name="rw",
                    matches=[pb.RouteMatch(path=pb.StringMatch(path_prefix="/old"))],
                    backends=[pb.WeightedCluster(cluster=V1, weight=1)],
                    rewrite=pb.Rewrite(replace_prefix=True, prefix_replace="/new", authority="other"),
                ),
                pb.Route(
                    name="rd",
                    matches=[pb.RouteMatch(path=pb.StringMatch(exact="/moved"))],
                    redirect=pb.Redirect(hostname="example.com", path="/there", status_code=301),
                ),
            ]
        )
    )
    rw, rd = snap.services[0].routes
    req = _req("/old/page?x=1")
    assert rw.rewrite is not None
    rewrite_request(rw, rw.rewrite, req)
    assert (req.path, req.query, req.authority, req.header("host")) == ("/new/page", "x=1", "other", "other")
    assert rd.redirect is not None
    assert redirect_location(rd, rd.redirect, _req("/moved")) == "http://example.com/there"
    assert rd.redirect.status_code == 301


def test_http1_expect_continue_and_informational_responses() -> None:
    from waypoint.http1 import RequestParser, Response, ResponseParser, serialize_request, serialize_response

    parser = RequestParser()
    assert (
        parser.feed(b"POST /x HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 3\r\n\r\n") == []
    )
    assert parser.take_continue()
    assert not parser.take_continue()
    (req,) = parser.feed(b"abc")
    assert req.body == b"abc"
    assert b"expect" not in serialize_request(req)
    assert b"content-length" not in serialize_request(Request("GET", "/", "", [("host", "a")]))
    resp = ResponseParser().feed(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    )
    assert [(r.status, r.body) for r in resp] == [(200, b"ok")]
    assert b"content-length" not in serialize_response(Response(204))


def test_consumer_routes_only_match_their_namespace() -> None:
    snap = compile_snapshot(
        _snapshot(
            [
                pb.Route(
                    name="consumer",
                    source_namespace="other",
                    backends=[pb.WeightedCluster(cluster=V2, weight=1)],
                ),
                pb.Route(name="producer", backends=[pb.WeightedCluster(cluster=V1, weight=1)]),
            ]
        )
    )
    routes = snap.services[0].routes
    assert select_route(routes, _req(), 80, "other").name == "consumer"  # type: ignore[union-attr]
    assert select_route(routes, _req(), 80, "default").name == "producer"  # type: ignore[union-attr]


def test_outlier_detection_ejects_and_returns_endpoints() -> None:
    from waypoint.records import OutlierDetection

    now = [100.0]
    eps = _eps(4)
    c = Cluster("c", HOST, 80, lb="ROUND_ROBIN", endpoints=eps, outlier=OutlierDetection(3, 0, 10.0, 50))
    b = Balancer(random.Random(1), clock=lambda: now[0])
    for _ in range(3):
        b.outcome(c, eps[0], 503)
    assert all(b.pick(c) != eps[0] for _ in range(12))  # ejected for 10 s
    b.outcome(c, eps[1], 500)
    b.outcome(c, eps[1], 200)  # a success resets the count
    b.outcome(c, eps[1], 500)
    assert eps[1] in {b.pick(c) for _ in range(12)}
    for _ in range(3):
        b.outcome(c, eps[2], 0)  # connect failures count
    for _ in range(3):
        b.outcome(c, eps[3], 503)  # a third ejection would exceed 50 %: kept
    picked = {b.pick(c) for _ in range(12)}
    assert eps[2] not in picked
    assert eps[3] in picked
    now[0] += 11
    assert eps[0] in {b.pick(c) for _ in range(12)}  # back after the ejection time
