"""The per-waypoint L7 config builder, over plain objects (pure)."""

from __future__ import annotations

from typing import Any

from istiod.waypoint.l7 import L7Inputs, build_configs
from meshproto.ambient.waypoint.v1 import waypoint_pb2 as pb

Obj = dict[str, Any]


def gateway(name: str = "waypoint", ns: str = "app", **labels: str) -> Obj:
    return {
        "metadata": {"name": name, "namespace": ns, "labels": labels, "generation": 1},
        "spec": {
            "gatewayClassName": "istio-waypoint",
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
        },
    }


def service(
    name: str,
    ns: str = "app",
    ip: str = "10.79.0.10",
    labels: dict[str, str] | None = None,
    ports: list[Obj] | None = None,
) -> Obj:
    return {
        "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
        "spec": {
            "clusterIP": ip,
            "clusterIPs": [ip],
            "selector": {"app": name},
            "ports": ports or [{"name": "http", "port": 80, "targetPort": 8080}],
        },
    }


def pod(name: str, app: str, ip: str, version: str = "v1", ns: str = "app", ready: bool = True) -> Obj:  # noqa: PLR0917
    return {
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": {"app": app, "version": version},
            "ownerReferences": [{"kind": "ReplicaSet", "name": f"{app}-{version}-abc"}],
        },
        "spec": {
            "serviceAccountName": app,
            "containers": [{"ports": [{"name": "web", "containerPort": 8080}]}],
        },
        "status": {
            "podIP": ip,
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def base(**extra: Any) -> L7Inputs:
    return L7Inputs(
        gateways=[gateway()],
        namespaces=[{"metadata": {"name": "app", "labels": {"istio.io/use-waypoint": "waypoint"}}}],
        services=[
            service("reviews"),
            service("ratings", ip="10.79.0.11", labels={"istio.io/use-waypoint": "none"}),
        ],
        pods=[
            pod("r1", "reviews", "10.79.1.1"),
            pod("r2", "reviews", "10.79.1.2", "v2"),
            pod("r3", "reviews", "10.79.1.3", "v2", ready=False),
            pod("t1", "ratings", "10.79.1.9"),
        ],
        **extra,
    )


def test_binding_endpoints_and_bound_status() -> None:
    res = build_configs(base())
    cfg = res.configs["app/waypoint"]
    assert [s.hostname for s in cfg.services] == ["reviews.app.svc.cluster.local"]  # ratings opted out
    assert list(cfg.services[0].vips) == ["10.79.0.10"]
    assert cfg.services[0].ports[0].protocol == pb.HTTP
    cluster = {c.name: c for c in cfg.clusters}["inbound-vip|80|http|reviews.app.svc.cluster.local"]
    assert sorted(e.address for e in cluster.endpoints) == ["10.79.1.1", "10.79.1.2"]  # r3 not ready
    assert cluster.endpoints[0].identity == "spiffe://cluster.local/ns/app/sa/reviews"
    assert cluster.endpoints[0].workload == "reviews-v1"
    bound = [s for s in res.statuses if s.kind == "Service"]
    assert [(s.name, s.status["conditions"][0]["status"]) for s in bound] == [("reviews", "True")]
    assert bound[0].status["conditions"][0]["type"] == "istio.io/WaypointBound"


def test_missing_waypoint_and_wrong_traffic_type() -> None:
    inputs = base()
    inputs.gateways = [gateway(**{"istio.io/waypoint-for": "workload"})]
    res = build_configs(inputs)
    assert not [s for s in res.configs["app/waypoint"].services if not s.HasField("workload")]
    cond = next(s for s in res.statuses if s.kind == "Service").status["conditions"][0]
    assert (cond["status"], cond["reason"]) == ("False", "UnsupportedTrafficType")
    inputs.gateways = []
    cond = next(s for s in build_configs(inputs).statuses if s.kind == "Service").status["conditions"][0]
    assert cond["reason"] == "WaypointNotFound"


def httproute(name: str, rules: list[Obj], parent: str = "reviews") -> Obj:
    return {
        "metadata": {
            "name": name,
            "namespace": "app",
            "generation": 2,
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": parent, "port": 80}],
            "rules": rules,
        },
    }


def test_httproute_split_header_match_and_precedence() -> None:
    route = httproute(
        "split",
        [
            {
                "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                "backendRefs": [
                    {"name": "reviews", "port": 80, "weight": 90},
                    {"name": "ratings", "port": 80, "weight": 10},
                ],
            },
            {
                "matches": [
                    {
                        "path": {"type": "Exact", "value": "/exact"},
                        "headers": [{"name": "End-User", "value": "jason"}],
                    }
                ],
                "filters": [
                    {
                        "type": "RequestHeaderModifier",
                        "requestHeaderModifier": {"set": [{"name": "X-A", "value": "1"}]},
                    }
                ],
                "backendRefs": [{"name": "ratings", "port": 80}],
                "timeouts": {"request": "2s"},
            },
        ],
    )
    res = build_configs(base(httproutes=[route]))
    routes = res.configs["app/waypoint"].services[0].routes
    assert [r.name for r in routes] == ["HTTPRoute/app/split#1", "HTTPRoute/app/split#0"]  # Exact first
    exact, split = routes
    assert exact.matches[0].headers[0].name == "end-user"
    assert exact.request_headers.set["x-a"] == "1"
    assert exact.timeout_ms == 2000
    assert [(b.cluster.split("|")[3], b.weight) for b in split.backends] == [
        ("reviews.app.svc.cluster.local", 90),
        ("ratings.app.svc.cluster.local", 10),
    ]
    status = next(s for s in res.statuses if s.kind == "HTTPRoute").status["parents"][0]
    assert [c["status"] for c in status["conditions"]] == ["True", "True"]


def test_invalid_route_rule_is_dropped_alone_with_status() -> None:
    route = httproute(
        "bad",
        [
            {
                "matches": [{"path": {"type": "RegularExpression", "value": "(("}}],
                "backendRefs": [{"name": "reviews", "port": 80}],
            },
            {"backendRefs": [{"name": "nope", "port": 80}]},
        ],
    )
    good = httproute(
        "good",
        [
            {
                "matches": [{"path": {"type": "PathPrefix", "value": "/good"}}],
                "backendRefs": [{"name": "reviews", "port": 80}],
            }
        ],
    )
    res = build_configs(base(httproutes=[route, good]))
    names = [r.name for r in res.configs["app/waypoint"].services[0].routes]
    assert "HTTPRoute/app/good#0" in names
    assert "HTTPRoute/app/bad#1" in names
    assert "HTTPRoute/app/bad#0" not in names
    bad = next(s for s in res.statuses if s.kind == "HTTPRoute" and s.name == "bad").status["parents"][0][
        "conditions"
    ]
    assert bad[0]["reason"] == "UnsupportedValue"
    assert "bad regex" in bad[0]["message"]
    assert bad[1]["reason"] == "BackendNotFound"
    invalid = next(
        r for r in res.configs["app/waypoint"].services[0].routes if r.name == "HTTPRoute/app/bad#1"
    )
    assert invalid.backends[0].cluster.startswith("invalid-backend|")


def test_virtualservice_with_destinationrule_subsets_retries_faults() -> None:
    vs = {
        "metadata": {"name": "reviews", "namespace": "app"},
        "spec": {
            "hosts": ["reviews"],
            "http": [
                {
                    "match": [{"headers": {"end-user": {"exact": "jason"}}}],
                    "route": [{"destination": {"host": "reviews", "subset": "v2"}}],
                    "fault": {"abort": {"percentage": {"value": 100}, "httpStatus": 555}},
                },
                {
                    "route": [
                        {"destination": {"host": "reviews", "subset": "v1"}, "weight": 75},
                        {"destination": {"host": "reviews", "subset": "v2"}, "weight": 25},
                    ],
                    "retries": {"attempts": 3, "perTryTimeout": "1s", "retryOn": "5xx,503"},
                    "timeout": "5s",
                },
            ],
        },
    }
    dr = {
        "metadata": {"name": "reviews", "namespace": "app"},
        "spec": {
            "host": "reviews",
            "trafficPolicy": {"loadBalancer": {"simple": "ROUND_ROBIN"}},
            "subsets": [
                {"name": "v1", "labels": {"version": "v1"}},
                {
                    "name": "v2",
                    "labels": {"version": "v2"},
                    "trafficPolicy": {"loadBalancer": {"consistentHash": {"httpHeaderName": "x-user"}}},
                },
            ],
        },
    }
    res = build_configs(base(virtualservices=[vs], destinationrules=[dr]))
    cfg = res.configs["app/waypoint"]
    first, second = cfg.services[0].routes
    assert first.fault.abort_status == 555
    assert first.backends[0].cluster == "inbound-vip|80|v2|reviews.app.svc.cluster.local"
    assert second.retries.attempts == 3
    assert second.retries.per_try_timeout_ms == 1000
    assert second.timeout_ms == 5000
    assert set(second.retries.retry_on) >= {"5xx", "retriable-status-codes"}
    assert list(second.retries.retriable_status_codes) == [503]
    clusters = {c.name: c for c in cfg.clusters}
    v1 = clusters["inbound-vip|80|v1|reviews.app.svc.cluster.local"]
    v2 = clusters["inbound-vip|80|v2|reviews.app.svc.cluster.local"]
    assert [e.address for e in v1.endpoints] == ["10.79.1.1"]
    assert v1.lb == pb.ROUND_ROBIN
    assert [e.address for e in v2.endpoints] == ["10.79.1.2"]
    assert v2.lb == pb.CONSISTENT_HASH
    assert v2.hash.header == "x-user"


def test_policies_attach_by_target_ref() -> None:
    deny = {
        "metadata": {"name": "deny-admin", "namespace": "app"},
        "spec": {
            "targetRefs": [{"kind": "Service", "group": "", "name": "reviews"}],
            "action": "DENY",
            "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}],
        },
    }
    allow = {
        "metadata": {"name": "allow-sleep", "namespace": "app"},
        "spec": {
            "targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}],
            "rules": [{"from": [{"source": {"serviceAccounts": ["sleep", "other/x"]}}]}],
        },
    }
    selector = {
        "metadata": {"name": "l4", "namespace": "app"},
        "spec": {"selector": {"matchLabels": {"app": "x"}}},
    }
    dangling = {
        "metadata": {"name": "dangling", "namespace": "app"},
        "spec": {"targetRefs": [{"kind": "Service", "name": "missing"}], "action": "DENY"},
    }
    ra = {
        "metadata": {"name": "jwt", "namespace": "app"},
        "spec": {
            "targetRefs": [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}],
            "jwtRules": [{"issuer": "iss", "jwks": '{"keys": []}', "fromHeaders": [{"name": "x-jwt"}]}],
        },
    }
    res = build_configs(
        base(authorizationpolicies=[deny, allow, selector, dangling], requestauthentications=[ra])
    )
    cfg = res.configs["app/waypoint"]
    assert [p.name for p in cfg.services[0].policies] == ["deny-admin"]
    assert [p.name for p in cfg.policies] == ["allow-sleep"]
    assert list(cfg.policies[0].rules[0].sources[0].principals) == [
        "cluster.local/ns/app/sa/sleep",
        "cluster.local/ns/other/sa/x",
    ]
    assert cfg.jwt.providers[0].issuer == "iss"
    assert list(cfg.jwt.providers[0].from_headers) == ["x-jwt"]
    by_name = {s.name: s for s in res.statuses if s.kind == "AuthorizationPolicy"}
    assert "l4" not in by_name
    assert by_name["dangling"].status["conditions"][0]["status"] == "False"
    assert by_name["deny-admin"].status["conditions"][0]["status"] == "True"


def test_config_round_trips_through_the_waypoint_compiler() -> None:
    """What istiod builds, the proxy accepts (the contract between the two halves)."""
    from waypoint.config import compile_snapshot

    route = httproute("split", [{"backendRefs": [{"name": "reviews", "port": 80, "weight": 1}]}])
    cfg = build_configs(base(httproutes=[route])).configs["app/waypoint"]
    snap = compile_snapshot(pb.WaypointConfig.FromString(cfg.SerializeToString()))
    assert snap.find_service("10.79.0.10", 80) is not None
    assert snap.services[0].routes[0].backends


def test_workload_addressed_binding_for_workload_waypoints() -> None:
    inputs = base()
    inputs.gateways = [gateway(**{"istio.io/waypoint-for": "all"})]
    waypoint_pod = pod("waypoint-abc", "waypoint", "10.79.1.50")
    waypoint_pod["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"] = "waypoint"
    inputs.pods.append(waypoint_pod)
    cfg = build_configs(inputs).configs["app/waypoint"]
    workloads = {s.name: s for s in cfg.services if s.HasField("workload")}
    assert sorted(workloads) == ["r1", "r2", "r3", "t1"]  # every pod with an IP, but not the waypoint's own
    assert list(workloads["r1"].vips) == ["10.79.1.1"]
    assert workloads["r1"].workload.identity == "spiffe://cluster.local/ns/app/sa/reviews"
    service_only = base()
    assert not any(
        s.HasField("workload") for s in build_configs(service_only).configs["app/waypoint"].services
    )


def test_grpcroute_method_matches() -> None:
    route = {
        "metadata": {"name": "grpc", "namespace": "app"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "reviews"}],
            "rules": [
                {
                    "matches": [{"method": {"service": "echo.Echo", "method": "Call"}}],
                    "backendRefs": [{"name": "ratings", "port": 80}],
                },
                {
                    "matches": [{"method": {"service": "echo.Echo"}}],
                    "backendRefs": [{"name": "reviews", "port": 80}],
                },
            ],
        },
    }
    res = build_configs(base(grpcroutes=[route]))
    routes = res.configs["app/waypoint"].services[0].routes
    assert [r.name for r in routes] == ["GRPCRoute/app/grpc#0", "GRPCRoute/app/grpc#1"]
    assert routes[0].matches[0].path.exact == "/echo.Echo/Call"
    assert routes[0].matches[0].method == "POST"
    assert routes[1].matches[0].path.prefix == "/echo.Echo/"
    assert next(s for s in res.statuses if s.name == "grpc").kind == "GRPCRoute"


def test_custom_policy_gets_provider_from_mesh_config_and_a_cluster() -> None:
    from istiod.waypoint.meshconfig import ext_authz_providers

    mesh = {
        "data": {
            "mesh": "extensionProviders:\n- name: ext\n  envoyExtAuthzHttp:\n"
            "    service: ratings.app.svc.cluster.local\n    port: 80\n"
            "    includeRequestHeadersInCheck: [X-Allow]\n    timeout: 2s\n"
        }
    }
    providers = ext_authz_providers(mesh, "istio-system", "cluster.local")
    assert providers["ext"].timeout_ms == 2000
    assert list(providers["ext"].include_request_headers) == ["x-allow"]
    custom = {
        "metadata": {"name": "ext", "namespace": "app"},
        "spec": {
            "targetRefs": [{"kind": "Service", "name": "reviews"}],
            "action": "CUSTOM",
            "provider": {"name": "ext"},
            "rules": [{"to": [{"operation": {"paths": ["/ext*"]}}]}],
        },
    }
    res = build_configs(base(authorizationpolicies=[custom], ext_authz=providers))
    cfg = res.configs["app/waypoint"]
    assert cfg.services[0].policies[0].provider.service == "ratings.app.svc.cluster.local"
    assert "inbound-vip|80|http|ratings.app.svc.cluster.local" in {c.name for c in cfg.clusters}
    missing = build_configs(base(authorizationpolicies=[custom]))
    cond = next(s for s in missing.statuses if s.kind == "AuthorizationPolicy").status["conditions"][0]
    assert cond["status"] == "False"
    assert "extensionProviders" in cond["message"]


def test_tcproute_weighted_backends() -> None:
    route = {
        "metadata": {"name": "tcp", "namespace": "app"},
        "spec": {
            "parentRefs": [{"kind": "Service", "name": "reviews", "port": 80}],
            "rules": [
                {
                    "backendRefs": [
                        {"name": "reviews", "port": 80, "weight": 3},
                        {"name": "ratings", "port": 80},
                    ]
                }
            ],
        },
    }
    res = build_configs(base(tcproutes=[route]))
    (tcp,) = res.configs["app/waypoint"].services[0].tcp_routes
    assert tcp.port == 80
    assert [(b.cluster.split("|")[3], b.weight) for b in tcp.backends] == [
        ("reviews.app.svc.cluster.local", 3),
        ("ratings.app.svc.cluster.local", 1),
    ]
    assert next(s for s in res.statuses if s.name == "tcp").kind == "TCPRoute"


def test_xfcc_annotation() -> None:
    inputs = base()
    inputs.gateways[0]["metadata"]["annotations"] = {"ambient.istio.io/xfcc-include-client-identity": "true"}
    assert build_configs(inputs).configs["app/waypoint"].xfcc_client_identity
    assert not build_configs(base()).configs["app/waypoint"].xfcc_client_identity


def test_consumer_route_applies_to_its_namespace_first() -> None:
    producer = httproute("producer", [{"backendRefs": [{"name": "reviews", "port": 80}]}])
    consumer = {
        "metadata": {"name": "consumer", "namespace": "client-ns"},
        "spec": {
            "parentRefs": [{"kind": "Service", "name": "reviews", "namespace": "app"}],
            "rules": [{"backendRefs": [{"name": "ratings", "namespace": "app", "port": 80}]}],
        },
    }
    routes = build_configs(base(httproutes=[producer, consumer])).configs["app/waypoint"].services[0].routes
    assert [(r.name, r.source_namespace) for r in routes] == [
        ("HTTPRoute/client-ns/consumer#0", "client-ns"),
        ("HTTPRoute/app/producer#0", ""),
    ]


def test_destinationrule_outlier_detection() -> None:
    dr = {
        "metadata": {"name": "reviews", "namespace": "app"},
        "spec": {
            "host": "reviews",
            "trafficPolicy": {"outlierDetection": {"consecutive5xxErrors": 2, "baseEjectionTime": "5s"}},
        },
    }
    cfg = build_configs(base(destinationrules=[dr])).configs["app/waypoint"]
    od = {c.name: c for c in cfg.clusters}["inbound-vip|80|http|reviews.app.svc.cluster.local"].outlier
    assert (od.consecutive_5xx, od.base_ejection_ms, od.max_ejection_percent) == (2, 5000, 10)


def test_mirrors_from_httproute_fraction_and_vs_plural() -> None:
    route = httproute(
        "m",
        [
            {
                "filters": [
                    {
                        "type": "RequestMirror",
                        "requestMirror": {
                            "backendRef": {"name": "ratings", "port": 80},
                            "fraction": {"numerator": 1, "denominator": 4},
                        },
                    }
                ],
                "backendRefs": [{"name": "reviews", "port": 80}],
            }
        ],
    )
    vs = {
        "metadata": {"name": "v", "namespace": "app"},
        "spec": {
            "hosts": ["reviews"],
            "http": [
                {
                    "route": [{"destination": {"host": "reviews"}}],
                    "mirrors": [{"destination": {"host": "ratings"}, "percentage": {"value": 5}}],
                }
            ],
        },
    }
    routes = (
        build_configs(base(httproutes=[route], virtualservices=[vs]))
        .configs["app/waypoint"]
        .services[0]
        .routes
    )
    assert routes[0].mirrors[0].percent == 25.0
    assert routes[1].mirrors[0].percent == 5.0
    assert routes[1].mirrors[0].cluster.endswith("ratings.app.svc.cluster.local")


def test_destinationrule_tls_simple() -> None:
    dr = {
        "metadata": {"name": "reviews", "namespace": "app"},
        "spec": {"host": "reviews", "trafficPolicy": {"tls": {"mode": "SIMPLE", "sni": "reviews.example"}}},
    }
    cfg = build_configs(base(destinationrules=[dr])).configs["app/waypoint"]
    cluster = {c.name: c for c in cfg.clusters}["inbound-vip|80|http|reviews.app.svc.cluster.local"]
    assert cluster.HasField("tls")
    assert cluster.tls.sni == "reviews.example"
    dr["spec"]["trafficPolicy"]["tls"]["mode"] = "ISTIO_MUTUAL"
    cfg = build_configs(base(destinationrules=[dr])).configs["app/waypoint"]
    assert not any(c.HasField("tls") for c in cfg.clusters)


def test_destinationrule_port_level_settings() -> None:
    dr = {
        "metadata": {"name": "reviews", "namespace": "app"},
        "spec": {
            "host": "reviews",
            "trafficPolicy": {
                "loadBalancer": {"simple": "RANDOM"},
                "portLevelSettings": [{"port": {"number": 80}, "loadBalancer": {"simple": "ROUND_ROBIN"}}],
            },
        },
    }
    cfg = build_configs(base(destinationrules=[dr])).configs["app/waypoint"]
    assert {c.name: c for c in cfg.clusters}[
        "inbound-vip|80|http|reviews.app.svc.cluster.local"
    ].lb == pb.ROUND_ROBIN


def test_destinationrule_connection_pool() -> None:
    dr = {
        "metadata": {"name": "reviews", "namespace": "app"},
        "spec": {
            "host": "reviews",
            "trafficPolicy": {
                "connectionPool": {
                    "tcp": {"maxConnections": 1},
                    "http": {"http1MaxPendingRequests": 2, "maxRequestsPerConnection": 3},
                }
            },
        },
    }
    cfg = build_configs(base(destinationrules=[dr])).configs["app/waypoint"]
    c = {c.name: c for c in cfg.clusters}["inbound-vip|80|http|reviews.app.svc.cluster.local"]
    assert (c.max_connections, c.max_pending_requests, c.max_requests_per_connection) == (1, 2, 3)


def test_not_service_accounts_and_unknown_condition_keys() -> None:
    from istiod.waypoint.policy import convert_authorization

    allow = {
        "metadata": {"name": "not-evil", "namespace": "app"},
        "spec": {
            "rules": [
                {
                    "from": [{"source": {"notServiceAccounts": ["evil", "other/bad"]}}],
                    "when": [{"key": "request.headers[x-a]", "values": ["1"]}],
                }
            ]
        },
    }
    policy, problems = convert_authorization(allow, "cluster.local", {})
    assert policy is not None
    assert problems == []
    assert list(policy.rules[0].sources[0].not_principals) == [
        "cluster.local/ns/app/sa/evil",
        "cluster.local/ns/other/sa/bad",
    ]
    deny = {
        "metadata": {"name": "odd", "namespace": "app"},
        "spec": {"action": "DENY", "rules": [{"when": [{"key": "request.bogus", "values": ["x"]}]}]},
    }
    policy, problems = convert_authorization(deny, "cluster.local", {})
    assert policy is not None
    assert len(problems) == 1
    assert "request.bogus" in problems[0]


def test_cross_namespace_target_refs_are_ignored_with_status() -> None:
    gw_ref = {"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint", "namespace": "app"}
    everywhere = {"kind": "GatewayClass", "name": "istio-waypoint", "namespace": "istio-system"}
    deny = {
        "metadata": {"name": "from-elsewhere", "namespace": "intruder"},
        "spec": {
            "targetRefs": [{"kind": "Service", "name": "reviews", "namespace": "app"}, gw_ref, everywhere],
            "action": "DENY",
            "rules": [{}],
        },
    }
    ra = {
        "metadata": {"name": "own-issuer", "namespace": "intruder"},
        "spec": {
            "targetRefs": [gw_ref, everywhere],
            "jwtRules": [{"issuer": "mine", "jwks": '{"keys": []}'}],
        },
    }
    res = build_configs(base(authorizationpolicies=[deny], requestauthentications=[ra]))
    cfg = res.configs["app/waypoint"]
    assert list(cfg.policies) == []
    assert [list(s.policies) for s in cfg.services] == [[] for _ in cfg.services]
    assert list(cfg.jwt.providers) == []
    assert all(list(s.jwt.providers) == [] for s in cfg.services)
    for kind in ("AuthorizationPolicy", "RequestAuthentication"):
        cond = next(s for s in res.statuses if s.kind == kind).status["conditions"][0]
        assert cond["status"] == "False"
        assert "cross-namespace" in cond["message"]
