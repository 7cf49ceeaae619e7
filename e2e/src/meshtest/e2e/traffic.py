"""Driving traffic from pods and reading component endpoints.

A request *from* a pod goes through the echo server's ``/_forward`` endpoint (upstream's ForwardEcho): on the
local cluster the runner calls the pod IP directly (pod routes exist in the root namespace), elsewhere through
the API server's pod proxy. Admin endpoints bound to localhost (ztunnel ``/config_dump`` on 15000) are read
inside the pod's network namespace (local) or with ``kubectl exec`` (kind).
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from meshtest.cluster.config import pod_netns_name
from meshtest.echo import EchoResponse, parse_responses
from meshtest.kube import KubeCluster

Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class PodRef:
    namespace: str
    name: str
    ip: str
    uid: str
    node: str

    @classmethod
    def of(cls, pod: Obj) -> PodRef:
        meta, status = pod["metadata"], pod.get("status", {})
        return cls(
            meta["namespace"],
            meta["name"],
            status.get("podIP", ""),
            meta["uid"],
            pod["spec"].get("nodeName", ""),
        )


def pod_http(kube: KubeCluster, pod: PodRef, port: int, path: str, timeout: float = 60) -> tuple[int, str]:
    """GET ``path`` on the pod's ``port`` (status, body)."""
    if kube.layout is not None:
        try:
            with urllib.request.urlopen(f"http://{pod.ip}:{port}{path}", timeout=timeout) as resp:
                return resp.status, resp.read().decode(errors="replace")
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(errors="replace")
        except OSError as err:
            return 0, f"{type(err).__name__}: {err}"
    raw = f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}:{port}/proxy{path}"
    proc = kube.kubectl("get", "--raw", raw, check=False, timeout=timeout)
    return (200 if proc.returncode == 0 else 0), proc.stdout or proc.stderr


def forward(
    kube: KubeCluster,
    src: PodRef,
    url: str,
    count: int = 1,
    *,
    headers: dict[str, str] | None = None,
    timeout: float = 5,
    new_connection: bool = True,
) -> list[EchoResponse]:
    """``count`` requests from ``src`` to ``url``; failures come back as responses with an ``Error`` field."""
    query = {
        "url": url,
        "count": str(count),
        "timeout": str(timeout),
        "newConnection": "true" if new_connection else "false",
    }
    if headers:
        query["headers"] = ",".join(f"{k}:{v}" for k, v in headers.items())
    status, body = pod_http(
        kube, src, 8080, "/_forward?" + urllib.parse.urlencode(query), timeout=count * timeout + 30
    )
    if status != 200:
        raise AssertionError(f"/_forward on {src.namespace}/{src.name} answered {status}: {body[:500]}")
    return parse_responses(body)


def ok(responses: list[EchoResponse]) -> list[EchoResponse]:
    return [r for r in responses if r.code == "200"]


def failed(responses: list[EchoResponse]) -> list[EchoResponse]:
    return [r for r in responses if r.code != "200"]


def in_pod_netns(
    kube: KubeCluster, pod: PodRef, argv: list[str], host_network: bool = False, timeout: float = 30
) -> str:
    """Run ``argv`` in the pod's network namespace (local) or inside its first container (kind)."""
    if kube.layout is None:
        return kube.kubectl("exec", "-n", pod.namespace, pod.name, "--", *argv, timeout=timeout).stdout
    if host_network:
        netns = kube.layout.node(pod.node).netns_path
    else:  # the local cluster's node agent names each pod's netns after its UID (meshtest.cluster.pods)
        netns = f"/run/netns/{pod_netns_name(pod.uid, kube.layout.instance)}"
    proc = subprocess.run(
        ["nsenter", f"--net={netns}", "--", *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} in {pod.namespace}/{pod.name}: {proc.stderr.strip()}")
    return proc.stdout


def admin_get(kube: KubeCluster, pod: PodRef, path: str, port: int = 15000) -> str:
    """A localhost-only admin endpoint (ztunnel/waypoint ``/config_dump``)."""
    script = (
        "import sys,urllib.request;"
        f"sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:{port}{path}',timeout=10).read().decode())"
    )
    if kube.layout is None:
        return in_pod_netns(kube, pod, ["python", "-c", script])
    return in_pod_netns(kube, pod, ["curl", "-sf", "--max-time", "10", f"http://127.0.0.1:{port}{path}"])


def config_dump(kube: KubeCluster, pod: PodRef) -> Obj:
    return dict(json.loads(admin_get(kube, pod, "/config_dump")))


def metrics(kube: KubeCluster, pod: PodRef, port: int = 15020) -> str:
    status, body = pod_http(kube, pod, port, "/metrics", timeout=20)
    if status != 200:
        raise AssertionError(f"metrics of {pod.namespace}/{pod.name}:{port} answered {status}: {body[:300]}")
    return body
