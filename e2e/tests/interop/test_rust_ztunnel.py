"""Wire compatibility with the REAL upstream ztunnel (Rust): our istiod serves it config and certificates.

Our istiod runs in-process against the local cluster's API server (as the istiod cluster tests do), with its
CA on and TLS on its gRPC port. The Rust ztunnel (built by ``scripts/build-rust-ztunnel``; path in
``AMBIENT_RUST_ZTUNNEL``) runs as a separate process in shared (in-pod) mode with no CNI: no ZDS server
answers on its ``INPOD_UDS``, so it captures no traffic, but it subscribes to delta xDS and prefetches
certificates for HBONE workloads on its node, which is all this test needs. With the local cluster it runs
inside a cluster node's network namespace, so its fixed ports (15000/15020/15021) cannot collide with anything
on the host; istiod listens on the bridge address that namespace routes to.

Pods are bound to made-up Nodes (Node objects without a kubelet: nothing runs the pods); the test writes
their status (IP, Ready) as a kubelet would. ztunnel's token is a real ServiceAccount token for audience
``istio-ca`` bound to its own pod, which is what our CA's node authorizer needs to let it impersonate the
workloads on its node.

Asserted from ztunnel's own ``/config_dump``: it holds our Workload and Service resources (names, addresses,
identities, ports, endpoints), follows an update and a removal, holds a certificate for the HBONE workload on
its node issued by our root, and sends no NACK (checked on both sides: istiod's ``pilot_total_xds_rejects``
and ztunnel's log).
"""

from __future__ import annotations

import asyncio
import base64
import ctypes
import dataclasses
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from cryptography import x509
from istiod.app import App, build
from istiod.settings import Settings
from meshkit.k8s import KubeClient
from meshkit.k8s.resources import Resource
from meshkit.netns import arun_in_netns
from meshtest.fixtures import kube_cluster, kube_namespace  # noqa: F401 - pytest fixtures
from meshtest.kube import KubeCluster
from prometheus_client import generate_latest

pytestmark = [pytest.mark.cluster, pytest.mark.root, pytest.mark.interop]

BINARY_ENV = "AMBIENT_RUST_ZTUNNEL"
ARTIFACTS_ENV = "AMBIENT_INTEROP_ARTIFACTS"
DEFAULT_BINARY = Path.home() / ".cache" / "ambient-interop" / "target" / "release" / "ztunnel"
IMAGE = "localhost:5000/app:istio-testing"
REPO = Path(__file__).resolve().parents[3]
ZTUNNEL_IP, WEB_IP, DB_IP, VM_IP = "10.244.250.20", "10.244.250.21", "10.244.250.22", "10.244.250.30"
API_HOST, API_VIP = "api.interop.example", "240.240.0.10"
EXT_HOST, EXT_BACKEND = "ext.interop.example", "ext-backend.interop.example"
PR_SET_PDEATHSIG = 1  # linux/prctl.h
T = TypeVar("T")


@pytest.fixture(scope="session")
def ztunnel_binary() -> Path:
    """The Rust ztunnel to test; a missing one fails (not skips): selecting this test means wanting it.
    Session-scoped and first in the test's arguments, so it fails before the cluster is brought up."""
    path = Path(os.environ.get(BINARY_ENV) or DEFAULT_BINARY)
    if not (path.is_file() and os.access(path, os.X_OK)):
        pytest.fail(
            f"no Rust ztunnel binary at {path}: build one with scripts/build-rust-ztunnel"
            f" (needs Rust >= 1.90) and point {BINARY_ENV} at it",
            pytrace=False,
        )
    return path


# -- cluster objects -----------------------------------------------------------------------------------------


def pod(ns: str, name: str, *, sa: str, node: str, labels: dict[str, str], hbone: bool) -> dict[str, Any]:
    annotations = {"ambient.istio.io/redirection": "enabled"} if hbone else {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": annotations},
        "spec": {
            "serviceAccountName": sa,
            "nodeName": node,
            "containers": [{"name": "app", "image": IMAGE}],
            "tolerations": [{"operator": "Exists"}],  # the Node never turns Ready: no taint may evict it
        },
    }


def nodes_of(ns: str) -> tuple[str, str]:
    """(ztunnel's node, another node): made-up Nodes, unique per test. Real Node objects, because the pod
    garbage collector deletes pods bound to a node name it has seen missing for 40 s."""
    return f"{ns}-zt", f"{ns}-other"


def service(ns: str, name: str, ports: list[tuple[str, int, int]]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "selector": {"app": name},
            "ports": [{"name": n, "port": p, "targetPort": t} for n, p, t in ports],
        },
    }


def run_pod(cluster: KubeCluster, ns: str, name: str, ip: str) -> None:
    """Write the status a kubelet would: Running, Ready, with an IP."""
    status = {"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                         "conditions": [{"type": "Ready", "status": "True"}]}}  # fmt: skip
    cluster.kubectl(
        "patch", "pod", name, "-n", ns, "--subresource=status", "--type=merge", "-p", json.dumps(status)
    )


def authorization_policy(ns: str) -> dict[str, Any]:
    """web accepts only db's identity on 8080 (an L4 policy: ztunnel enforces it itself)."""
    rule = {"from": [{"source": {"principals": [f"cluster.local/ns/{ns}/sa/db"]}}],
            "to": [{"operation": {"ports": ["8080"]}}]}  # fmt: skip
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "web-from-db", "namespace": ns},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "action": "ALLOW", "rules": [rule]},
    }


def service_entries(ns: str) -> list[dict[str, Any]]:
    """A VIP ServiceEntry selecting a WorkloadEntry (with a locality), and a DNS one with a hostname
    endpoint (a Workload with ``hostname`` and no address)."""
    api = {"hosts": [API_HOST], "addresses": [API_VIP], "location": "MESH_INTERNAL", "resolution": "STATIC",
           "ports": [{"number": 443, "name": "https", "protocol": "TLS", "targetPort": 8443}],
           "workloadSelector": {"labels": {"app": "api"}}}  # fmt: skip
    ext = {"hosts": [EXT_HOST], "location": "MESH_EXTERNAL", "resolution": "DNS",
           "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}],
           "endpoints": [{"address": EXT_BACKEND}]}  # fmt: skip
    vm = {
        "address": VM_IP,
        "labels": {"app": "api"},
        "serviceAccount": "api",
        "locality": "region1/zone1/sub1",
    }
    kinds = (("ServiceEntry", "api", api), ("ServiceEntry", "ext", ext), ("WorkloadEntry", "api-vm", vm))
    return [
        {"apiVersion": "networking.istio.io/v1", "kind": kind, "metadata": {"name": name, "namespace": ns},
         "spec": spec}
        for kind, name, spec in kinds
    ]  # fmt: skip


#: CRD → the base chart template (and values) it is rendered from.
CRDS = {
    "authorizationpolicies.security.istio.io": ("templates/crds-istio.yaml", ()),
    "peerauthentications.security.istio.io": ("templates/crds-istio.yaml", ()),
    "serviceentries.networking.istio.io": ("templates/crds-istio.yaml", ()),
    "workloadentries.networking.istio.io": ("templates/crds-istio.yaml", ()),
    "gatewayclasses.gateway.networking.k8s.io": (
        "templates/crds-gateway-api.yaml",
        ("gatewayAPI.enabled=true",),
    ),
    "gateways.gateway.networking.k8s.io": ("templates/crds-gateway-api.yaml", ("gatewayAPI.enabled=true",)),
}


def render_crds(cluster: KubeCluster, names: list[str]) -> list[dict[str, Any]]:
    out = []
    for template, values in sorted({CRDS[n] for n in names}):
        sets = [arg for v in values for arg in ("--set", v)]
        rendered = cluster.helm("template", "interop", str(REPO / "helm" / "base"), *sets,
                                "--show-only", template).stdout  # fmt: skip
        out += [d for d in yaml.safe_load_all(rendered) if d and d["metadata"]["name"] in names]
    for crd in out:  # not Helm's: a later `helm install` of the base chart must not trip on them
        annotations = crd["metadata"].get("annotations") or {}
        kept = {k: v for k, v in annotations.items() if not k.startswith("helm.sh/")}  # keeps api-approved
        crd["metadata"] = {"name": crd["metadata"]["name"], "annotations": kept}
    return out


@pytest.fixture(scope="session")
def istio_crds(kube_cluster: KubeCluster) -> Iterator[None]:  # noqa: F811
    """The Istio and Gateway API CRDs used here, from our base chart, unless the cluster has them already
    (then they are left alone); those this fixture created are deleted at the end of the session (with all
    their objects; waited for, so a later run never finds them half-deleted)."""
    k = kube_cluster
    missing = [n for n in CRDS if k.kubectl("get", "crd", n, check=False).returncode != 0]
    if not missing:
        yield
        return
    try:
        k.kubectl("create", "-f", "-", input=yaml.safe_dump_all(render_crds(k, missing)))
        for name in missing:
            k.wait_for(f"CRD {name} established", lambda n=name: crd_established(k, n))  # type: ignore[misc]
        yield
    finally:
        k.kubectl("delete", "crd", *missing, "--timeout=60s", check=False, timeout=90)


def crd_established(cluster: KubeCluster, name: str) -> bool:
    conditions = cluster.get("crd", name).get("status", {}).get("conditions") or []
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


@pytest.fixture
def mesh_objects(kube_cluster: KubeCluster, kube_namespace: str, istio_crds: None) -> Iterator[str]:  # noqa: F811
    """ztunnel's own pod (its token is bound to it), an HBONE workload on its node behind a Service with an
    L4 AuthorizationPolicy, a plain workload on another node behind another Service, and ServiceEntries."""
    ns, k = kube_namespace, kube_cluster
    node, other_node = nodes_of(ns)
    try:  # everything is cleaned up, even when creating it fails half-way
        k.apply([{"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}} for n in (node, other_node)])
        for sa in ("ztunnel", "web", "db"):
            k.kubectl("create", "serviceaccount", "-n", ns, sa)
        k.apply(
            [
                pod(ns, "ztunnel-interop", sa="ztunnel", node=node, labels={"app": "ztunnel"}, hbone=False),
                pod(ns, "web-1", sa="web", node=node, labels={"app": "web"}, hbone=True),
                pod(ns, "db-1", sa="db", node=other_node, labels={"app": "db"}, hbone=False),
                service(ns, "web", [("http", 80, 8080)]),
                service(ns, "db", [("tcp", 5432, 5432)]),
                authorization_policy(ns),
                *service_entries(ns),
            ],
            ns,
        )
        for name, ip in (("ztunnel-interop", ZTUNNEL_IP), ("web-1", WEB_IP), ("db-1", DB_IP)):
            run_pod(k, ns, name, ip)
        yield ns
    finally:  # no kubelet will ever confirm their deletion
        k.kubectl("delete", "pods", "--all", "-n", ns, "--force", "--grace-period=0", check=False)
        k.kubectl("delete", "node", node, other_node, "--wait=false", check=False)


# -- istiod (ours, in-process) -------------------------------------------------------------------------------


@pytest.fixture
async def istiod(
    kube_cluster: KubeCluster,  # noqa: F811
    mesh_objects: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> AsyncIterator[App]:
    """Our istiod; a test overrides Settings fields with ``parametrize("istiod", [{...}], indirect=True)``."""
    ns = mesh_objects
    # The CA reads its settings from the environment: keep its Secrets, root ConfigMap and trusted node
    # account inside this test's namespace, and never pick up a plug-in CA from the machine.
    monkeypatch.setenv("POD_NAMESPACE", ns)
    monkeypatch.setenv("CA_TRUSTED_NODE_ACCOUNTS", f"{ns}/ztunnel")
    monkeypatch.setenv("CACERTS_DIR", str(tmp_path / "no-cacerts"))
    host = kube_cluster.layout.bridge_gateway if kube_cluster.layout is not None else "127.0.0.1"
    settings = Settings(
        secure_xds_addr=f"{host}:0", plaintext_xds_addr="", monitoring_addr="127.0.0.1:0",
        readiness_addr="127.0.0.1:0", ca_enabled=True, leader_election=True, namespace=ns,
        lease_name="istiod-interop", pod_name="istiod-interop", debounce_s=0.05,
    )  # fmt: skip
    settings = dataclasses.replace(settings, **getattr(request, "param", {}))
    app = await build(settings, kube_client=KubeClient.from_config(str(kube_cluster.kubeconfig)))
    try:
        async with asyncio.timeout(60):
            await app.readiness.wait_ready()
        yield app
    finally:
        await app.shutdown()


# -- the Rust ztunnel ----------------------------------------------------------------------------------------


@dataclass
class RustZtunnel:
    process: asyncio.subprocess.Process
    log_path: Path
    netns: str | None  # path of the netns it runs in; None: the host's

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def nacks(self) -> list[str]:
        """ztunnel's log lines for the NACKs it sent (each names the resource and the parse error)."""
        return [line for line in self.log().splitlines() if "type=Nack" in line]

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    async def get(self, port: int, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{port}{path}"
        if self.netns is None:
            return await asyncio.to_thread(http_get, url)
        return await arun_in_netns(self.netns, http_get, url)

    async def config_dump(self) -> dict[str, Any]:
        code, body = await self.get(15000, "/config_dump")
        assert code == 200, f"/config_dump answered {code}: {body[:500]}"
        dump: dict[str, Any] = json.loads(body)
        return dump


def die_with_parent() -> None:
    """In the child, before exec (nsenter execs ztunnel in place): if the test process is killed before its
    finalizers run, the kernel kills ztunnel too, so no run leaves one behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def ztunnel_env(app: App, ns: str, host: str, files: Path) -> dict[str, str]:
    root = files / "root-cert.pem"
    root.write_bytes(app.ca.ca.roots_pem)
    address = f"https://{host}:{app.addresses['xds']}"
    istiod_host = f"istiod.{ns}.svc"  # the name on istiod's serving certificate
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "RUST_LOG": "info,ztunnel::xds=debug",
        "XDS_ADDRESS": address,
        "CA_ADDRESS": address,
        "ALT_XDS_HOSTNAME": istiod_host,
        "ALT_CA_HOSTNAME": istiod_host,
        "XDS_ROOT_CA": str(root),
        "CA_ROOT_CA": str(root),
        "AUTH_TOKEN": str(files / "istio-token"),
        "CLUSTER_ID": "Kubernetes",
        "POD_NAME": "ztunnel-interop",
        "POD_NAMESPACE": ns,
        "NODE_NAME": nodes_of(ns)[0],
        "INSTANCE_IP": ZTUNNEL_IP,
        "INPOD_UDS": str(files / "ztunnel.sock"),  # nobody serves ZDS here: no pod is ever captured
        "ZTUNNEL_WORKER_THREADS": "1",
    }


@pytest.fixture
async def rust_ztunnel(
    ztunnel_binary: Path,
    istiod: App,
    kube_cluster: KubeCluster,  # noqa: F811
    mesh_objects: str,
    tmp_path: Path,
) -> AsyncIterator[RustZtunnel]:
    binary, ns = ztunnel_binary, mesh_objects
    token = kube_cluster.kubectl(
        "create", "token", "ztunnel", "-n", ns, "--audience", "istio-ca", "--duration", "1h",
        "--bound-object-kind", "Pod", "--bound-object-name", "ztunnel-interop",
    ).stdout.strip()  # fmt: skip
    (tmp_path / "istio-token").write_text(token)
    layout = kube_cluster.layout
    netns = layout.nodes[-1].netns_path if layout is not None else None
    host = layout.bridge_gateway if layout is not None else "127.0.0.1"
    argv = [str(binary)] if netns is None else ["nsenter", f"--net={netns}", "--", str(binary)]
    log_path = tmp_path / "ztunnel.log"
    with log_path.open("wb") as log:
        env = ztunnel_env(istiod, ns, host, tmp_path)
        process = await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
        )
    zt = RustZtunnel(process, log_path, netns)
    try:
        yield zt
    finally:
        await keep_artifacts(zt, istiod)
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 20)
        except TimeoutError:
            process.kill()
            await process.wait()


async def keep_artifacts(zt: RustZtunnel, app: App) -> None:
    """With ``AMBIENT_INTEROP_ARTIFACTS=<dir>``, keep ztunnel's log, its last config_dump and istiod's
    metrics there (the evidence behind e2e/tests/interop/README.md)."""
    target = os.environ.get(ARTIFACTS_ENV)
    if not target:
        return
    try:
        dump = json.dumps(await zt.config_dump(), indent=2)
    except (OSError, ValueError, AssertionError) as err:
        dump = f"unavailable: {err!r}"
    files = {
        "ztunnel.log": zt.log(),
        "config_dump.json": dump,
        "istiod-metrics.txt": generate_latest(app.registry).decode(),
    }
    await asyncio.to_thread(write_files, Path(target), files)


def write_files(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)


# -- helpers -------------------------------------------------------------------------------------------------


async def eventually(
    zt: RustZtunnel, what: str, check: Callable[[], Awaitable[T | None]], within_s: float = 60
) -> T:
    """Poll ``check`` (ztunnel's admin API has no watch) until it returns a value; fail with ztunnel's log."""
    last: object = None
    try:
        async with asyncio.timeout(within_s):
            while True:
                if zt.process.returncode is not None:
                    raise AssertionError(f"ztunnel exited ({zt.process.returncode}):\n{zt.log_tail()}")
                if nacks := zt.nacks():  # fail at once, naming the rejected resource, not by a timeout
                    raise AssertionError("ztunnel NACKed our config:\n" + "\n".join(nacks))
                try:
                    result = await check()
                except (OSError, ValueError, AssertionError) as err:  # not up yet, or not there yet
                    last = err
                else:
                    if result is not None:
                        return result
                await asyncio.sleep(0.25)
    except TimeoutError:
        raise AssertionError(
            f"timed out waiting for ztunnel {what}; last: {last!r}\n{zt.log_tail()}"
        ) from None


async def dump_where(zt: RustZtunnel, what: str, keys: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """ztunnel's config_dump once ``keys`` holds for it (polled as by ``eventually``)."""

    async def has() -> dict[str, Any] | None:
        dump = await zt.config_dump()
        return dump if keys(dump) else None

    return await eventually(zt, what, has)


def assert_no_rejects(zt: RustZtunnel, app: App) -> None:
    """Neither end saw a NACK: ztunnel's log and istiod's reject counter."""
    assert (zt.nacks(), metric(app, "pilot_total_xds_rejects_total")) == ([], 0)


async def force_delete_pod(k: KubeCluster, ns: str, name: str) -> None:
    await asyncio.to_thread(k.kubectl, "delete", "pod", name, "-n", ns, "--force", "--grace-period=0")


def by_uid(dump: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {w["uid"]: w for w in dump.get("workloads") or []}


def by_host(dump: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["hostname"]: s for s in dump.get("services") or []}


def dumped_cert(entry: dict[str, Any]) -> x509.Certificate:
    """A certificate from ztunnel's config_dump, which shows each PEM base64-encoded."""
    return x509.load_pem_x509_certificate(base64.b64decode(entry["pem"]))


def metric(app: App, sample: str) -> float:
    """A sample's value summed over all its label sets (istiod's registry, read in-process)."""
    return sum(s.value for m in app.registry.collect() for s in m.samples if s.name == sample)


# -- the test ------------------------------------------------------------------------------------------------


async def test_rust_ztunnel_takes_config_and_certificates_from_our_istiod(
    ztunnel_binary: Path,
    istiod: App,
    rust_ztunnel: RustZtunnel,
    kube_cluster: KubeCluster,  # noqa: F811
    mesh_objects: str,
) -> None:
    ns, zt = mesh_objects, rust_ztunnel
    web_uid, db_uid = f"Kubernetes//Pod/{ns}/web-1", f"Kubernetes//Pod/{ns}/db-1"
    web_host, db_host = f"web.{ns}.svc.cluster.local", f"db.{ns}.svc.cluster.local"
    web_ip = kube_cluster.get("service", "web", ns)["spec"]["clusterIP"]

    # 1. Workloads and Services arrive over delta xDS.
    def all_there(d: dict[str, Any]) -> bool:
        return {web_uid, db_uid} <= by_uid(d).keys() and {web_host, db_host} <= by_host(d).keys()

    dump = await dump_where(zt, "to hold our workloads and services", all_there)
    web = by_uid(dump)[web_uid]
    assert (web["name"], web["namespace"], web["serviceAccount"]) == ("web-1", ns, "web")
    assert web["workloadIps"] == [WEB_IP]
    assert web["node"] == nodes_of(ns)[0]
    assert web["protocol"] == "HBONE"
    assert web["status"] == "Healthy"
    db = by_uid(dump)[db_uid]
    assert (db["serviceAccount"], db["workloadIps"], db["protocol"]) == ("db", [DB_IP], "TCP")
    svc = by_host(dump)[web_host]
    assert (svc["name"], svc["namespace"]) == ("web", ns)
    assert any(vip.endswith(f"/{web_ip}") for vip in svc["vips"]), svc["vips"]
    assert svc["ports"] == {"80": 8080}
    assert web_uid in json.dumps(svc.get("endpoints")), svc.get("endpoints")

    # ... and our Authorization resource, attached to the workload it selects.
    policies = {f"{p['namespace']}/{p['name']}": p for p in dump.get("policies") or []}
    policy = policies.get(f"{ns}/web-from-db")
    assert policy is not None, sorted(policies)
    assert (policy["scope"], policy["action"], policy["dryRun"]) == ("WorkloadSelector", "Allow", False)
    assert json.dumps(policy["rules"], sort_keys=True) == json.dumps(
        [[[{"destinationPorts": [8080]}], [{"principals": [{"Exact": f"cluster.local/ns/{ns}/sa/db"}]}]]],
        sort_keys=True,
    )
    assert web.get("authorizationPolicies") == [f"{ns}/web-from-db"]

    # 2. A certificate for the HBONE workload on ztunnel's node, from our CA, chained to our root.
    web_id = f"spiffe://cluster.local/ns/{ns}/sa/web"

    async def web_cert() -> dict[str, Any] | None:
        certs = {c["identity"]: c for c in (await zt.config_dump()).get("certificates") or []}
        cert = certs.get(web_id)
        return cert if cert and cert.get("certChain") else None

    cert = await eventually(zt, f"to hold a certificate for {web_id}", web_cert)
    assert cert["state"] == "Available", cert["state"]
    leaf = dumped_cert(cert["certChain"][0])
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == [web_id]
    ours = x509.load_pem_x509_certificate(istiod.ca.ca.roots_pem)
    roots = [dumped_cert(r) for r in cert["rootCerts"]]
    assert ours in roots
    assert leaf.issuer == ours.subject
    assert metric(istiod, "citadel_server_success_cert_issuance_count_total") >= 1
    dumped_ids = {c["identity"] for c in (await zt.config_dump()).get("certificates") or []}
    assert f"spiffe://cluster.local/ns/{ns}/sa/db" not in dumped_ids  # not on its node, not HBONE

    # 3. Updates and removals (delta) are followed.
    svc_obj = kube_cluster.get("service", "web", ns)
    svc_obj["spec"]["ports"].append({"name": "grpc", "port": 90, "targetPort": 9090})
    await asyncio.to_thread(kube_cluster.apply, svc_obj, ns)
    await dump_where(
        zt, "to see the Service's new port",
        lambda d: by_host(d).get(web_host, {}).get("ports") == {"80": 8080, "90": 9090},
    )  # fmt: skip
    await force_delete_pod(kube_cluster, ns, "db-1")
    await dump_where(zt, "to drop the deleted pod", lambda d: db_uid not in by_uid(d))

    # 4. Both ends agree nothing was rejected, and ztunnel acknowledged what it got.
    nacks = metric(istiod, "pilot_total_xds_rejects_total")
    assert nacks == 0, f"istiod counted {nacks} NACKs; ztunnel log:\n{zt.log_tail()}"
    assert not istiod.server.nacked.is_set()
    assert zt.nacks() == []
    assert "type=Ack" in zt.log()
    assert metric(istiod, "pilot_xds") >= 1  # ztunnel's stream is still connected
    _, body = await zt.get(15021, "/healthz/ready")
    assert "state manager" not in body, body  # xDS synced; proxy/dns wait for ZDS, which nobody serves here


async def test_rust_ztunnel_takes_service_entries_and_workload_entries(
    ztunnel_binary: Path,
    istiod: App,
    rust_ztunnel: RustZtunnel,
    mesh_objects: str,
) -> None:
    ns, zt = mesh_objects, rust_ztunnel
    vm_uid = f"Kubernetes/networking.istio.io/WorkloadEntry/{ns}/api-vm"
    ext_uid = f"Kubernetes/networking.istio.io/ServiceEntry/{ns}/ext/{EXT_BACKEND}"

    def all_there(d: dict[str, Any]) -> bool:
        return {vm_uid, ext_uid} <= by_uid(d).keys() and {API_HOST, EXT_HOST} <= by_host(d).keys()

    dump = await dump_where(zt, "to hold the ServiceEntry services and workloads", all_there)
    vm = by_uid(dump)[vm_uid]
    assert (vm["name"], vm["namespace"], vm["serviceAccount"]) == ("api-vm", ns, "api")
    assert vm["workloadIps"] == [VM_IP]
    assert vm["locality"] == {"region": "region1", "zone": "zone1", "subzone": "sub1"}
    api = by_host(dump)[API_HOST]
    assert (api["name"], api["namespace"]) == ("api", ns)
    assert api["vips"] == [f"/{API_VIP}"]
    assert api["ports"] == {"443": 8443}
    assert vm_uid in json.dumps(api.get("endpoints")), api.get("endpoints")
    ext = by_uid(dump)[ext_uid]
    assert ext["workloadIps"] == []
    assert ext["hostname"] == EXT_BACKEND
    assert ext_uid in json.dumps(by_host(dump)[EXT_HOST].get("endpoints"))
    assert_no_rejects(zt, istiod)


async def test_rust_ztunnel_takes_waypoint_addresses(
    ztunnel_binary: Path,
    istiod: App,
    rust_ztunnel: RustZtunnel,
    kube_cluster: KubeCluster,  # noqa: F811
    mesh_objects: str,
) -> None:
    """A waypoint (a Gateway whose status has a Hostname address, as istiod's controller writes once the
    waypoint runs) used by web's Service and pod: both carry a hostname GatewayAddress to ztunnel."""
    ns, zt, k = mesh_objects, rust_ztunnel, kube_cluster
    web_uid, web_host = f"Kubernetes//Pod/{ns}/web-1", f"web.{ns}.svc.cluster.local"
    waypoint_host = f"waypoint.{ns}.svc.cluster.local"
    gateway = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "waypoint", "namespace": ns, "labels": {"istio.io/waypoint-for": "all"}},
        # Not istio-waypoint: our waypoint controller must not deploy it (no kubelet would run it).
        "spec": {"gatewayClassName": "interop-unmanaged",
                 "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]},
    }  # fmt: skip
    status = {"status": {"addresses": [{"type": "Hostname", "value": waypoint_host}]}}
    await asyncio.to_thread(k.apply, gateway, ns)
    await asyncio.to_thread(
        k.kubectl, "patch", "gateway", "waypoint", "-n", ns, "--subresource=status", "--type=merge",
        "-p", json.dumps(status),
    )  # fmt: skip
    for kind, name in (("service", "web"), ("pod", "web-1")):
        await asyncio.to_thread(k.kubectl, "label", kind, name, "-n", ns, "istio.io/use-waypoint=waypoint")

    def both_use_it(d: dict[str, Any]) -> bool:
        return bool(by_uid(d).get(web_uid, {}).get("waypoint")) and bool(
            by_host(d).get(web_host, {}).get("waypoint")
        )

    dump = await dump_where(zt, "to see web's waypoint", both_use_it)
    expected = {"destination": f"{ns}/{waypoint_host}", "hboneMtlsPort": 15008}
    assert by_uid(dump)[web_uid]["waypoint"] == expected
    assert by_host(dump)[web_host]["waypoint"] == expected
    assert_no_rejects(zt, istiod)


@pytest.mark.parametrize("istiod", [{"max_connection_age_s": 2.0}], indirect=True)
async def test_rust_ztunnel_follows_connection_rotation(
    ztunnel_binary: Path,
    istiod: App,
    rust_ztunnel: RustZtunnel,
    kube_cluster: KubeCluster,  # noqa: F811
    mesh_objects: str,
) -> None:
    """istiod rotates xDS connections (GOAWAY after MAX_CONNECTION_AGE, here 2 s, then a grace period):
    ztunnel reconnects, keeps its config, and the new stream carries changes."""
    ns, zt = mesh_objects, rust_ztunnel
    web_uid, db_uid = f"Kubernetes//Pod/{ns}/web-1", f"Kubernetes//Pod/{ns}/db-1"

    async def reconnected() -> bool | None:
        return True if zt.log().count("Stream established") >= 2 else None

    await eventually(zt, "to reconnect after the connection was rotated", reconnected, within_s=60)
    dump = await zt.config_dump()
    assert {web_uid, db_uid} <= by_uid(dump).keys()
    await force_delete_pod(kube_cluster, ns, "db-1")
    await dump_where(zt, "to drop the deleted pod over the new stream", lambda d: db_uid not in by_uid(d))
    assert web_uid in by_uid(await zt.config_dump())
    assert_no_rejects(zt, istiod)


async def test_rust_ztunnel_takes_converted_peer_authentication(
    ztunnel_binary: Path,
    istiod: App,
    rust_ztunnel: RustZtunnel,
    kube_cluster: KubeCluster,  # noqa: F811
    mesh_objects: str,
) -> None:
    """PeerAuthentications become Authorization resources (the static STRICT policy and a converted
    port-level one); ztunnel takes them and the workload references."""
    ns, zt = mesh_objects, rust_ztunnel
    web_uid = f"Kubernetes//Pod/{ns}/web-1"
    strict_key, converted_key = (
        "istio-system/istio_converted_static_strict",
        f"{ns}/converted_peer_authentication_web",
    )
    pas = [
        {"metadata": {"name": "default", "namespace": ns}, "spec": {"mtls": {"mode": "STRICT"}}},
        {"metadata": {"name": "web", "namespace": ns},
         "spec": {"selector": {"matchLabels": {"app": "web"}},
                  "portLevelMtls": {"8080": {"mode": "PERMISSIVE"}}}},
    ]  # fmt: skip
    pas = [{"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication", **pa} for pa in pas]
    await asyncio.to_thread(kube_cluster.apply, pas, ns)

    def converted(d: dict[str, Any]) -> bool:
        keys = {f"{p['namespace']}/{p['name']}" for p in d.get("policies") or []}
        return {strict_key, converted_key} <= keys

    dump = await dump_where(zt, "to hold the converted PeerAuthentication policies", converted)
    policies = {f"{p['namespace']}/{p['name']}": p for p in dump["policies"]}
    assert (policies[converted_key]["action"], policies[converted_key]["scope"]) == (
        "Deny",
        "WorkloadSelector",
    )
    assert policies[strict_key]["action"] == "Deny"
    # Deny callers without a peer identity (plaintext); the port-level one exempts 8080 (PERMISSIVE).
    no_identity: list[dict[str, Any]] = [{"notPrincipals": [{"Presence": []}]}]
    assert policies[strict_key]["rules"] == [[no_identity]]
    assert policies[converted_key]["rules"] == [[[{"notDestinationPorts": [8080]}], no_identity]]
    assert converted_key in by_uid(dump)[web_uid].get("authorizationPolicies", [])
    assert_no_rejects(zt, istiod)


class SlowPodList(KubeClient):
    """A client whose list of Pods takes ``delay_s`` longer, like a busy API server or a big cluster."""

    delay_s = 0.0

    def list_all(
        self, resource: Resource, namespace: str | None = None, **query: Any
    ) -> tuple[list[Any], str]:
        if resource.plural == "pods":
            time.sleep(self.delay_s)  # runs in the informer's own thread
        return super().list_all(resource, namespace, **query)


async def restart_istiod(
    istiod: App, zt: RustZtunnel, k: KubeCluster, pod_list_delay_s: float
) -> tuple[App, int]:
    """Stop ``istiod``, delete db-1 while it is away, start a new istiod on the same port (its initial Pod
    list ``pod_list_delay_s`` slower); returns it and where ztunnel's log stood at the restart."""
    ns = istiod.settings.namespace  # istiod runs in the test's namespace
    web_uid, db_uid = f"Kubernetes//Pod/{ns}/web-1", f"Kubernetes//Pod/{ns}/db-1"

    await dump_where(zt, "to hold web-1 and db-1", lambda d: {web_uid, db_uid} <= by_uid(d).keys())
    port, host = istiod.addresses["xds"], istiod.settings.secure_xds_addr.rpartition(":")[0]
    await istiod.shutdown()
    await force_delete_pod(k, ns, "db-1")
    mark = len(zt.log())
    client = SlowPodList.from_config(str(k.kubeconfig))
    assert isinstance(client, SlowPodList)
    client.delay_s = pod_list_delay_s
    second = await build(
        dataclasses.replace(istiod.settings, secure_xds_addr=f"{host}:{port}"), kube_client=client
    )
    try:

        async def settled() -> bool | None:
            workloads = by_uid(await zt.config_dump())
            back = "Stream established" in zt.log()[mark:] and second.readiness.ready
            return True if back and db_uid not in workloads and web_uid in workloads else None

        await eventually(zt, "to reconnect to the restarted istiod and drop db-1", settled)
    except BaseException:
        await second.shutdown()
        raise
    return second, mark


def deleted_since(zt: RustZtunnel, mark: int) -> list[str]:
    """The workload/service names ztunnel was told to delete since ``mark`` (its debug log)."""
    lines = zt.log()[mark:].splitlines()
    return [line.split("handling delete", 1)[1].strip() for line in lines if "handling delete" in line]


async def test_rust_ztunnel_resumes_after_istiod_restart(
    ztunnel_binary: Path,
    istiod: App,
    rust_ztunnel: RustZtunnel,
    kube_cluster: KubeCluster,  # noqa: F811
) -> None:
    """A new istiod (same address) while a pod was deleted meanwhile: ztunnel resumes with
    ``initial_resource_versions`` and receives that removal; no NACK."""
    zt = rust_ztunnel
    second, mark = await restart_istiod(istiod, zt, kube_cluster, 0.0)
    try:
        assert "sending initial request\tresources=0" not in zt.log()[mark:]  # it resumed with what it holds
        assert f"Kubernetes//Pod/{istiod.settings.namespace}/db-1" in deleted_since(zt, mark)
        assert_no_rejects(zt, second)
    finally:
        await second.shutdown()


async def test_rust_ztunnel_keeps_live_workloads_across_slow_istiod_restart(
    ztunnel_binary: Path,
    istiod: App,
    rust_ztunnel: RustZtunnel,
    kube_cluster: KubeCluster,  # noqa: F811
) -> None:
    """The same with the new istiod's initial Pod list 3 s slow: ztunnel must be told to delete db-1 and
    nothing else. istiod refuses streams (UNAVAILABLE) until its informers have synced, as upstream does;
    before that gate, ztunnel was told to delete its live workloads (8 in one full run even without delay)."""
    zt = rust_ztunnel
    second, mark = await restart_istiod(istiod, zt, kube_cluster, 3.0)
    try:
        ns = istiod.settings.namespace  # earlier tests' namespaces may be going away meanwhile
        assert [d for d in deleted_since(zt, mark) if f"/{ns}/" in d] == [f"Kubernetes//Pod/{ns}/db-1"]
    finally:
        await second.shutdown()
