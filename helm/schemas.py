"""Writes each chart's ``values.schema.json`` from the declarations below: ``python helm/schemas.py``
(``--check``
exits 1 when a committed schema differs, which the chart tests run).

Why generated: every chart must accept the same ``global`` block (the umbrella chart hands ``global`` to every
sub-chart and Helm checks it against each sub-chart's schema), and the Kubernetes-shaped values (resources,
tolerations, ...) repeat. Objects reject unknown keys (``additionalProperties: false``) so a typo such as
``ztunnel.resourcesName`` fails ``helm install`` naming the key, except where the value is a free-form map
(env, labels, annotations) or mirrors an open upstream structure (meshConfig).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

Schema = dict[str, Any]
HERE = Path(__file__).resolve().parent


def obj(props: dict[str, Schema], description: str = "", **extra: Any) -> Schema:
    out: Schema = {"type": "object", "additionalProperties": False, "properties": props}
    if description:
        out["description"] = description
    out.update(extra)
    return out


def string(description: str = "", **extra: Any) -> Schema:
    return {"type": "string", **({"description": description} if description else {}), **extra}


def boolean(description: str = "") -> Schema:
    return {"type": "boolean", **({"description": description} if description else {})}


def integer(description: str = "", minimum: int = 0, maximum: int | None = None) -> Schema:
    out: Schema = {"type": "integer", "minimum": minimum}
    if maximum is not None:
        out["maximum"] = maximum
    if description:
        out["description"] = description
    return out


STRING_MAP: Schema = {"type": "object", "additionalProperties": {"type": "string"}}
ENV_MAP: Schema = {
    "type": "object",
    "description": "Extra environment variables; values must be strings (quote numbers and booleans).",
    "additionalProperties": {"type": "string"},
}
QUANTITY: Schema = {"type": ["string", "integer", "number"]}
RESOURCES = obj(
    {
        "requests": {"type": "object", "additionalProperties": QUANTITY},
        "limits": {"type": "object", "additionalProperties": QUANTITY},
    },
    "Container resources, as in a Pod spec.",
)
TOLERATIONS: Schema = {
    "type": "array",
    "items": obj(
        {
            "key": string(),
            "operator": string(enum=["Exists", "Equal"]),
            "value": string(),
            "effect": string(enum=["NoSchedule", "PreferNoSchedule", "NoExecute"]),
            "tolerationSeconds": integer(),
        }
    ),
}
OPEN_OBJECT: Schema = {"type": "object"}
INT_OR_PERCENT: Schema = {"type": ["integer", "string"], "pattern": "^[0-9]+%?$"}
PROFILE = string("Helm profile: 'ambient' turns ambient mode on.", enum=["", "default", "ambient"])
REVISION = string(
    "Control-plane revision ('' is the default one).", pattern="^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$"
)

GLOBAL = obj(
    {
        "hub": string("Image registry: images are <hub>/<image>:<tag>.", minLength=1),
        "tag": {"type": ["string", "number"], "description": "Image tag of every component."},
        "variant": string("Image tag suffix (<tag>-<variant>); empty for none."),
        "imagePullPolicy": string(enum=["Always", "IfNotPresent", "Never"]),
        "imagePullSecrets": {"type": "array", "items": string()},
        "istioNamespace": string("Namespace of the control plane.", minLength=1),
        "logAsJson": boolean(),
        "logging": obj({"level": string("Log levels: default[,scope=level...].")}),
        "multiCluster": obj(
            {"clusterName": string("This cluster's ID (CLUSTER_ID); empty means Kubernetes.")}
        ),
        "network": string("Network of this cluster's workloads."),
        "proxy": obj(
            {
                "image": string("Image of waypoint proxies."),
                "clusterDomain": string("Kubernetes DNS domain."),
            }
        ),
        "defaultPodDisruptionBudget": obj({"enabled": boolean()}),
        "profile": PROFILE,
    },
    "Shared by every chart of the mesh.",
)


def image_values(default_image: str) -> dict[str, Schema]:
    return {
        "image": string(f"Image name (default {default_image}), or a full reference when it contains '/'."),
        "hub": string("Overrides global.hub for this component."),
        "tag": {"type": ["string", "number"], "description": "Overrides global.tag for this component."},
        "variant": string("Overrides global.variant."),
    }


def pod_values() -> dict[str, Schema]:
    return {
        "resources": RESOURCES,
        "tolerations": TOLERATIONS,
        "nodeSelector": STRING_MAP,
        "affinity": OPEN_OBJECT,
        "podAnnotations": STRING_MAP,
        "podLabels": STRING_MAP,
        "env": ENV_MAP,
    }


BASE = obj(
    {
        "global": GLOBAL,
        "base": obj(
            {
                "excludedCRDs": {"type": "array", "items": string()},
                "enableIstioConfigCRDs": boolean(),
                "keepCRDs": boolean("Keep CRDs (and their objects) on uninstall."),
            }
        ),
        "gatewayAPI": obj({"enabled": boolean("Install the Gateway API CRDs (standard channel kinds).")}),
    }
)

ISTIOD = obj(
    {
        "global": GLOBAL,
        "enabled": boolean("Umbrella chart condition."),
        "profile": PROFILE,
        "revision": REVISION,
        **image_values("pilot"),
        "replicaCount": integer(minimum=1),
        "autoscaleEnabled": boolean(),
        "autoscaleMin": integer(minimum=1),
        "autoscaleMax": integer(minimum=1),
        "cpu": obj({"targetAverageUtilization": integer(minimum=1, maximum=100)}),
        "rollingMaxSurge": INT_OR_PERCENT,
        "rollingMaxUnavailable": INT_OR_PERCENT,
        "pdb": obj({"minAvailable": INT_OR_PERCENT}),
        **pod_values(),
        "trustedZtunnelNamespace": string(),
        "trustedZtunnelName": string(),
        "keepaliveMaxServerConnectionAge": string(
            "Go duration, e.g. 30m.", pattern="^([0-9.]+(ns|us|ms|s|m|h))+$"
        ),
        "meshConfig": {
            "type": "object",
            "description": "Mesh configuration; trustDomain and rootNamespace also configure istiod.",
            "properties": {
                "trustDomain": string(minLength=1),
                "rootNamespace": string(),
            },
        },
    }
)

ZTUNNEL = obj(
    {
        "global": GLOBAL,
        "profile": PROFILE,
        "revision": REVISION,
        **image_values("ztunnel"),
        "resourceName": string("DaemonSet/ServiceAccount name (default ztunnel)."),
        "caAddress": string(),
        "xdsAddress": string(),
        "istioNamespace": string(minLength=1),
        "logLevel": string(),
        "logAsJson": boolean(),
        "network": string(),
        "multiCluster": obj({"clusterName": string()}),
        **pod_values(),
        "updateStrategy": OPEN_OBJECT,
        "terminationGracePeriodSeconds": integer(minimum=1),
        "meshConfig": obj({"defaultConfig": obj({"proxyMetadata": ENV_MAP})}),
    }
)

SELECTOR: Schema = {
    "type": "object",
    "properties": {"matchLabels": STRING_MAP, "matchExpressions": {"type": "array", "items": OPEN_OBJECT}},
    "additionalProperties": False,
}
CNI = obj(
    {
        "global": GLOBAL,
        "profile": PROFILE,
        "revision": REVISION,
        **image_values("install-cni"),
        "cniBinDir": string(minLength=1),
        "cniConfDir": string(minLength=1),
        "cniConfFileName": string(),
        "cniNetnsDir": string(minLength=1),
        "chained": {"const": True, "description": "Only chained mode is supported."},
        "excludeNamespaces": {"type": "array", "items": string()},
        "ambient": obj(
            {
                "enabled": {"type": ["boolean", "null"], "description": "null: decided by the profile."},
                "enablementSelectors": {
                    "type": "array",
                    "items": obj({"podSelector": SELECTOR, "namespaceSelector": SELECTOR}),
                },
                "dnsCapture": boolean(),
                "ipv6": boolean(),
                "reconcileIptablesOnStartup": boolean(),
                "shareHostNetworkNamespace": boolean(),
            }
        ),
        **pod_values(),
        "updateStrategy": OPEN_OBJECT,
        "terminationGracePeriodSeconds": integer(minimum=1),
        "logLevel": string(),
    }
)

AMBIENT = obj(
    {
        "global": {"type": "object", "description": "Passed to every sub-chart (checked by their schemas)."},
        "base": {"type": "object", "description": "Values of the base sub-chart."},
        "istiod": {"type": "object", "description": "Values of the istiod sub-chart."},
        "cni": {"type": "object", "description": "Values of the cni sub-chart."},
        "ztunnel": {"type": "object", "description": "Values of the ztunnel sub-chart."},
    }
)

SCHEMAS = {"base": BASE, "istiod": ISTIOD, "ztunnel": ZTUNNEL, "cni": CNI, "ambient": AMBIENT}


def render(chart: str) -> str:
    schema = {"$schema": "https://json-schema.org/draft-07/schema#", "title": f"{chart} chart values"}
    schema.update(SCHEMAS[chart])
    return json.dumps(schema, indent=2, sort_keys=False) + "\n"


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for chart in SCHEMAS:
        path = HERE / chart / "values.schema.json"
        text = render(chart)
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
    if stale:
        print("stale (run python helm/schemas.py):", *stale, sep="\n  ")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
