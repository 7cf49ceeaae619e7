"""The app in-process without in-pod mode: admin, readiness and metrics endpoints, static config."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import aiohttp
from meshkit.identity.spiffe import Identity
from meshkit.settings import load
from ztunnel.app import build
from ztunnel.settings import Settings


class NoCa:
    async def fetch(self, identity: Identity) -> object:
        raise ConnectionError("no CA in this test")


CONFIG = {
    "workloads": [
        {"uid": "Kubernetes//Pod/default/b", "name": "b", "namespace": "default", "addresses": ["Ck0BAQ=="]},
        {"uid": "Kubernetes//Pod/default/a", "name": "a", "namespace": "default", "addresses": ["Ck0BAg=="],
         "tunnelProtocol": "HBONE", "services": {"default/s.default.svc.cluster.local": {"ports": []}}},
    ],
    "services": [{"name": "s", "namespace": "default", "hostname": "s.default.svc.cluster.local",
                  "addresses": [{"address": "Ck3IAQ=="}],
                  "ports": [{"servicePort": 80, "targetPort": 8080}]}],
    "policies": [{"name": "deny", "namespace": "default", "scope": "NAMESPACE", "action": "DENY",
                  "rules": [{"clauses": [{"matches": [{"destinationPorts": [9]}]}]}]}],
}  # fmt: skip


async def get(url: str, method: str = "GET") -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.request(method, url) as resp:
        return resp.status, await resp.text()


async def test_admin_readiness_metrics(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(CONFIG))
    env = {
        "LOCAL_XDS_PATH": str(path),
        "INPOD_ENABLED": "false",
        "ADMIN_ADDR": "127.0.0.1:0",
        "STATS_ADDR": "127.0.0.1:0",
        "READINESS_ADDR": "127.0.0.1:0",
    }
    app = await build(load(Settings, env), fetcher=NoCa())  # type: ignore[arg-type]
    try:
        status, body = await get(app.url("readiness") + "/healthz/ready")
        assert (status, body) == (200, "ready\n")
        app.readiness.clear("xds")
        status, body = await get(app.url("readiness") + "/healthz/ready")
        assert status == 503
        assert "pending: xds" in body

        status, body = await get(app.url("admin") + "/config_dump")
        assert status == 200
        dump = json.loads(body)
        assert [w["uid"] for w in dump["workloads"]] == [
            "Kubernetes//Pod/default/a",
            "Kubernetes//Pod/default/b",
        ]
        assert dump["workloads"][0]["workloadIps"] == ["10.77.1.2"]
        assert dump["services"][0]["vips"] == ["/10.77.200.1"]
        assert dump["services"][0]["endpoints"]["Kubernetes//Pod/default/a"]["workloadUid"]
        assert dump["policies"][0]["action"] == "DENY"
        assert dump["staticConfig"] == CONFIG
        assert body == json.dumps(dump, indent=2, sort_keys=True)  # sorted JSON

        status, _ = await get(app.url("admin") + "/logging?level=info,proxy=debug", "POST")
        assert status == 200
        assert logging.getLogger("proxy").level == logging.DEBUG
        status, _ = await get(app.url("admin") + "/logging?level=bogus", "POST")
        assert status == 400
        status, _ = await get(app.url("admin") + "/nope")
        assert status == 404

        status, body = await get(app.url("stats") + "/metrics")
        assert status == 200
        assert 'istio_build{component="ztunnel"' in body
        assert "_created" not in body
    finally:
        logging.getLogger("proxy").setLevel(logging.NOTSET)
        await app.close()
    _ = asyncio


def test_termination_deadline_rules() -> None:
    from ztunnel.settings import termination_deadline

    def deadline(env: dict[str, str]) -> float:
        return termination_deadline(load(Settings, env))

    assert deadline({}) == 5.0
    assert deadline({"CONNECTION_TERMINATION_DEADLINE": "7s"}) == 7.0
    assert deadline({"TERMINATION_GRACE_PERIOD_SECONDS": "30"}) == 25.0
    assert deadline({"TERMINATION_GRACE_PERIOD_SECONDS": "8"}) == 7.0
    assert deadline({"TERMINATION_GRACE_PERIOD_SECONDS": "1"}) == 1.0
