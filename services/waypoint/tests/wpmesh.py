"""A one-node mesh in network namespaces for the waypoint: real ztunnel, real in-pod iptables, real waypoint.

Topology (namespaces ``wp-…``, addresses in 10.79.0.0/16, nothing in the host netns)::

    node netns: br0 10.79.1.1/24
      ├─ client   10.79.1.10  captured   (the app that sends HTTP/1.1)
      ├─ v1       10.79.1.11  captured   HTTP echo app on :8080   ┐
      ├─ v2       10.79.1.12  captured   HTTP echo app on :8080   ├ Service reviews, VIP 10.79.0.10:80 → 8080
      ├─ bad      10.79.1.13  captured   answers 503              ┘   bound to the waypoint
      └─ waypoint 10.79.1.20  not captured (dataplane-mode none): our waypoint app, HBONE on :15008

One ztunnel (in this process) serves every captured pod, reached only through the netns fds handed over
ZDS by a fake CNI agent; the waypoint runs in this process too with its sockets inside its pod netns.
Path: client app → (client's ztunnel outbound, HBONE) → waypoint → (HBONE) → server pod's ztunnel inbound
→ app. The in-pod rules are behaviour.md §3.3 (test data).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshkit.hbone.pool import PoolKey
from meshkit.hbone.testing import TestCA
from meshkit.identity.certs import WorkloadCertificate
from meshkit.identity.spiffe import Identity
from meshkit.netns import TempNetns, temp_netns
from meshkit.settings import load
from meshkit.sockets import NetnsSocketFactory, open_tcp
from meshkit.zds import WorkloadInfo, ZdsServer, ZdsServerConnection
from waypoint.http1 import (
    Request,
    RequestParser,
    Response,
    ResponseParser,
    serialize_request,
    serialize_response,
)

PREFIX = "wp-"
RULES = (Path(__file__).parent / "testdata" / "inpod-rules.txt").read_text()
VIP = "10.79.0.10"
HOST = "reviews.default.svc.cluster.local"


def _run(argv: list[str], stdin: str | None = None) -> None:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")


@dataclass
class Pod:
    name: str
    sa: str
    ip: str
    ns: TempNetns
    captured: bool
    uid: str = field(default_factory=lambda: secrets.token_hex(8))

    @property
    def path(self) -> str:
        return str(self.ns.path)


class CaFetcher:
    def __init__(self, ca: TestCA) -> None:
        self.ca = ca

    async def fetch(self, identity: Identity) -> WorkloadCertificate:
        return self.ca.issue(identity)


class HttpApp:
    """An HTTP/1.1 echo app in a pod netns: answers ``status`` and echoes a few request headers."""

    def __init__(self, name: str, status: int = 200) -> None:
        self.name = name
        self.status = status
        self.requests: list[Request] = []
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = RequestParser()
        try:
            while data := await reader.read(65536):
                for req in parser.feed(data):
                    self.requests.append(req)
                    headers = [("x-backend", self.name)]
                    for h in ("traceparent", "x-request-id", "x-added"):
                        if (v := req.header(h)) is not None:
                            headers.append((f"echo-{h}", v))
                    body = f"backend={self.name} path={req.target}\n".encode()
                    writer.write(serialize_response(Response(self.status, headers, body)))
                await writer.drain()
        except (OSError, ValueError):
            pass
        finally:
            writer.close()


class OneNodeMesh:
    def __init__(self, tmp: str) -> None:
        self.tmp = tmp
        self.stack = contextlib.ExitStack()
        self.ca = TestCA()
        self.fetcher = CaFetcher(self.ca)
        self.pods: dict[str, Pod] = {}
        self.apps: dict[str, HttpApp] = {}
        self.factories: list[NetnsSocketFactory] = []
        self.closers: list[Callable[[], Any]] = []
        self.node: TempNetns | None = None

    # topology ---------------------------------------------------------------------------------------------
    def build_topology(self) -> None:
        node = self.node = self.stack.enter_context(temp_netns(PREFIX))
        node.ip("link", "add", "br0", "type", "bridge")
        node.ip("addr", "add", "10.79.1.1/24", "dev", "br0")
        node.ip("link", "set", "br0", "up")
        for name, sa, last, captured in (
            ("client", "sleep", 10, True),
            ("v1", "reviews", 11, True),
            ("v2", "reviews", 12, True),
            ("bad", "reviews", 13, True),
            ("waypoint", "waypoint", 20, False),
        ):
            self.pods[name] = self._pod(name, sa, f"10.79.1.{last}", captured)

    def _pod(self, name: str, sa: str, ip: str, captured: bool) -> Pod:
        assert self.node is not None
        ns = self.stack.enter_context(temp_netns(PREFIX))
        host_if = f"wpv{ip.rsplit('.', 1)[1]}"
        ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", host_if, "netns", self.node.name)
        ns.ip("addr", "add", f"{ip}/24", "dev", "eth0")
        ns.ip("link", "set", "eth0", "up")
        ns.ip("link", "set", "lo", "up")
        ns.ip("route", "add", "default", "via", "10.79.1.1")
        self.node.ip("link", "set", host_if, "master", "br0")
        self.node.ip("link", "set", host_if, "up")
        if captured:
            _run(["ip", "netns", "exec", ns.name, "iptables-restore", "--noflush"], RULES)
            ns.ip("rule", "add", "fwmark", "0x111/0xfff", "pref", "32764", "lookup", "100")
            ns.ip("route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100")
        return Pod(name, sa, ip, ns, captured)

    def factory(self, pod: Pod) -> NetnsSocketFactory:
        f = NetnsSocketFactory(pod.path, mark=None, name=f"wp-test-{pod.name}")
        self.factories.append(f)
        return f

    # ztunnel ----------------------------------------------------------------------------------------------
    async def start_ztunnel(self) -> Any:
        from ztunnel.app import build as build_ztunnel
        from ztunnel.settings import Settings as ZtSettings
        from ztunnel.state.records import GatewayAddress, Service, Workload
        from ztunnel.state.state import State

        uds = os.path.join(self.tmp, "zds.sock")
        resolv = os.path.join(self.tmp, "resolv.conf")
        Path(resolv).write_text("")  # noqa: ASYNC240 - set-up, once
        svc_key = f"default/{HOST}"
        workloads = [
            Workload(
                uid=f"Kubernetes//Pod/default/{p.name}",
                name=p.name,
                namespace="default",
                addresses=(p.ip,),
                tunnel_protocol="HBONE" if p.captured else "NONE",
                service_account=p.sa,
                node="node1",
                workload_name=f"reviews-{p.name}" if p.sa == "reviews" else p.name,
                canonical_name=p.name,
                canonical_revision="v1",
                services={svc_key: {80: 8080}} if p.sa == "reviews" else {},
            )
            for p in self.pods.values()
        ]
        service = Service(
            "reviews",
            "default",
            HOST,
            vips=(("", VIP),),
            ports={80: 8080},
            waypoint=GatewayAddress(None, ("", self.pods["waypoint"].ip)),
        )

        async def source(state: State, synced: Callable[[], None]) -> None:
            for wl in workloads:
                state.insert_workload(wl)
            state.insert_service(service)
            synced()

        async def agent(conn: ZdsServerConnection) -> None:
            for pod in self.pods.values():
                if pod.captured:
                    fd = os.open(pod.path, os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        ack = await conn.add(pod.uid, WorkloadInfo(pod.name, "default", pod.sa), fd)
                    finally:
                        os.close(fd)
                    assert ack.ok, ack.error
            await conn.snapshot_sent()
            while await conn.probe():  # noqa: ASYNC110 - the agent's keepalive period
                await asyncio.sleep(0.1)

        zds = ZdsServer(uds, agent, accepts_per_s=100)
        await zds.start()
        self.closers.append(zds.close)
        env = {
            "NODE_NAME": "node1",
            "INPOD_UDS": uds,
            "ADMIN_ADDR": "127.0.0.1:0",
            "STATS_ADDR": "127.0.0.1:0",
            "READINESS_ADDR": "127.0.0.1:0",
            "DNS_RESOLV_CONF": resolv,
            "CONNECTION_TERMINATION_DEADLINE": "2s",
        }
        app = await build_ztunnel(load(ZtSettings, env), fetcher=self.fetcher, config_source=source)
        self.closers.append(app.close)
        await asyncio.wait_for(app.readiness.wait_ready(), 20)
        return app

    # apps -------------------------------------------------------------------------------------------------
    async def start_app(self, name: str, status: int = 200) -> HttpApp:
        app = HttpApp(name, status)
        sock = self.factory(self.pods[name]).listen_tcp("0.0.0.0", 8080)
        app.server = await asyncio.start_server(app.handle, sock=sock)
        self.apps[name] = app

        async def close() -> None:
            assert app.server is not None
            app.server.close()
            await app.server.wait_closed()

        self.closers.append(close)
        return app

    def waypoint_connector(self) -> Callable[[PoolKey], Any]:
        factory = self.factory(self.pods["waypoint"])

        async def connect(key: PoolKey) -> Any:
            return await open_tcp(factory, key.dst[0], key.dst[1])

        return connect

    # client -----------------------------------------------------------------------------------------------
    async def connect(self) -> HttpConn:
        sock = await open_tcp(self.factory(self.pods["client"]), VIP, 80)
        reader, writer = await asyncio.open_connection(sock=sock)
        return HttpConn(reader, writer)

    async def close(self) -> None:
        for close in reversed(self.closers):
            with contextlib.suppress(Exception):
                await close()
        for f in self.factories:
            f.close()
        self.stack.close()


class HttpConn:
    """The client app's keep-alive HTTP/1.1 connection to the VIP (captured by ztunnel)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def request(self, path: str, headers: list[tuple[str, str]] | None = None) -> Response:
        p, _, q = path.partition("?")
        self.writer.write(serialize_request(Request("GET", p, q, [("host", "reviews"), *(headers or [])])))
        parser = ResponseParser()
        async with asyncio.timeout(10):
            while True:
                data = await self.reader.read(65536)
                if not data:
                    raise EOFError("connection closed")
                if done := parser.feed(data):
                    return done[0]

    def close(self) -> None:
        self.writer.close()
