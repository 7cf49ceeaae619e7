"""``scripts/demo``: the README's first command. Brings up the local cluster, installs the mesh with
``helm install ambient ./helm/ambient -n istio-system --create-namespace``, deploys a small app into an
ambient namespace (``web`` and ``intruder`` call ``api``, which has two versions and a waypoint), sends
traffic and prints what happened: workloads and their SPIFFE identities, that the traffic was mTLS, one
request allowed and one denied by policy, and the split seen through the waypoint. Re-running it reuses what
is already there.
"""

from __future__ import annotations

import collections
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from meshtest.cluster.config import ClusterLayout
from meshtest.cluster.control import Cluster, ensure_binaries
from meshtest.e2e import apps, steps
from meshtest.e2e.mesh import NAMESPACE, RELEASE, Mesh, exclusive
from meshtest.e2e.tools import chart
from meshtest.e2e.traffic import PodRef, config_dump, forward, metrics
from meshtest.kube import KubeCluster

NS = "ambient-demo"
IMAGE = "localhost:5000/app:latest"
T = TypeVar("T")


def say(text: str = "") -> None:
    print(text, flush=True)


@contextmanager
def step(title: str) -> Iterator[None]:
    """One progress line per step, with its duration (long steps say so before they start)."""
    start = time.monotonic()
    print(f"==> {title} ...", end="", flush=True)
    try:
        yield
    except BaseException:
        print(" FAILED", flush=True)
        raise
    print(f" done ({time.monotonic() - start:.0f}s)", flush=True)


def cluster_up() -> KubeCluster:
    layout = ClusterLayout.default()
    cluster = Cluster(layout)
    if not all(layout.binary(b).exists() for b in ("kube-apiserver", "kubectl", "helm")):
        say("==> building the local cluster's Kubernetes binaries (first run only; several minutes)")
        ensure_binaries(layout)
    with step("local cluster: reusing it, or starting etcd, API server, controllers, CoreDNS and 3 nodes"):
        cluster.ensure_up()
    say(f"    KUBECONFIG={layout.kubeconfig}")
    return KubeCluster(layout.kubeconfig, layout)


def install_mesh(kube: KubeCluster) -> Mesh:
    mesh = Mesh(kube)
    if mesh.installed():
        with step(f"helm upgrade {RELEASE} ./helm/ambient -n {NAMESPACE} (already installed)"):
            mesh.helm_install(chart("ambient"), upgrade=True)
    else:
        with step(f"helm install {RELEASE} ./helm/ambient -n {NAMESPACE} --create-namespace"):
            mesh.adopt_crds()
            mesh.helm_install(chart("ambient"))
    try:
        with step("waiting for istiod, and ztunnel + istio-cni on every node"):
            mesh.wait_ready()
    except AssertionError:
        explain_not_ready(kube, mesh)
        raise
    return mesh


def explain_not_ready(kube: KubeCluster, mesh: Mesh) -> None:
    """Which mesh pods are not ready, and the end of their logs: the first thing an operator would look at."""
    say(kube.kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide", check=False).stdout)
    for pod in mesh.pods(""):
        statuses = pod.get("status", {}).get("containerStatuses", [])
        for status in statuses:
            if not status.get("ready"):
                log = kube.pod_log(NAMESPACE, pod["metadata"]["name"], status["name"])
                tail = "\n".join("    " + line for line in log.splitlines()[-15:])
                say(
                    f"--- {pod['metadata']['name']}/{status['name']} is not ready; its log ends with:\n{tail}"
                )


def app_objects(client_node: str | None = None, server_node: str | None = None) -> list[dict[str, Any]]:
    """Clients on one worker and ``api`` on the other, so the mesh hops cross nodes."""
    objs = (
        apps.echo("web", IMAGE, node=client_node)
        + apps.echo("intruder", IMAGE, node=client_node)
        + apps.echo("api", IMAGE, version="v1", service="api", node=server_node)
        + apps.echo("api", IMAGE, version="v2", service="", account="api", node=server_node)
        + [
            apps.svc("api-v1", {"app": "api", "version": "v1"}),
            apps.svc("api-v2", {"app": "api", "version": "v2"}),
        ]
    )
    for obj in objs:  # the api Service goes through the waypoint
        if obj["kind"] == "Service" and obj["metadata"]["name"] == "api":
            obj["metadata"]["labels"] = {"istio.io/use-waypoint": "api-waypoint"}
    return objs


def policy() -> dict[str, Any]:
    """At the waypoint: only ``web`` may call ``api``."""
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "api-from-web"},
        "spec": {
            "targetRefs": [{"kind": "Service", "group": "", "name": "api"}],
            "action": "ALLOW",
            "rules": [{"from": [{"source": {"principals": [apps.principal(NS, "web")]}}]}],
        },
    }


def deploy_app(kube: KubeCluster) -> dict[str, PodRef]:
    with step(f"deploying the sample app in namespace {NS} (istio.io/dataplane-mode=ambient)"):
        kube.apply(apps.namespace(NS, dict(apps.AMBIENT)))
        workers = kube.workers()
        kube.apply(app_objects(*(workers[:2] if len(workers) >= 2 else ())), NS)
        pods = {name: steps.pod(kube, NS, f"app={name}") for name in ("web", "intruder")}
        kube.ready_pods(NS, "app=api", 2)
        for ref in [
            *pods.values(),
            *(PodRef.of(p) for p in kube.get("pods", namespace=NS, selector="app=api")["items"]),
        ]:
            steps.wait_redirection(kube, ref, "enabled")
    with step("creating the waypoint for api (Gateway class istio-waypoint), route and policy"):
        kube.apply(apps.waypoint("api-waypoint"), NS)
        kube.wait_for("api-waypoint Programmed", lambda: _programmed(kube, "api-waypoint"), 180)
        kube.apply([apps.weighted_route("api", {"api-v1": 80, "api-v2": 20}), policy()], NS)
    return pods


def _programmed(kube: KubeCluster, name: str) -> bool:
    gw = kube.get("gateway", name, NS)
    return any(
        c.get("type") == "Programmed" and c.get("status") == "True"
        for c in gw.get("status", {}).get("conditions", [])
    )


def attempt(what: str, fn: Callable[[], T]) -> T | None:
    try:
        return fn()
    except Exception as err:  # the demo reports and goes on: one broken part should not hide the rest
        say(f"    !! {what}: {err}")
        return None


def show_workloads(kube: KubeCluster, mesh: Mesh) -> None:
    say("\nWorkloads in the mesh and their identities (from each node's ztunnel /config_dump):")
    seen = set()
    for zt in mesh.pods("app=ztunnel"):
        dump = attempt("config_dump", lambda z=zt: config_dump(kube, PodRef.of(z)))  # type: ignore[misc]
        if not dump:
            continue
        for wl in dump.get("workloads", []):
            if wl.get("namespace") != NS or wl["name"] in seen:
                continue
            seen.add(wl["name"])
            spiffe = (
                f"spiffe://{wl.get('trustDomain', 'cluster.local')}/ns/{NS}/sa/{wl.get('serviceAccount')}"
            )
            say(
                f"  {wl['name']:<34} {','.join(wl.get('workloadIps', [])):<13} {wl.get('protocol', '?'):<6} "
                f"node={wl.get('node', '?'):<7} {spiffe}"
            )
        for cert in dump.get("certificates", []):
            if f"/ns/{NS}/" in str(cert.get("identity")):
                say(f"    cert on {zt['spec']['nodeName']}: {cert['identity']} ({cert['state']})")


def show_traffic(kube: KubeCluster, mesh: Mesh, pods: dict[str, PodRef]) -> None:
    url = f"http://api.{NS}"
    say("\nTraffic:")
    allowed = attempt(
        "web -> api",
        lambda: steps.wait_traffic(kube, pods["web"], url, steps.all_ok, "web allowed", count=1, timeout=90),
    )
    if allowed:
        say(
            f"  web      -> api : {allowed[0].code} (allowed: api-from-web admits {apps.principal(NS, 'web')})"  # noqa: E501
        )
    denied = attempt(
        "intruder -> api",
        lambda: steps.wait_traffic(
            kube,
            pods["intruder"],
            url,
            lambda rs: [r.code for r in rs] == ["403"],
            "intruder denied",
            count=1,
            timeout=90,
        ),
    )
    if denied:
        say(
            f"  intruder -> api : {denied[0].code} (denied at the waypoint: {apps.principal(NS, 'intruder')} "
            "is not in the policy)"
        )
    split = attempt("split", lambda: forward(kube, pods["web"], url, 50))
    if split:
        versions = collections.Counter(r.version or r.code for r in split)
        through = sum("x-request-id" in r.request_headers for r in split)
        say(
            f"  web -> api x50 through api-waypoint, HTTPRoute 80/20: {dict(sorted(versions.items()))} "
            f"({through}/50 carried the waypoint's x-request-id)"
        )
    show_mtls(kube, mesh, pods)


def show_mtls(kube: KubeCluster, mesh: Mesh, pods: dict[str, PodRef]) -> None:
    say("\nmTLS (istio_tcp_connections_opened_total as every node's ztunnel reports it):")
    for zt in sorted((PodRef.of(p) for p in mesh.pods("app=ztunnel")), key=lambda z: z.node):
        text = attempt("metrics", lambda z=zt: metrics(kube, z))  # type: ignore[misc]
        for line in (text or "").splitlines():
            if (
                line.startswith("istio_tcp_connections_opened_total{")
                and f'destination_workload_namespace="{NS}"' in line
            ):
                labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
                if labels.get("source_principal", "unknown") == "unknown":
                    continue  # the demo's own (non-mesh) calls that drive the pods
                say(
                    f"  {labels.get('source_workload')} -> {labels.get('destination_workload')}: "
                    f"{labels.get('connection_security_policy')}, "
                    f"{labels.get('source_principal')} -> {labels.get('destination_principal')}, "
                    f"connections={line.rsplit(' ', 1)[-1]}"
                )


def look_further(kube: KubeCluster) -> None:
    redirection = "REDIRECTION:.metadata.annotations.ambient\\.istio\\.io/redirection"
    ztunnel_ip = f"kubectl -n {NAMESPACE} get pod -l app=ztunnel -o jsonpath='{{.items[0].status.podIP}}'"
    lines = [
        "",
        "Look further:",
        '  eval "$(uv run python -m meshtest.cluster env)"   # KUBECONFIG, PATH with the built kubectl/helm',
        "  kubectl get pods -A -o wide",
        f"  kubectl -n {NS} get pods -o custom-columns=NAME:.metadata.name,{redirection}",
        f"  kubectl -n {NS} get gateway,httproute,authorizationpolicy",
        f"  helm -n {NAMESPACE} status {RELEASE}",
        "  # ztunnel metrics (Prometheus text):",
        f"  curl -s http://$({ztunnel_ip}):15020/metrics | grep istio_tcp",
        "  # every ztunnel's /config_dump (admin is localhost-only: read inside the pod's netns):",
        '  uv run python -c "from meshtest.e2e.demo import dump; dump()"',
        f"  uv run python -m meshtest.cluster logs {NAMESPACE}/<pod> -c <container>   # any pod's log",
        f"Clean up: helm uninstall {RELEASE} -n {NAMESPACE}; kubectl delete ns {NS}",
        "          uv run python -m meshtest.cluster down",
    ]
    say("\n".join(lines))


def dump() -> None:
    """Print every ztunnel's /config_dump (for the "look further" hint)."""
    layout = ClusterLayout.default()
    kube = KubeCluster(layout.kubeconfig, layout)
    for zt in Mesh(kube).pods("app=ztunnel"):
        say(f"# {zt['metadata']['name']} on {zt['spec']['nodeName']}")
        say(json.dumps(config_dump(kube, PodRef.of(zt)), indent=1, sort_keys=True))


def main() -> int:
    start = time.monotonic()
    try:
        kube = cluster_up()
        with exclusive(ClusterLayout.default().cache):  # not while an e2e session owns the mesh
            mesh = install_mesh(kube)
            pods = deploy_app(kube)
            show_workloads(kube, mesh)
            show_traffic(kube, mesh, pods)
    except (subprocess.SubprocessError, RuntimeError, AssertionError, OSError) as err:
        say(f"\ndemo stopped: {err}")
        return 1
    look_further(kube)
    say(f"\n(demo took {time.monotonic() - start:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
