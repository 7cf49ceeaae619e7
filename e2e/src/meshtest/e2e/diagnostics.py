"""What the suite collects when a scenario fails: Events and pods of the test namespaces and istio-system,
every mesh component's log, and each ztunnel's ``/config_dump`` (its view of workloads, services, policies and
certificates). Written to ``<dir>/<test>.txt`` and attached to the pytest report."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from meshtest.e2e.traffic import PodRef, config_dump
from meshtest.kube import KubeCluster

COMPONENTS = (
    ("app=istiod", "discovery"),
    ("app=ztunnel", "istio-proxy"),
    ("k8s-app=istio-cni-node", "install-cni"),
)


def collect(kube: KubeCluster, namespaces: Sequence[str], mesh_namespace: str = "istio-system") -> str:
    parts = []
    columns = (
        "NAME:.metadata.name,NODE:.spec.nodeName,IP:.status.podIP,"
        "REDIRECTION:.metadata.annotations.ambient\\.istio\\.io/redirection"
    )
    for ns in (*namespaces, mesh_namespace):
        try:
            table = kube.kubectl("get", "pods", "-n", ns, "-o", f"custom-columns={columns}", check=False)
            parts.append(f"===== pods of {ns}\n{table.stdout}")
            parts.append(f"===== namespace {ns}\n{kube.dump(ns)}")
        except Exception as err:  # a dump must never hide the test's own failure
            parts.append(f"===== namespace {ns}: dump failed: {err}")
    for selector, container in COMPONENTS:
        try:
            pods = kube.get("pods", namespace=mesh_namespace, selector=selector)["items"]
        except Exception as err:
            parts.append(f"===== {selector}: {err}")
            continue
        for pod in pods:
            ref = PodRef.of(pod)
            log = kube.pod_log(ref.namespace, ref.name, container)
            parts.append(
                f"===== log {ref.name}/{container} (last 200 lines)\n" + "\n".join(log.splitlines()[-200:])
            )
            if selector == "app=ztunnel":
                try:
                    dump = json.dumps(config_dump(kube, ref), indent=1, sort_keys=True)
                except Exception as err:
                    dump = f"unavailable: {err}"
                parts.append(f"===== /config_dump {ref.name}\n{dump}")
    return "\n".join(parts)


def write(text: str, directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.txt"
    path.write_text(text)
    return path
