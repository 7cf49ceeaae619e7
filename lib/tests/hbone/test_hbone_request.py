"""The CONNECT request: client headers (behaviour.md §2.6) and the server's authority parse (§2.7)."""

from __future__ import annotations

import re

import pytest
from meshkit.hbone.request import (
    Authority,
    BadRequest,
    SourceMetadata,
    baggage,
    connect_headers,
    forwarded,
    new_traceparent,
    parse_authority,
    parse_baggage,
    parse_request,
)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("10.244.1.10:9080", Authority("10.244.1.10", 9080, is_ip=True)),
        ("[fd00::1]:9080", Authority("fd00::1", 9080, is_ip=True)),
        ("[::1]:80", Authority("::1", 80, is_ip=True)),
        ("reviews.ns.svc.cluster.local:9080", Authority("reviews.ns.svc.cluster.local", 9080, is_ip=False)),
        ("Reviews.NS:1", Authority("reviews.ns", 1, is_ip=False)),
        ("svc:65535", Authority("svc", 65535, is_ip=False)),
    ],
)
def test_authority_forms_upstream_sends(text: str, want: Authority) -> None:
    assert parse_authority(text) == want
    assert str(parse_authority(text)) == text.lower()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "10.0.0.1",  # no port
        "10.0.0.1:",
        "10.0.0.1:0",
        "10.0.0.1:65536",
        "10.0.0.1:+80",
        "10.0.0.1:\uff18\uff10",  # fullwidth "80": str.isdigit() says yes, int() reads 80
        "10.0.0.1:\u0668\u0660",  # Arabic-Indic "80", likewise
        "::1:80",  # IPv6 without brackets
        "[::1]",
        "[::1]80",
        "[10.0.0.1]:80",  # brackets are for IPv6 only
        "[fe80::1%eth0]:80",  # zones never name a mesh destination
        "[not-an-ip]:80",
        "a b:80",
        "svc\n:80",
        "-svc:80",
        "svc..ns:80",
        "a" * 600 + ":80",
    ],
)
def test_bad_authorities_are_400(text: str) -> None:
    with pytest.raises(BadRequest):
        parse_authority(text)


def test_parse_request_needs_connect_and_an_authority() -> None:
    request = parse_request(3, [(":method", "CONNECT"), (":authority", "10.0.0.1:80"), ("baggage", "a=b")])
    assert request.stream_id == 3
    assert request.headers == (("baggage", "a=b"),)  # pseudo-headers are not handed on
    with pytest.raises(BadRequest, match="not CONNECT"):
        parse_request(1, [(":method", "GET"), (":authority", "10.0.0.1:80")])
    with pytest.raises(BadRequest, match="missing"):
        parse_request(1, [(":method", "CONNECT")])


def test_request_reads_forwarded_host_and_network() -> None:
    request = parse_request(
        1,
        [
            (":method", "CONNECT"),
            (":authority", "10.0.0.1:80"),
            ("forwarded", 'for="10.244.1.12:60059";host=productpage.default.svc.cluster.local'),
            ("x-forwarded-network", "net2"),
        ],
    )
    assert request.forwarded_host == "productpage.default.svc.cluster.local"
    assert request.forwarded_network == "net2"
    assert parse_request(1, [(":method", "CONNECT"), (":authority", "1.1.1.1:1")]).forwarded_host is None


def test_baggage_in_upstream_order_without_empty_values() -> None:
    meta = SourceMetadata(
        cluster_id="Kubernetes",
        namespace="default",
        workload_type="POD",
        workload_name="productpage-v1",
        canonical_name="productpage",
        canonical_revision="v1",
        zone="z1",
    )
    assert baggage(meta) == (
        "k8s.cluster.name=Kubernetes,k8s.namespace.name=default,k8s.pod.name=productpage-v1,"
        "service.name=productpage,service.version=v1,cloud.availability_zone=z1"
    )
    assert baggage(SourceMetadata()) == ""


def test_baggage_parses_back() -> None:
    meta = SourceMetadata("c1", "shop", "deployment", "web", "web-svc", "v2", "r1", "z1")
    assert parse_baggage(baggage(meta)) == meta
    # members trimmed, empty values skipped, unknown members ignored, no workload member: no type
    assert parse_baggage(" k8s.namespace.name = shop , service.name=, foo=bar, service.version=v1") == (
        SourceMetadata(namespace="shop", workload_type="", canonical_revision="v1")
    )
    assert parse_baggage("k8s.cluster.name=c1,k8s.namespace.name=ns") == SourceMetadata(
        cluster_id="c1", namespace="ns", workload_type=""
    )
    assert parse_baggage("") is None
    assert parse_baggage(None) is None


def test_forwarded_quotes_the_client_address() -> None:
    assert forwarded(("10.244.1.12", 60059)) == 'for="10.244.1.12:60059"'
    assert (
        forwarded(("fd00::12", 1), "a.b.svc.cluster.local") == 'for="[fd00::12]:1";host=a.b.svc.cluster.local'
    )


def test_connect_headers_always_carry_baggage_forwarded_traceparent() -> None:
    headers = connect_headers(SourceMetadata(namespace="ns"), ("10.0.0.2", 5))
    assert [name for name, _ in headers] == ["baggage", "forwarded", "traceparent"]
    inner = connect_headers(SourceMetadata(), ("10.0.0.2", 5), forwarded_network="net1")
    assert inner[-1] == ("x-forwarded-network", "net1")  # only the inner CONNECT of double HBONE


def test_traceparent_is_random_w3c() -> None:
    first, second = new_traceparent(), new_traceparent()
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-00", first)
    assert first != second
