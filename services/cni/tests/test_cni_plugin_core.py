"""The plugin's sans-IO core and its ``run`` function against a real agent socket (no network changes)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from istio_cni.enrolment import DEFAULT_SELECTORS, should_enrol
from istio_cni.events import AddHandler, AddOutcome, PluginAddEvent, PluginEventServer
from istio_cni.plugin.__main__ import run
from istio_cni.plugin.core import CniError, add_event, parse_request, render_error, render_result

PREV = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}], "ips": [{"address": "10.78.1.5/24"}]}


def env(command: str = "ADD", **extra: str) -> dict[str, str]:
    base = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "c1",
        "CNI_NETNS": "/var/run/netns/cni-x",
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web-1;K8S_POD_UID=u-1",
    }
    base.update(extra)
    return base


def conf(**extra: Any) -> bytes:
    body = {"cniVersion": "1.0.0", "name": "k8s", "type": "istio-cni", "prevResult": PREV}
    body.update(extra)
    return json.dumps(body).encode()


def test_version() -> None:
    out = json.loads(render_result(parse_request({"CNI_COMMAND": "VERSION"}, b'{"cniVersion":"1.0.0"}')))
    assert "1.0.0" in out["supportedVersions"]


def test_add_passes_prev_result_through() -> None:
    req = parse_request(env(), conf(ambient_enabled=False))
    assert json.loads(render_result(req)) == PREV


def test_add_event_carries_pod_and_ips() -> None:
    event = add_event(parse_request(env(), conf(exclude_namespaces=["kube-system"])))
    assert event is not None
    assert (event["pod_namespace"], event["pod_name"], event["pod_uid"]) == ("demo", "web-1", "u-1")
    assert event["ips"] == ["10.78.1.5"]


def test_excluded_namespace_has_no_event() -> None:
    assert add_event(parse_request(env(), conf(exclude_namespaces=["demo"]))) is None


@pytest.mark.parametrize(
    ("environ", "stdin", "code"),
    [
        ({"CNI_COMMAND": "BOGUS"}, b"{}", 4),
        (env(), b"not json", 6),
        (env(), json.dumps({"cniVersion": "9.9.9"}).encode(), 1),
        (env(CNI_NETNS=""), conf(), 4),
        (env(CNI_ARGS="garbage"), conf(), 4),
    ],
)
def test_errors_carry_spec_codes(environ: dict[str, str], stdin: bytes, code: int) -> None:
    with pytest.raises(CniError) as info:
        parse_request(environ, stdin)
    assert info.value.code == code
    body = json.loads(render_error(info.value))
    assert body["code"] == code
    assert body["msg"]


def test_del_and_check_print_nothing() -> None:
    assert render_result(parse_request(env("DEL", CNI_NETNS=""), conf())) == b""
    assert render_result(parse_request(env("CHECK"), conf())) == b""


def test_enrolment_selectors() -> None:
    ambient_ns = {"metadata": {"labels": {"istio.io/dataplane-mode": "ambient"}}}
    plain_ns: dict[str, Any] = {"metadata": {}}
    pod: dict[str, Any] = {"metadata": {"namespace": "demo"}, "spec": {}}
    opted_out = {"metadata": {"namespace": "demo", "labels": {"istio.io/dataplane-mode": "none"}}}
    opted_in = {"metadata": {"namespace": "demo", "labels": {"istio.io/dataplane-mode": "ambient"}}}
    sidecar = {"metadata": {"namespace": "demo", "annotations": {"sidecar.istio.io/status": "{}"}}}
    host = {"metadata": {"namespace": "demo"}, "spec": {"hostNetwork": True}}
    assert should_enrol(pod, ambient_ns, DEFAULT_SELECTORS, [])
    assert not should_enrol(pod, plain_ns, DEFAULT_SELECTORS, [])
    assert not should_enrol(opted_out, ambient_ns, DEFAULT_SELECTORS, [])
    assert should_enrol(opted_in, plain_ns, DEFAULT_SELECTORS, [])
    assert not should_enrol(opted_in, plain_ns, DEFAULT_SELECTORS, ["demo"])
    assert not should_enrol(sidecar, ambient_ns, DEFAULT_SELECTORS, [])
    assert not should_enrol(host, ambient_ns, DEFAULT_SELECTORS, [])


async def test_run_fails_closed_when_agent_is_down(tmp_path: Any) -> None:
    out, code = await asyncio.to_thread(run, env(), conf(cni_agent_run_dir=str(tmp_path)))
    assert code == 1
    body = json.loads(out)
    assert body["code"] == 11
    assert "node agent" in body["msg"]


async def run_against_agent(tmp_path: Any, handler: AddHandler) -> tuple[bytes, int]:
    """Run the plugin (ADD) with a node agent socket served by ``handler``."""
    server = PluginEventServer(str(tmp_path / "pluginevent.sock"), handler)
    await server.start()
    try:
        return await asyncio.to_thread(run, env(), conf(cni_agent_run_dir=str(tmp_path)))
    finally:
        await server.close()


async def test_run_posts_to_agent_and_passes_through(tmp_path: Any) -> None:
    seen: list[PluginAddEvent] = []

    async def handler(event: PluginAddEvent) -> AddOutcome:
        seen.append(event)
        return AddOutcome(True)

    out, code = await run_against_agent(tmp_path, handler)
    assert code == 0
    assert json.loads(out) == PREV
    assert [(e.pod_namespace, e.pod_name, e.ips) for e in seen] == [("demo", "web-1", ("10.78.1.5",))]


async def test_run_reports_agent_refusal(tmp_path: Any) -> None:
    async def handler(_event: PluginAddEvent) -> AddOutcome:
        raise RuntimeError("iptables-restore failed")

    out, code = await run_against_agent(tmp_path, handler)
    assert code == 1
    assert "iptables-restore failed" in json.loads(out)["details"]


async def test_run_fails_closed_with_a_cni_error_on_a_garbled_answer(tmp_path: Any) -> None:
    """Whatever the agent says, the runtime gets a CNI error object on stdout, never a traceback."""
    from aiohttp import web

    async def garbage(_request: web.Request) -> web.Response:
        return web.Response(text="<html>oops</html>")

    app = web.Application()
    app.router.add_post("/cmdadd", garbage)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.UnixSite(runner, str(tmp_path / "pluginevent.sock")).start()
    try:
        out, code = await asyncio.to_thread(run, env(), conf(cni_agent_run_dir=str(tmp_path)))
    finally:
        await runner.cleanup()
    assert code == 1
    error = json.loads(out)
    assert error["code"] == 11
    assert "something other than JSON" in error["details"]


async def test_run_turns_unexpected_errors_into_a_cni_error(tmp_path: Any) -> None:
    """A malformed enablement selector in our conflist entry fails the ADD with a CNI error object (so the
    runtime logs it and retries), not a traceback. The plugin asks a local stand-in API server over HTTP."""
    from aiohttp import web

    async def get(request: web.Request) -> web.Response:
        ns, name = request.match_info["ns"], request.match_info.get("name")
        body = {"metadata": {"name": name or ns, "namespace": ns}} if name else {"metadata": {"name": ns}}
        return web.json_response(body)

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/{ns}/pods/{name}", get)
    app.router.add_get("/api/v1/namespaces/{ns}", get)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {"clusters": [{"cluster": {"server": f"http://127.0.0.1:{port}"}}], "users": [{"user": {}}]}
        )
    )
    bad = [{"podSelector": {"matchExpressions": [{"key": "a", "operator": "Sometimes"}]}}]
    try:
        out, code = await asyncio.to_thread(
            run, env(), conf(kubeconfig=str(kubeconfig), enablement_selectors=bad)
        )
    finally:
        await runner.cleanup()
    assert code == 1
    error = json.loads(out)
    assert error["code"] == 100
    assert "unknown label selector operator 'Sometimes'" in error["msg"]
