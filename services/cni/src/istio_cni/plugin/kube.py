"""Minimal read-only Kubernetes access for the plugin: GET a pod and its namespace (standard library only).

The node agent writes the kubeconfig (JSON, which is valid YAML) with the server URL, the CA and its service
account token; the plugin runs in the host namespace outside any pod, so it cannot read the token itself.
"""

from __future__ import annotations

import base64
import json
import ssl
import urllib.parse
import urllib.request
from typing import Any


class KubeLookupError(Exception):
    """The API server could not tell us about the pod."""


def _load(kubeconfig: str) -> tuple[str, ssl.SSLContext | None, str]:
    try:
        with open(kubeconfig, encoding="utf-8") as fh:
            cfg = json.load(fh)
        cluster = cfg["clusters"][0]["cluster"]
        user = cfg["users"][0]["user"]
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise KubeLookupError(f"unreadable kubeconfig {kubeconfig}: {exc}") from exc
    server = str(cluster["server"]).rstrip("/")
    context = None
    if server.startswith("https"):
        context = ssl.create_default_context()
        if cluster.get("certificate-authority-data"):
            context.load_verify_locations(
                cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
            )
        if cluster.get("insecure-skip-tls-verify"):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    return server, context, str(user.get("token", ""))


def get_object(kubeconfig: str, path: str, timeout_s: float = 10.0) -> dict[str, Any]:
    server, context, token = _load(kubeconfig)
    request = urllib.request.Request(server + path, headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=context) as response:
            obj: dict[str, Any] = json.load(response)
            return obj
    except (OSError, ValueError) as exc:
        raise KubeLookupError(f"GET {path} from {server} failed: {exc}") from exc


def pod_and_namespace(kubeconfig: str, namespace: str, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    ns = urllib.parse.quote(namespace)
    pod = get_object(kubeconfig, f"/api/v1/namespaces/{ns}/pods/{urllib.parse.quote(name)}")
    return pod, get_object(kubeconfig, f"/api/v1/namespaces/{ns}")
