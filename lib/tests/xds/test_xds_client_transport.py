"""XdsClient transport choice: TLS from the address scheme (a missing root is an error, never plaintext), and
the bearer token only over TLS unless a test opts in."""

from __future__ import annotations

import pytest
from meshkit.xds.client import XdsClient, XdsClientConfig
from meshkit.xds.client_core import ClientCore
from meshproto.envoy.config.core.v3 import base_pb2

ROOT = b"-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n"


class NullUpdater:
    def apply(self, type_url: str, upserts: object, removes: object) -> list[object]:
        return []


def make(config: XdsClientConfig) -> XdsClient:
    return XdsClient(
        config, ClientCore(base_pb2.Node(id="ztunnel~1.1.1.1~a.b~b.svc.cluster.local"), NullUpdater())
    )  # type: ignore[arg-type]


@pytest.mark.parametrize("address", ["istiod:15012", "https://istiod:15012"])
def test_tls_address_without_root_is_an_error(address: str) -> None:
    with pytest.raises(ValueError, match="no root certificate"):
        make(XdsClientConfig(address=address, token="tok"))


def test_scheme_picks_transport_and_target() -> None:
    assert XdsClientConfig("istiod:15012").tls is True
    assert XdsClientConfig("https://istiod:15012/").target == "istiod:15012"
    plain = XdsClientConfig("http://127.0.0.1:15010")
    assert (plain.tls, plain.target) == (False, "127.0.0.1:15010")
    with pytest.raises(ValueError, match="scheme"):
        _ = XdsClientConfig("tcp://istiod:15012").tls


def test_token_only_over_tls_unless_opted_in() -> None:
    bearer = ("authorization", "Bearer tok")
    assert bearer in make(XdsClientConfig("istiod:15012", ROOT, token="tok")).metadata()
    assert bearer not in make(XdsClientConfig("http://127.0.0.1:15010", token="tok")).metadata()
    opted = XdsClientConfig("http://127.0.0.1:15010", token="tok", plaintext_token=True)
    assert bearer in make(opted).metadata()
