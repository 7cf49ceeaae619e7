"""Waypoint deployment, as pure functions: GatewayClass, Gateway → ServiceAccount/Deployment/Service, status.

Follows upstream's deployment controller for class ``istio-waypoint`` (behaviour.md §6.1, deploy-and-e2e.md
§5.1): objects named after the Gateway (overrides: annotations ``gateway.istio.io/name-override`` and
``gateway.istio.io/service-account``), owned by the Gateway (so Kubernetes garbage-collects them when it is
deleted), labelled ``gateway.networking.k8s.io/gateway-name``,
``gateway.networking.k8s.io/gateway-class-name``,
``gateway.istio.io/managed=istio.io-mesh-controller`` plus the Gateway's own labels (``istio.io/waypoint-for``
among them). The container runs our Python waypoint (``python -m waypoint``), configured by environment.

Status: ``Accepted`` always (for a Gateway of our class with an HBONE listener); ``Programmed`` and
``status.addresses`` (Service ClusterIP(s) and hostname) once the Deployment has a ready replica, which is
what makes the Gateway a waypoint for the index (behaviour.md §5.4).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshkit.settings import env

Obj = dict[str, Any]

__all__ = [
    "CLASS_NAME",
    "CONTROLLER_NAME",
    "DeploySettings",
    "class_status",
    "desired_objects",
    "gateway_class",
    "gateway_status",
    "is_waypoint_gateway",
    "object_names",
]

CLASS_NAME = "istio-waypoint"
CONTROLLER_NAME = "istio.io/mesh-controller"
MANAGED = "istio.io-mesh-controller"
GATEWAY_NAME = "gateway.networking.k8s.io/gateway-name"
GATEWAY_CLASS_NAME = "gateway.networking.k8s.io/gateway-class-name"
MANAGED_LABEL = "gateway.istio.io/managed"
NAME_OVERRIDE = "gateway.istio.io/name-override"
SA_OVERRIDE = "gateway.istio.io/service-account"
GATEWAY_API = "gateway.networking.k8s.io/v1"
STATUS_PORT = 15021
HBONE_PORT = 15008


@dataclass(frozen=True, slots=True)
class DeploySettings:
    """What the rendered objects need from istiod's settings."""

    image: str = env("WAYPOINT_IMAGE", "ambient/waypoint:latest", "Image of waypoint pods istiod deploys.")
    pull_policy: str = env("WAYPOINT_IMAGE_PULL_POLICY", "IfNotPresent", "imagePullPolicy of waypoint pods.")
    xds_address: str = env(
        "WAYPOINT_XDS_ADDRESS",
        "istiod.istio-system.svc:15012",
        "Where waypoint pods reach istiod (xDS + CA).",
    )
    trust_domain: str = "cluster.local"
    domain_suffix: str = "cluster.local"
    cluster_id: str = "Kubernetes"
    revision: str = env("REVISION", "default", "istio.io/rev annotation of waypoint pods.")
    termination_grace_s: int = env("WAYPOINT_TERMINATION_GRACE_S", 30, "terminationGracePeriodSeconds.")


def gateway_class() -> Obj:
    """The GatewayClass istiod creates when missing (and never updates)."""
    return {
        "apiVersion": GATEWAY_API,
        "kind": "GatewayClass",
        "metadata": {"name": CLASS_NAME},
        "spec": {"controllerName": CONTROLLER_NAME, "description": "The default Istio waypoint GatewayClass"},
    }


def _condition(kind: str, ok: bool, reason: str, message: str, generation: int, now: str) -> Obj:  # noqa: PLR0917
    return {
        "type": kind,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": now,
    }


def class_status(gc: Obj, now: str) -> Obj:
    generation = int((gc.get("metadata") or {}).get("generation") or 1)
    return {
        "conditions": [
            _condition("Accepted", True, "Accepted", "Handled by Istio controller", generation, now)
        ]
    }


def is_waypoint_gateway(gw: Obj) -> bool:
    return (gw.get("spec") or {}).get("gatewayClassName") == CLASS_NAME


def object_names(gw: Obj) -> tuple[str, str]:
    """(Deployment/Service name, ServiceAccount name)."""
    meta = gw.get("metadata") or {}
    annos = meta.get("annotations") or {}
    name = annos.get(NAME_OVERRIDE) or meta["name"]
    return name, annos.get(SA_OVERRIDE) or name


def _labels(gw: Obj) -> dict[str, str]:
    meta = gw.get("metadata") or {}
    infra = ((gw.get("spec") or {}).get("infrastructure") or {}).get("labels") or {}
    labels = {**(meta.get("labels") or {}), **infra}
    labels.update({GATEWAY_NAME: meta["name"], GATEWAY_CLASS_NAME: CLASS_NAME, MANAGED_LABEL: MANAGED})
    return labels


def _owner(gw: Obj) -> list[Obj]:
    meta = gw["metadata"]
    return [{"apiVersion": GATEWAY_API, "kind": "Gateway", "name": meta["name"], "uid": meta.get("uid", "")}]


def _meta(gw: Obj, name: str, labels: Mapping[str, str], annotations: Mapping[str, str] | None = None) -> Obj:
    out: Obj = {
        "name": name,
        "namespace": gw["metadata"]["namespace"],
        "labels": dict(labels),
        "ownerReferences": _owner(gw),
    }
    if annotations:
        out["annotations"] = dict(annotations)
    return out


def _service_ports(gw: Obj) -> list[Obj]:
    ports = [{"name": "status-port", "port": STATUS_PORT, "protocol": "TCP", "appProtocol": "tcp"}]
    for listener in (gw.get("spec") or {}).get("listeners") or []:
        if listener.get("protocol") == "HBONE":
            ports.append(
                {
                    "name": listener.get("name", "mesh"),
                    "port": int(listener.get("port", HBONE_PORT)),
                    "protocol": "TCP",
                    "appProtocol": "all",
                }
            )
    return ports


def _env(gw: Obj, sa: str, s: DeploySettings) -> list[Obj]:
    def field(path: str) -> Obj:
        return {"valueFrom": {"fieldRef": {"fieldPath": path}}}

    plain = {
        "WAYPOINT_NAME": gw["metadata"]["name"],
        "SERVICE_ACCOUNT": sa,
        "TRUST_DOMAIN": s.trust_domain,
        "XDS_ADDRESS": s.xds_address,
        "CA_ADDRESS": s.xds_address,
        "CA_ROOT_CA": "/var/run/secrets/istio/root-cert.pem",
        "AUTH_TOKEN": "/var/run/secrets/tokens/istio-token",
        "ISTIO_META_CLUSTER_ID": s.cluster_id,
        "ISTIO_META_INTERCEPTION_MODE": "REDIRECT",
        "PROXY_MODE": "dedicated",
    }
    env: list[Obj] = [
        {"name": "POD_NAME", **field("metadata.name")},
        {"name": "POD_NAMESPACE", **field("metadata.namespace")},
        {"name": "POD_IP", **field("status.podIP")},
    ]
    env.extend({"name": k, "value": v} for k, v in plain.items())
    return env


def _pod_spec(gw: Obj, name: str, sa: str, s: DeploySettings) -> Obj:
    container = {
        "name": "istio-proxy",
        "image": s.image,
        "imagePullPolicy": s.pull_policy,
        # upstream's arguments (§6.1); our image's entrypoint is `python -m waypoint`, which ignores them
        "args": [
            "proxy",
            "waypoint",
            "--domain",
            f"$(POD_NAMESPACE).svc.{s.domain_suffix}",
            "--serviceCluster",
            f"{sa}.$(POD_NAMESPACE)",
        ],
        "env": _env(gw, sa, s),
        "ports": [
            {"name": "mesh", "containerPort": HBONE_PORT, "protocol": "TCP"},
            {"name": "http-envoy-prom", "containerPort": 15020, "protocol": "TCP"},
            {"name": "status-port", "containerPort": STATUS_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": {
            "httpGet": {"path": "/healthz/ready", "port": STATUS_PORT},
            "periodSeconds": 2,
            "failureThreshold": 4,
        },
        "startupProbe": {
            "httpGet": {"path": "/healthz/ready", "port": STATUS_PORT},
            "periodSeconds": 1,
            "failureThreshold": 60,
        },
        # upstream's waypoint securityContext (deploy-and-e2e.md §1.5)
        "securityContext": {
            "privileged": False,
            "runAsUser": 1337,
            "runAsGroup": 1337,
            "runAsNonRoot": True,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "istio-token", "mountPath": "/var/run/secrets/tokens"},
            {"name": "istiod-ca-cert", "mountPath": "/var/run/secrets/istio"},
            # the only writable path: ssl loads the workload key from a file (meshkit.hbone.tls)
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    return {
        "serviceAccountName": sa,
        "terminationGracePeriodSeconds": s.termination_grace_s,
        "containers": [container],
        "volumes": [
            {
                "name": "istio-token",
                "projected": {
                    "sources": [
                        {
                            "serviceAccountToken": {
                                "audience": "istio-ca",
                                "expirationSeconds": 43200,
                                "path": "istio-token",
                            }
                        }
                    ]
                },
            },
            {"name": "istiod-ca-cert", "configMap": {"name": "istio-ca-root-cert"}},
            {"name": "tmp", "emptyDir": {}},
        ],
    }


def desired_objects(gw: Obj, s: DeploySettings) -> list[tuple[str, Obj]]:
    """``[(kind, object)]``: ServiceAccount, Deployment, Service for a waypoint Gateway (§6.1)."""
    name, sa = object_names(gw)
    labels = _labels(gw)
    pod_labels = {
        **labels,
        "sidecar.istio.io/inject": "false",
        "istio.io/dataplane-mode": "none",
        "service.istio.io/canonical-name": name,
        "service.istio.io/canonical-revision": "latest",
    }
    pod_annos = {
        "istio.io/rev": s.revision,
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "15020",
        "prometheus.io/path": "/stats/prometheus",
    }
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(gw, sa, labels)}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(gw, name, labels),
        "spec": {
            "selector": {"matchLabels": {GATEWAY_NAME: gw["metadata"]["name"]}},
            "template": {
                "metadata": {"labels": pod_labels, "annotations": pod_annos},
                "spec": _pod_spec(gw, name, sa, s),
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(gw, name, labels, {"networking.istio.io/traffic-distribution": "PreferClose"}),
        "spec": {
            "type": "ClusterIP",
            "selector": {GATEWAY_NAME: gw["metadata"]["name"]},
            "ipFamilyPolicy": "PreferDualStack",
            "ports": _service_ports(gw),
        },
    }
    return [("ServiceAccount", account), ("Deployment", deployment), ("Service", service)]


def _has_hbone_listener(gw: Obj) -> bool:
    return any(
        listener.get("protocol") == "HBONE" for listener in (gw.get("spec") or {}).get("listeners") or []
    )


def gateway_status(gw: Obj, service: Obj | None, deployment: Obj | None, s: DeploySettings, now: str) -> Obj:
    """The Gateway's ``status``: Accepted, Programmed, addresses (only once a replica is ready)."""
    generation = int((gw.get("metadata") or {}).get("generation") or 1)
    if not _has_hbone_listener(gw):
        msg = "a waypoint Gateway needs a listener with protocol HBONE (port 15008)"
        return {
            "conditions": [
                _condition("Accepted", False, "UnsupportedProtocol", msg, generation, now),
                _condition("Programmed", False, "Invalid", msg, generation, now),
            ]
        }
    ready = int(((deployment or {}).get("status") or {}).get("readyReplicas") or 0)
    ips = [ip for ip in ((service or {}).get("spec") or {}).get("clusterIPs") or [] if ip and ip != "None"]
    conditions = [_condition("Accepted", True, "Accepted", "Resource accepted", generation, now)]
    addresses: list[Obj] = []
    if ready and ips:
        conditions.append(
            _condition(
                "Programmed",
                True,
                "Programmed",
                "Resource programmed, assigned to "
                f"service(s) {service['metadata']['name']}.{gw['metadata']['namespace']}"  # type: ignore[index]
                f".svc.{s.domain_suffix}:{HBONE_PORT}",
                generation,
                now,
            )
        )
        addresses = [{"type": "IPAddress", "value": ip} for ip in ips]
        host = f"{service['metadata']['name']}.{gw['metadata']['namespace']}.svc.{s.domain_suffix}"  # type: ignore[index]
        addresses.append({"type": "Hostname", "value": host})
    else:
        why = "Deployment has no ready replica yet" if ips else "Service has no address yet"
        conditions.append(_condition("Programmed", False, "NoResources", why, generation, now))
    listeners = [
        {
            "name": lst.get("name", "mesh"),
            "attachedRoutes": 0,
            "supportedKinds": [],
            "conditions": [
                _condition("Accepted", True, "Accepted", "No errors found", generation, now),
                _condition("Programmed", True, "Programmed", "No errors found", generation, now),
                _condition("ResolvedRefs", True, "ResolvedRefs", "No errors found", generation, now),
            ],
        }
        for lst in (gw.get("spec") or {}).get("listeners") or []
    ]
    return {"conditions": conditions, "addresses": addresses, "listeners": listeners}


def same_conditions(old: list[Obj] | None, new: list[Obj]) -> bool:
    """Equal ignoring ``lastTransitionTime`` (so a status write happens only on a real change)."""

    def strip(conds: list[Obj] | None) -> list[Obj]:
        return [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in conds or []]

    return strip(old) == strip(new)
