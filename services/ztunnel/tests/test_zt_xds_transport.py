"""ztunnel's xDS client picks TLS from XDS_ADDRESS's scheme: an https address without XDS_ROOT_CA is a
start-up error (it used to fall back to plaintext with the token), http:// is plaintext without the token."""

from __future__ import annotations

import pytest
from meshkit.settings import load
from meshkit.xds.client_core import ClientCore
from ztunnel.grpclite import ConfigError
from ztunnel.settings import Settings
from ztunnel.state.state import State
from ztunnel.xds import LiteXdsClient, StateUpdater, node, xds_source


def settings(**env: str) -> Settings:
    return load(Settings, {"AUTH_TOKEN": "literal-token", **env})


@pytest.mark.parametrize("grpc_impl", ["lite", "grpcio"])
@pytest.mark.parametrize("address", ["istiod.istio-system.svc:15012", "https://istiod:15012"])
def test_tls_address_without_root_is_refused_at_start_up(address: str, grpc_impl: str) -> None:
    s = settings(XDS_ADDRESS=address, XDS_ROOT_CA="", ZTUNNEL_GRPC=grpc_impl)
    with pytest.raises(ConfigError, match="XDS_ROOT_CA is empty"):
        xds_source(s)


def client(s: Settings) -> LiteXdsClient:
    return LiteXdsClient(s, ClientCore(node(s), StateUpdater(State(s.network))))


def test_token_only_over_tls() -> None:
    plain = client(settings(XDS_ADDRESS="http://127.0.0.1:15010", XDS_ROOT_CA=""))
    assert plain.tls is False
    assert plain._metadata() == []
    secure = client(settings(XDS_ADDRESS="127.0.0.1:15012", XDS_ROOT_CA="SYSTEM"))
    assert secure.tls is True
    assert ("authorization", "Bearer literal-token") in secure._metadata()
