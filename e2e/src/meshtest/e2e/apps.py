"""Manifests of the test apps and mesh config the scenarios apply: echo servers (upstream's ``app`` image,
spec deploy-and-e2e.md §4.3) pinned to nodes, waypoint Gateways, routes and policies. Pure functions."""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]
AMBIENT = {"istio.io/dataplane-mode": "ambient"}


def namespace(name: str, labels: dict[str, str] | None = None) -> Obj:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}}


def echo(
    name: str,
    image: str,
    *,
    version: str = "v1",
    node: str | None = None,
    service: str | None = None,
    account: str | None = None,
    pod_labels: dict[str, str] | None = None,
    replicas: int = 1,
) -> list[Obj]:
    """SA + Deployment (+ Service ``service``, default ``name``; ``""`` for none) of an echo server."""
    account = account or name
    labels = {"app": service or name, "version": version, **(pod_labels or {})}
    selector = {"app": labels["app"], "version": version}
    spec: Obj = {
        "serviceAccountName": account,
        "terminationGracePeriodSeconds": 5,
        "containers": [
            {
                "name": "app",
                "image": image,
                "args": ["--port", "8080", "--tcp", "9090", "--version", version],
                "ports": [{"containerPort": 8080, "name": "http"}, {"containerPort": 9090, "name": "tcp"}],
                "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
            }
        ],
    }
    if node:
        spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    out: list[Obj] = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": account}},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name if service is None else f"{name}-{version}"},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": selector},
                "template": {"metadata": {"labels": labels}, "spec": spec},
            },
        },
    ]
    if service != "":
        out.append(svc(service or name))
    return out


def svc(name: str, selector: dict[str, str] | None = None, labels: dict[str, str] | None = None) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {
            "selector": selector or {"app": name},
            "ports": [
                {"name": "http", "port": 80, "targetPort": 8080, "appProtocol": "http"},
                {"name": "tcp", "port": 9090, "targetPort": 9090, "appProtocol": "tcp"},
            ],
        },
    }


def waypoint(name: str = "waypoint", for_: str = "service") -> Obj:
    """The Gateway ``istioctl waypoint apply`` writes (deploy-and-e2e.md §3)."""
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": name, "labels": {"istio.io/waypoint-for": for_}},
        "spec": {
            "gatewayClassName": "istio-waypoint",
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
        },
    }


def weighted_route(service: str, backends: dict[str, int]) -> Obj:
    """GAMMA HTTPRoute on a Service: weighted split across per-version Services."""
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": service},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": service, "port": 80}],
            "rules": [{"backendRefs": [{"name": b, "port": 80, "weight": w} for b, w in backends.items()]}],
        },
    }


def principal(namespace: str, account: str, trust_domain: str = "cluster.local") -> str:
    return f"{trust_domain}/ns/{namespace}/sa/{account}"


def allow_from(name: str, app: str, principals: list[str]) -> Obj:
    """L4 ALLOW on pods ``app=<app>`` for the given principals (enforced by the destination ztunnel)."""
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": app}},
            "action": "ALLOW",
            "rules": [{"from": [{"source": {"principals": principals}}]}],
        },
    }


def deny_path(name: str, service: str, path: str) -> Obj:
    """L7 DENY at the waypoint (targetRefs Service): requests to ``path`` get 403."""
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name},
        "spec": {
            "targetRefs": [{"kind": "Service", "group": "", "name": service}],
            "action": "DENY",
            "rules": [{"to": [{"operation": {"paths": [path]}}]}],
        },
    }


def strict(name: str = "strict", selector_app: str | None = None) -> Obj:
    spec: Obj = {"mtls": {"mode": "STRICT"}}
    if selector_app:
        spec["selector"] = {"matchLabels": {"app": selector_app}}
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "PeerAuthentication",
        "metadata": {"name": name},
        "spec": spec,
    }
