"""Control-plane benchmark: istiod's ambient index and delta xDS, 10,000 pods / 1,000 services / 500 policies.

istiod runs in a child process (built with ``istiod.app.build``, inputs fed directly, no API server) so its
RSS is its own; the clients run here. Figures:

* ``xds.index_build_ms``      — feeding all synthetic objects through the derived collections + encoding;
* ``xds.full_state_ms``       — a new client (meshkit XdsClient, decoding every resource) from connect to
  holding the complete state (all Address and Authorization resources);
* ``xds.change_to_100_clients_p99_ms`` — with 100 connected streams (raw gRPC, responses parsed, ACKed), one
  pod changes; time until each stream has it (p99 over clients x changes; includes the 100 ms debounce);
* ``istiod.rss_mb``           — istiod's resident memory with the state built and 100 clients connected.

Targets: full state <= 2 s, change p99 <= 500 ms, RSS <= 1 GB. Bounded: about a minute on 2 cores.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import statistics
import time
from multiprocessing.connection import Connection
from typing import Any

from _results import write_results

NAMESPACES, SERVICES_PER_NS, PODS_PER_SERVICE, POLICIES = 100, 10, 10, 500
CLIENTS, CHANGES = 100, 20
PORTS = [{"name": "http", "port": 80, "targetPort": "http"}, {"port": 9090, "targetPort": 9090}]
PRINCIPAL = "cluster.local/ns/x/sa/y"


def synthetic() -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {
        k: {} for k in ("namespaces", "services", "pods", "authorizationpolicies", "peerauthentications")
    }
    ready = [{"type": "Ready", "status": "True"}]
    for n in range(NAMESPACES):
        ns = f"ns-{n}"
        out["namespaces"][ns] = {"metadata": {"name": ns, "labels": {}}}
        for s in range(SERVICES_PER_NS):
            app = f"app-{s}"
            out["services"][f"{ns}/{app}"] = {
                "metadata": {"name": app, "namespace": ns},
                "spec": {"selector": {"app": app}, "clusterIP": f"10.96.{n}.{s + 1}",
                         "ports": PORTS},
            }  # fmt: skip
            for p in range(PODS_PER_SERVICE):
                name = f"{app}-{p}"
                ip = f"10.{n // 100 + 1}.{n % 100}.{s * PODS_PER_SERVICE + p + 1}"
                out["pods"][f"{ns}/{name}"] = {
                    "metadata": {"name": name, "namespace": ns, "labels": {"app": app, "version": "v1"},
                                 "annotations": {"ambient.istio.io/redirection": "enabled"}},
                    "spec": {"nodeName": f"node-{p % 5}", "serviceAccountName": app,
                             "containers": [{"ports": [{"name": "http", "containerPort": 8080}]}]},
                    "status": {"phase": "Running", "podIP": ip, "conditions": ready},
                }  # fmt: skip
    for i in range(POLICIES):
        ns = f"ns-{i % NAMESPACES}"
        out["authorizationpolicies"][f"{ns}/policy-{i}"] = {
            "metadata": {"name": f"policy-{i}", "namespace": ns},
            "spec": {"selector": {"matchLabels": {"app": f"app-{i % SERVICES_PER_NS}"}},
                     "rules": [{"from": [{"source": {"namespaces": [ns], "principals": [PRINCIPAL]}}],
                                "to": [{"operation": {"ports": ["8080"]}}]}]},
        }  # fmt: skip
    out["peerauthentications"]["istio-system/default"] = {
        "metadata": {"name": "default", "namespace": "istio-system"},
        "spec": {"mtls": {"mode": "STRICT"}},
    }
    return out


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def server_main(conn: Connection) -> None:
    asyncio.run(_server(conn))


async def _server(conn: Connection) -> None:
    from istiod.app import build
    from istiod.settings import Settings

    settings = Settings(secure_xds_addr="", plaintext_xds_addr="127.0.0.1:0", monitoring_addr="127.0.0.1:0",
                        readiness_addr="127.0.0.1:0", ca_enabled=False, leader_election=False)  # fmt: skip
    app = await build(settings)
    data = synthetic()
    started = time.perf_counter()
    for kind in ("namespaces", "services", "authorizationpolicies", "peerauthentications", "pods"):
        app.index.inputs[kind].apply(data[kind])
    build_ms = (time.perf_counter() - started) * 1000
    sizes = {"addresses": len(app.index.addresses), "authorizations": len(app.index.authorizations)}
    conn.send({"port": app.addresses["xds_plaintext"], "build_ms": build_ms, **sizes})
    loop = asyncio.get_running_loop()
    counter = 0
    while True:
        command = await loop.run_in_executor(None, conn.recv)
        if command == "stop":
            break
        if command == "rss":
            conn.send(rss_mb())
            continue
        counter += 1  # flip one pod's readiness: one Address changes on the wire
        key = f"ns-{counter % NAMESPACES}/app-0-0"
        pod = dict(data["pods"][key])
        status = "False" if pod["status"]["conditions"][0]["status"] == "True" else "True"
        pod["status"] = {**pod["status"], "conditions": [{"type": "Ready", "status": status}]}
        data["pods"][key] = pod
        uid = f"Kubernetes//Pod/{key}"
        conn.send((uid, time.monotonic()))
        app.index.inputs["pods"].set(key, pod)
    await app.shutdown()
    conn.send("stopped")


class FullStateStore:
    def __init__(self, want: int) -> None:
        self.count = 0
        self.want = want
        self.done = asyncio.Event()

    def apply(self, type_url: str, upserts: list[Any], removes: list[str]) -> list[Any]:
        self.count += len(upserts)
        if self.count >= self.want:
            self.done.set()
        return []


async def full_state(port: int, want: int) -> float:
    from meshkit.drain import TaskOwner
    from meshkit.xds.client import XdsClient, XdsClientConfig
    from meshkit.xds.client_core import ClientCore
    from meshkit.xds.types import NodeId
    from meshproto.envoy.config.core.v3 import base_pb2

    store = FullStateStore(want)
    node = base_pb2.Node(id=str(NodeId.ztunnel("10.0.0.1", "zt", "istio-system")))
    client = XdsClient(XdsClientConfig(address=f"http://127.0.0.1:{port}"), ClientCore(node, store))
    started = time.perf_counter()
    async with TaskOwner("bench") as owner:
        owner.spawn(client.run(), name="client")
        await asyncio.wait_for(store.done.wait(), 60)
        await asyncio.wait_for(client.synced.wait(), 60)
    return (time.perf_counter() - started) * 1000


class RawStream:
    """A light ztunnel stand-in: parses responses (no inner decode), ACKs, and notes when names arrive."""

    def __init__(self, channel: Any, index: int) -> None:
        from meshproto.envoy.service.discovery.v3 import discovery_pb2

        self.pb = discovery_pb2
        self.method = channel.stream_stream(
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources",
            request_serializer=discovery_pb2.DeltaDiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DeltaDiscoveryResponse.FromString,
        )
        self.index = index
        self.seen: dict[str, float] = {}
        self.waiting: dict[str, asyncio.Event] = {}
        self.initial = asyncio.Event()
        self.responses = 0

    async def run(self) -> None:
        from meshkit.xds.types import ADDRESS_TYPE, AUTHORIZATION_TYPE, NodeId
        from meshproto.envoy.config.core.v3 import base_pb2

        node = base_pb2.Node(id=str(NodeId.ztunnel("10.0.0.1", f"zt-{self.index}", "istio-system")))
        call = self.method()
        for type_url in (ADDRESS_TYPE, AUTHORIZATION_TYPE):
            await call.write(self.pb.DeltaDiscoveryRequest(type_url=type_url, node=node))
        while True:
            resp = await call.read()
            now = time.monotonic()
            self.responses += 1
            if self.responses >= 2:
                self.initial.set()
            for res in resp.resources:
                if res.name in self.waiting:
                    self.seen[res.name] = now
                    self.waiting.pop(res.name).set()
            await call.write(self.pb.DeltaDiscoveryRequest(type_url=resp.type_url, response_nonce=resp.nonce))


async def change_latency(port: int, conn: Connection) -> tuple[list[float], float]:
    import grpc
    from meshkit.drain import TaskOwner

    options = [("grpc.max_receive_message_length", 200 * 1024 * 1024)]
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options) for _ in range(4)]
    streams = [RawStream(channels[i % len(channels)], i) for i in range(CLIENTS)]
    samples: list[float] = []
    loop = asyncio.get_running_loop()
    async with TaskOwner("bench-streams") as owner:
        for stream in streams:
            owner.spawn(stream.run(), name=f"stream-{stream.index}")
        await asyncio.wait_for(asyncio.gather(*(s.initial.wait() for s in streams)), 300)
        conn.send("rss")
        rss = await loop.run_in_executor(None, conn.recv)
        print(f"{CLIENTS} streams synced; istiod rss {rss:.0f} MB", flush=True)
        for _ in range(CHANGES):
            events = []
            conn.send("change")
            uid, t0 = await loop.run_in_executor(None, conn.recv)
            for stream in streams:
                event = asyncio.Event()
                stream.waiting[uid] = event
                events.append(event)
            try:
                await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 30)
            except TimeoutError:
                missing = sum(1 for e in events if not e.is_set())
                raise RuntimeError(
                    f"{missing} streams never saw {uid}; responses {[s.responses for s in streams][:5]}"
                ) from None
            samples.extend((s.seen[uid] - t0) * 1000 for s in streams)
    for channel in channels:
        await channel.close()
    return samples, rss


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


async def run_clients(conn: Connection, info: dict[str, Any]) -> dict[str, float | int | str]:
    want = info["addresses"] + info["authorizations"]
    full_ms = await full_state(info["port"], want)
    print(f"full state: {full_ms:.0f} ms for {want} resources", flush=True)
    samples, rss = await change_latency(info["port"], conn)
    return {
        "xds.pods": NAMESPACES * SERVICES_PER_NS * PODS_PER_SERVICE,
        "xds.services": NAMESPACES * SERVICES_PER_NS,
        "xds.policies": POLICIES,
        "xds.resources": want,
        "xds.index_build_ms": info["build_ms"],
        "xds.full_state_ms": full_ms,
        "xds.change_to_100_clients_p50_ms": statistics.median(samples),
        "xds.change_to_100_clients_p99_ms": p99(samples),
        "istiod.rss_mb": rss,
    }


def main() -> None:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=server_main, args=(child,), daemon=True)
    proc.start()
    try:
        info = parent.recv()
        figures = asyncio.run(run_clients(parent, info))
        parent.send("stop")
        parent.recv()
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()
    write_results("xds", figures)


if __name__ == "__main__":
    main()
