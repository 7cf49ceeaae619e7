"""meshkit.metrics: registry isolation, exposition format and the aiohttp handler."""

from __future__ import annotations

import prometheus_client
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from meshkit.metrics import (
    CONTENT_TYPE,
    BuildMetrics,
    add_metrics_routes,
    metrics_handler,
    new_registry,
    render,
)
from prometheus_client import CollectorRegistry, Counter, Histogram


class DemoMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.opened = Counter(
            "istio_tcp_connections_opened_total", "Opened.", ["reporter"], registry=registry
        )
        self.dns = Histogram(
            "istio_dns_upstream_request_duration_seconds",
            "DNS upstream latency.",
            buckets=(0.0005, 0.001, 0.01, 0.1, 1, 5),
            registry=registry,
        )


def test_registries_are_independent() -> None:
    a, b = new_registry(), new_registry()
    DemoMetrics(a).opened.labels(reporter="source").inc(3)
    DemoMetrics(b)  # same names in another registry: no duplicate-timeseries error
    assert a.get_sample_value("istio_tcp_connections_opened_total", {"reporter": "source"}) == 3
    assert b.get_sample_value("istio_tcp_connections_opened_total", {"reporter": "source"}) is None


def test_same_name_twice_in_one_registry_is_an_error() -> None:
    registry = new_registry()
    DemoMetrics(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        DemoMetrics(registry)


def test_render_uses_istio_names_without_created_series() -> None:
    registry = new_registry()
    metrics = DemoMetrics(registry)
    metrics.opened.labels(reporter="destination").inc()
    metrics.dns.observe(0.002)
    body, content_type = render(registry)
    text = body.decode()
    assert content_type == CONTENT_TYPE
    assert content_type.startswith("text/plain; version=0.0.4")
    assert 'istio_tcp_connections_opened_total{reporter="destination"} 1.0' in text
    assert 'istio_dns_upstream_request_duration_seconds_bucket{le="0.01"} 1.0' in text
    assert "_created" not in text
    assert "process_" not in text  # no default collectors
    assert prometheus_client.REGISTRY is not registry


def test_build_metric() -> None:
    registry = new_registry()
    BuildMetrics(registry, "ztunnel", "1.28.0")
    assert registry.get_sample_value("istio_build", {"component": "ztunnel", "tag": "1.28.0"}) == 1


async def test_handler_serves_both_paths() -> None:
    registry = new_registry()
    DemoMetrics(registry).opened.labels(reporter="source").inc()
    app = web.Application()
    add_metrics_routes(app, registry)
    async with TestClient(TestServer(app)) as client:
        for path in ("/metrics", "/stats/prometheus"):
            resp = await client.get(path)
            assert resp.status == 200
            assert resp.headers["Content-Type"] == CONTENT_TYPE
            assert 'istio_tcp_connections_opened_total{reporter="source"} 1.0' in await resp.text()


async def test_handler_reflects_live_values() -> None:
    registry = new_registry()
    metrics = DemoMetrics(registry)
    app = web.Application()
    app.router.add_get("/metrics", metrics_handler(registry))
    async with TestClient(TestServer(app)) as client:
        metrics.opened.labels(reporter="source").inc(41)
        metrics.opened.labels(reporter="source").inc()
        text = await (await client.get("/metrics")).text()
    assert 'istio_tcp_connections_opened_total{reporter="source"} 42.0' in text
