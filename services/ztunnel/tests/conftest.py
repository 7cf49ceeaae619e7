"""Shared fixtures for ztunnel tests: a two-node network of namespaces with captured pods, a test CA,
and a ZDS server playing the CNI agent.

Topology (all namespaces ``zt-…``, addresses in 10.77.0.0/16, nothing in the host netns)::

    pod netns (eth0 10.77.<n>.<k>/24, gw .1) ──veth── node<n> netns (br0 10.77.<n>.1/24)
    node1 (link 10.77.254.1/24) ──veth "the node link"── node2 (10.77.254.2/24)

A *captured* pod gets the in-pod redirection rules of behaviour.md §3.3 (our own test copy, kept as test
data: services and their tests do not import each other). ztunnel itself runs in the test process and
reaches each pod only through the netns fd handed over ZDS, exactly as in a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import secrets
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from google.protobuf import empty_pb2
from meshkit.hbone.testing import TestCA
from meshkit.identity.certs import WorkloadCertificate
from meshkit.identity.spiffe import Identity
from meshkit.netns import TempNetns, temp_netns
from meshkit.settings import load
from meshkit.sockets import NetnsSocketFactory, open_tcp
from meshkit.xds import wire
from meshkit.xds.server_core import Resource, ServerStream
from meshkit.xds.types import ADDRESS_TYPE, AUTHORIZATION_TYPE, DELTA_METHOD, content_version
from meshkit.zds import WorkloadInfo, ZdsServer, ZdsServerConnection
from meshproto.envoy.service.discovery.v3 import discovery_pb2
from meshproto.istio.security import authorization_pb2 as authz_pb2
from meshproto.istio.workload import workload_pb2 as wl_pb2
from ztunnel.app import App, build
from ztunnel.settings import Settings
from ztunnel.state.records import Authorization, Service, StringMatch, Workload
from ztunnel.state.state import State

PREFIX = "zt-"

# behaviour.md §3.3 (IPv4, iptables backend, with DNS capture), applied with iptables-restore --noflush.
INPOD_RULES = (Path(__file__).parent / "testdata" / "inpod-rules.txt").read_text()


def _run(argv: list[str], stdin: str | None = None) -> str:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return proc.stdout


def capture(ns: TempNetns) -> None:
    """Install the in-pod redirection (iptables + fwmark policy route) into a pod netns."""
    _run(["ip", "netns", "exec", ns.name, "iptables-restore", "--noflush"], INPOD_RULES)
    ns.ip("rule", "add", "fwmark", "0x111/0xfff", "pref", "32764", "lookup", "100")
    ns.ip("route", "add", "local", "0.0.0.0/0", "dev", "lo", "table", "100")


@dataclass
class Pod:
    name: str
    namespace: str
    service_account: str
    ip: str
    node: Node
    ns: TempNetns
    uid: str = field(default_factory=lambda: secrets.token_hex(8))
    captured: bool = True

    @property
    def netns_path(self) -> str:
        return str(self.ns.path)


@dataclass
class Node:
    name: str
    index: int
    ns: TempNetns
    pods: list[Pod] = field(default_factory=list)

    @property
    def link_ip(self) -> str:
        return f"10.77.254.{self.index}"


class Topology:
    """Nodes and pods; everything is removed when the fixture ends."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self._stack = stack
        self.nodes: list[Node] = []
        self.link_if = ""

    def add_node(self) -> Node:
        index = len(self.nodes) + 1
        ns = self._stack.enter_context(temp_netns(PREFIX))
        ns.exec("sysctl", "-qw", "net.ipv4.ip_forward=1")
        ns.ip("link", "add", "br0", "type", "bridge")
        ns.ip("addr", "add", f"10.77.{index}.1/24", "dev", "br0")
        ns.ip("link", "set", "br0", "up")
        node = Node(f"node{index}", index, ns)
        self.nodes.append(node)
        return node

    def link_nodes(self) -> None:
        """Join every node to one link ("the node link") with routes to each other's pod subnets."""
        a, b = self.nodes[0], self.nodes[1]
        a.ns.ip("link", "add", "link0", "type", "veth", "peer", "name", "link0", "netns", b.ns.name)
        for node in (a, b):
            node.ns.ip("addr", "add", f"{node.link_ip}/24", "dev", "link0")
            node.ns.ip("link", "set", "link0", "up")
        a.ns.ip("route", "add", "10.77.2.0/24", "via", b.link_ip)
        b.ns.ip("route", "add", "10.77.1.0/24", "via", a.link_ip)
        self.link_if = "link0"

    def add_pod(
        self, node: Node, name: str, namespace: str = "default", sa: str = "", captured: bool = True
    ) -> Pod:
        k = len(node.pods) + 10
        ns = self._stack.enter_context(temp_netns(PREFIX))
        ip = f"10.77.{node.index}.{k}"
        host_if = f"v{k}"
        ns.ip("link", "add", "eth0", "type", "veth", "peer", "name", host_if, "netns", node.ns.name)
        ns.ip("addr", "add", f"{ip}/24", "dev", "eth0")
        ns.ip("link", "set", "eth0", "up")
        ns.ip("route", "add", "default", "via", f"10.77.{node.index}.1")
        node.ns.ip("link", "set", host_if, "master", "br0")
        node.ns.ip("link", "set", host_if, "up")
        if captured:
            capture(ns)
        pod = Pod(name, namespace, sa or name, ip, node, ns, captured=captured)
        node.pods.append(pod)
        return pod


@pytest.fixture
def topology() -> Iterator[Topology]:
    with contextlib.ExitStack() as stack:
        yield Topology(stack)


# --- the mesh harness: two ztunnels, a CA, a fake CNI agent per node -------------------------------------


class CaFetcher:
    """An in-process CA standing in for istiod's: signs a leaf per identity; can be switched off."""

    def __init__(self, ca: TestCA) -> None:
        self.ca = ca
        self.issued: list[Identity] = []
        self.available = True

    async def fetch(self, identity: Identity) -> WorkloadCertificate:
        if not self.available:
            raise ConnectionError("CA unreachable")
        self.issued.append(identity)
        return self.ca.issue(identity)


def pod_workload(pod: Pod, services: tuple[str, ...] = ()) -> Workload:
    return Workload(
        uid=f"Kubernetes//Pod/{pod.namespace}/{pod.name}",
        name=pod.name,
        namespace=pod.namespace,
        addresses=(pod.ip,),
        tunnel_protocol="HBONE" if pod.captured else "NONE",
        service_account=pod.service_account,
        node=pod.node.name,
        workload_name=pod.name,
        canonical_name=pod.name,
        canonical_revision="v1",
        services={key: {} for key in services},
    )


class Echo:
    """A TCP echo app inside a pod's netns; remembers each client address it saw."""

    def __init__(self) -> None:
        self.peers: list[tuple[str, int]] = []
        self.server: asyncio.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.peers.append(writer.get_extra_info("peername")[:2])
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()


class Mesh:
    """Two nodes, one ztunnel each, a fake CNI agent per node, static config shared by both ztunnels."""

    def __init__(self, topo: Topology, tmp: str) -> None:
        self.topo = topo
        self.tmp = tmp
        self.fetcher = CaFetcher(TestCA())
        self.apps: dict[str, App] = {}
        self.extra_apps: list[App] = []
        self.xds: FakeXds | None = None
        self.grpc_impl = "lite"
        self.agents: dict[str, ZdsServer] = {}
        self.workloads: list[Workload] = []
        self.services: list[Service] = []
        self.policies: list[Authorization] = []
        self._factories: list[NetnsSocketFactory] = []
        self._echoes: list[Echo] = []
        self._tasks: list[asyncio.Task[None]] = []
        self.resolv_conf = os.path.join(tmp, "resolv.conf")
        Path(self.resolv_conf).write_text("")

    @staticmethod
    def workload(pod: Pod, services: tuple[str, ...] = ()) -> Workload:
        return pod_workload(pod, services)

    # config ----------------------------------------------------------------------------------------------
    def publish(self) -> None:
        if self.xds is not None:
            self.xds.publish(self.workloads, self.services, self.policies)
            return
        for app in self.apps.values():
            self._apply(app.state)

    async def enable_xds(self, grpc_impl: str = "lite") -> FakeXds:
        """Serve config over real delta xDS (ztunnel's client, a grpc.aio server with meshkit's core here)."""
        self.grpc_impl = grpc_impl
        self.xds = FakeXds()
        await self.xds.start()
        return self.xds

    def _apply(self, state: State) -> None:
        for wl in self.workloads:
            state.insert_workload(wl)
        for svc in self.services:
            state.insert_service(svc)
        known = {p.key for p in self.policies}
        for key in list(state.policies.by_key):
            if key not in known:
                state.apply_authorizations([], [key])
        for pol in self.policies:
            state.insert_policy(pol)

    # lifecycle ------------------------------------------------------------------------------------------
    def settings(self, node: Node, **extra: str) -> Settings:
        env = {
            "NODE_NAME": node.name,
            "INPOD_UDS": self.uds(node),
            "ADMIN_ADDR": "127.0.0.1:0",
            "STATS_ADDR": "127.0.0.1:0",
            "READINESS_ADDR": "127.0.0.1:0",
            "DNS_RESOLV_CONF": self.resolv_conf,
            "CONNECTION_TERMINATION_DEADLINE": "2s",
            **extra,
        }
        return load(Settings, env)

    def uds(self, node: Node) -> str:
        return os.path.join(self.tmp, f"{node.name}.sock")

    async def start_agent(self, node: Node) -> ZdsServer:
        async def agent(conn: ZdsServerConnection) -> None:
            for pod in node.pods:
                if pod.captured:
                    await self.add(conn, pod)
            await conn.snapshot_sent()
            while await conn.probe():  # noqa: ASYNC110 - the keepalive period, not a wait for an event
                await asyncio.sleep(0.1)

        server = ZdsServer(self.uds(node), agent, accepts_per_s=100)
        await server.start()
        self.agents[node.name] = server
        return server

    @staticmethod
    async def add(conn: ZdsServerConnection, pod: Pod) -> None:
        fd = os.open(pod.netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            ack = await conn.add(pod.uid, WorkloadInfo(pod.name, pod.namespace, pod.service_account), fd)
        finally:
            os.close(fd)
        assert ack.ok, ack.error

    async def start_ztunnel(self, node: Node, **extra: str) -> App:
        if self.xds is not None:
            self.xds.publish(self.workloads, self.services, self.policies)
            xds_env = {
                "XDS_ADDRESS": f"http://127.0.0.1:{self.xds.port}",
                "XDS_ROOT_CA": "",
                "AUTH_TOKEN": "",
                "ZTUNNEL_GRPC": self.grpc_impl,
            }
            return await build(self.settings(node, **xds_env, **extra), fetcher=self.fetcher)

        async def source(state: State, synced: object) -> None:
            self._apply(state)
            synced()  # type: ignore[operator]

        return await build(self.settings(node, **extra), fetcher=self.fetcher, config_source=source)

    async def start(self, *, wait_ready: bool = True) -> None:
        for node in self.topo.nodes:
            await self.start_agent(node)
            self.apps[node.name] = await self.start_ztunnel(node)
        for app in self.apps.values():
            if wait_ready:
                await asyncio.wait_for(app.readiness.wait_ready(), 20)
            else:  # at least every captured pod has its listeners
                started = asyncio.Event()
                app.manager.on_ready_change(lambda ready, ev=started: ev.set() if ready else None)
                if not app.manager.ready:
                    await asyncio.wait_for(started.wait(), 20)

    async def close(self) -> None:
        for app in [*self.apps.values(), *self.extra_apps]:
            if not app.stopped.is_set():
                await app.close()
        for server in self.agents.values():
            await server.close()
        if self.xds is not None:
            await self.xds.stop()
        for echo in self._echoes:
            if echo.server is not None:
                echo.server.close()
                await echo.server.wait_closed()
        for factory in self._factories:
            factory.close()

    # traffic --------------------------------------------------------------------------------------------
    def factory(self, pod: Pod) -> NetnsSocketFactory:
        f = NetnsSocketFactory(pod.netns_path, mark=None, name=f"test-{pod.name}")
        self._factories.append(f)
        return f

    async def echo(self, pod: Pod, port: int = 8080) -> Echo:
        echo = Echo()
        sock = self.factory(pod).listen_tcp("0.0.0.0", port)
        echo.server = await asyncio.start_server(echo.handle, sock=sock)
        self._echoes.append(echo)
        return echo

    async def request(self, pod: Pod, ip: str, port: int, payload: bytes, deadline_s: float = 10) -> bytes:
        """Connect from inside ``pod`` (as its app would, unmarked), send, half-close, read the echo."""
        async with asyncio.timeout(deadline_s):
            sock = await open_tcp(self.factory(pod), ip, port)
            reader, writer = await asyncio.open_connection(sock=sock)
            try:
                writer.write(payload)
                await writer.drain()
                writer.write_eof()
                return await reader.read()
            finally:
                writer.close()


@pytest_asyncio.fixture
async def mesh(topology: Topology, tmp_path: Path) -> AsyncIterator[Mesh]:
    m = Mesh(topology, str(tmp_path))
    try:
        yield m
    finally:
        await m.close()


# --- an in-process delta xDS server (meshkit.xds server core) serving the Mesh's records ------------------


def _ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def workload_proto(wl: Workload) -> wl_pb2.Workload:
    return wl_pb2.Workload(
        uid=wl.uid,
        name=wl.name,
        namespace=wl.namespace,
        addresses=[_ip(a) for a in wl.addresses],
        tunnel_protocol=wl_pb2.HBONE if wl.hbone else wl_pb2.NONE,
        service_account=wl.service_account,
        node=wl.node,
        workload_name=wl.workload_name,
        canonical_name=wl.canonical_name,
        canonical_revision=wl.canonical_revision,
        authorization_policies=list(wl.authorization_policies),
        services={
            key: wl_pb2.PortList(ports=[wl_pb2.Port(service_port=p, target_port=t) for p, t in ports.items()])
            for key, ports in wl.services.items()
        },
    )


def service_proto(svc: Service) -> wl_pb2.Service:
    return wl_pb2.Service(
        name=svc.name,
        namespace=svc.namespace,
        hostname=svc.hostname,
        addresses=[wl_pb2.NetworkAddress(network=n, address=_ip(ip)) for n, ip in svc.vips],
        ports=[wl_pb2.Port(service_port=p, target_port=t) for p, t in svc.ports.items()],
    )


def _strings(items: tuple[StringMatch, ...]) -> list[authz_pb2.StringMatch]:
    out = []
    for m in items:
        if m.kind == "presence":
            out.append(authz_pb2.StringMatch(presence=empty_pb2.Empty()))
        else:
            out.append(authz_pb2.StringMatch(**{m.kind: m.value}))
    return out


def policy_proto(pol: Authorization) -> authz_pb2.Authorization:
    rules = [
        authz_pb2.Rule(
            clauses=[
                authz_pb2.Clause(
                    matches=[
                        authz_pb2.Match(
                            principals=_strings(m.principals),
                            not_principals=_strings(m.not_principals),
                            destination_ports=sorted(m.destination_ports),
                        )
                        for m in clause
                    ]
                )
                for clause in rule
            ]
        )
        for rule in pol.rules
    ]
    return authz_pb2.Authorization(
        name=pol.name,
        namespace=pol.namespace,
        scope=authz_pb2.Scope.Value(pol.scope),
        action=authz_pb2.Action.Value(pol.action),
        rules=rules,
    )


def _resource(type_url: str, name: str, msg: object) -> Resource:
    raw = wire.any_bytes(type_url, msg.SerializeToString())  # type: ignore[attr-defined]
    return Resource.build(name, content_version(raw), raw)


class FakeXds:
    """Serves delta xDS (plaintext, 127.0.0.1) from the Mesh's records; ``publish`` pushes what changed."""

    def __init__(self) -> None:
        self.resources: dict[str, dict[str, Resource]] = {ADDRESS_TYPE: {}, AUTHORIZATION_TYPE: {}}
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self._queues: set[asyncio.Queue[tuple[str, list[str]] | bytes]] = set()

    # ResourceSource
    def get(self, type_url: str, name: str) -> Resource | None:
        return self.resources.get(type_url, {}).get(name)

    def names(self, type_url: str) -> list[str]:
        return sorted(self.resources.get(type_url, {}))

    def lookup(self, type_url: str, key: str) -> list[Resource]:
        res = self.get(type_url, key)
        return [res] if res else []

    def publish(
        self, workloads: list[Workload], services: list[Service], policies: list[Authorization]
    ) -> None:
        new = {
            ADDRESS_TYPE: {
                **{
                    w.uid: _resource(ADDRESS_TYPE, w.uid, wl_pb2.Address(workload=workload_proto(w)))
                    for w in workloads
                },
                **{
                    s.key: _resource(ADDRESS_TYPE, s.key, wl_pb2.Address(service=service_proto(s)))
                    for s in services
                },
            },
            AUTHORIZATION_TYPE: {
                p.key: _resource(AUTHORIZATION_TYPE, p.key, policy_proto(p)) for p in policies
            },
        }
        old, self.resources = self.resources, new
        for type_url, resources in new.items():
            names = sorted(set(old[type_url]) | set(resources))
            for queue in self._queues:
                queue.put_nowait((type_url, names))

    async def _stream(self, requests: object, _context: object) -> object:
        stream = ServerStream(self)
        queue: asyncio.Queue[tuple[str, list[str]] | bytes] = asyncio.Queue()
        self._queues.add(queue)

        async def read() -> None:
            async for req in requests:  # type: ignore[attr-defined]
                for response in stream.receive(req).responses:
                    queue.put_nowait(response.encode())

        reader = asyncio.ensure_future(read())
        try:
            while True:
                item = await queue.get()
                if isinstance(item, bytes):
                    yield item
                    continue
                response = stream.push(*item)
                if response is not None:
                    yield response.encode()
        finally:
            reader.cancel()
            self._queues.discard(queue)

    async def start(self, port: int = 0) -> None:
        service, method = DELTA_METHOD.lstrip("/").split("/")
        handler = grpc.stream_stream_rpc_method_handler(
            self._stream, request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString
        )
        self.server = grpc.aio.server()
        self.server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(service, {method: handler})]
        )
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(None)
            self.server = None


def make_tls_material(common_name_only: bool = False) -> tuple[bytes, bytes, bytes]:
    """(root PEM, server cert PEM for DNS name localhost, server key PEM); ``common_name_only``: the name is
    only in the subject CN (no SAN), which a client must not accept (RFC 6125 / upstream's rustls)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test istiod root")])
    root = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(1).not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder().issuer_name(ca_name).public_key(key.public_key())
        .serial_number(2).not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
    )  # fmt: skip
    if common_name_only:
        builder = builder.subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
    else:
        builder = builder.subject_name(x509.Name([])).add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=True
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return root.public_bytes(pem), cert.public_bytes(pem), key_pem


@pytest.fixture
def tls_material() -> object:
    """:func:`make_tls_material`, for tests of ztunnel's TLS clients (a test istiod's root and cert)."""
    return make_tls_material
