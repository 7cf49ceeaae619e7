"""Node agent settings. Environment variable names mirror the istio-cni chart (deploy-and-e2e.md §1.6): the
ConfigMap ``istio-cni-config`` keys plus the DaemonSet env; our additions are marked "(ours)".

Paths default to the in-container mount points of the chart's hostPath volumes (``/host/opt/cni/bin``,
``/host/etc/cni/net.d``, ``/var/run/istio-cni``, ``/var/run/ztunnel``, ``/host/proc``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any

import yaml  # comes with the kubernetes client, a declared dependency of this member
from meshkit.settings import env, parse_duration, parse_list

from istio_cni.enrolment import DEFAULT_SELECTORS, validate_selectors
from istio_cni.rules import DEFAULT_PROBE_SNAT_V4, DEFAULT_PROBE_SNAT_V6


def parse_selectors(text: str) -> list[dict[str, Any]]:
    """``AMBIENT_ENABLEMENT_SELECTOR``: YAML (or JSON) list of {podSelector, namespaceSelector}."""
    if not text.strip():
        return [dict(s) for s in DEFAULT_SELECTORS]
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"not YAML: {exc}") from None
    return validate_selectors(value)


@dataclass(frozen=True, slots=True)
class Settings:
    node_name: str = env("NODE_NAME", "", "The node this agent serves; only its pods are enrolled.")
    pod_name: str = env("POD_NAME", "", "This agent's pod name (logs, self-recognition).")
    pod_namespace: str = env(
        "POD_NAMESPACE", "istio-system", "This agent's namespace (the system namespace)."
    )
    ambient_enabled: bool = env("AMBIENT_ENABLED", True, "Run the ambient node agent.")
    enablement_selectors: list[dict[str, Any]] = env(
        "AMBIENT_ENABLEMENT_SELECTOR",
        [dict(s) for s in DEFAULT_SELECTORS],
        "Which pods to enrol (YAML list of podSelector/namespaceSelector).",
        parse=parse_selectors,
    )
    dns_capture: bool = env("AMBIENT_DNS_CAPTURE", True, "Redirect pod DNS (port 53) to ztunnel's 15053.")
    ipv6: bool = env("AMBIENT_IPV6", True, "Also program ip6tables when the pod has IPv6 on lo.")
    reconcile_on_startup: bool = env(
        "AMBIENT_RECONCILE_POD_RULES_ON_STARTUP", True, "Re-apply in-pod rules of enrolled pods at start-up."
    )
    exclude_namespaces: list[str] = env(
        "EXCLUDE_NAMESPACES",
        ["kube-system"],
        "Namespaces never enrolled (comma-separated).",
        parse=parse_list,
    )
    cni_conf_name: str = env("CNI_CONF_NAME", "", "Primary CNI config file name; empty = the first one.")
    chained: bool = env("CHAINED_CNI_PLUGIN", True, "Chain into the primary conflist (only mode supported).")
    install_cni: bool = env("INSTALL_CNI", True, "(ours) Install the plugin launcher and chain the conflist.")
    cni_bin_dir: str = env("CNI_BIN_DIR", "/host/opt/cni/bin", "(ours) Node CNI bin dir as mounted.")
    cni_conf_dir: str = env("CNI_CONF_DIR", "/host/etc/cni/net.d", "(ours) Node CNI config dir as mounted.")
    plugin_python: str = env(
        "CNI_PLUGIN_PYTHON",
        sys.executable,
        "(ours) Python the plugin launcher execs (must exist on the host).",
    )
    plugin_runtime: str = env(
        "CNI_PLUGIN_RUNTIME",
        "/app/cni-plugin-runtime",
        "(ours) Plugin runtime dir copied to the node; absent or empty = CNI_PLUGIN_PYTHON mode.",
    )
    run_dir: str = env(
        "CNI_AGENT_RUN_DIR",
        "/var/run/istio-cni",
        "(ours) pluginevent.sock and kubeconfig; same path on host.",
    )
    ztunnel_uds: str = env("ZTUNNEL_UDS_ADDRESS", "/var/run/ztunnel/ztunnel.sock", "ZDS socket (SEQPACKET).")
    host_proc: str = env("HOST_PROC_DIR", "/host/proc", "(ours) Host /proc, to find running pods' netns.")
    host_netns: str = env(
        "HOST_NETNS_PATH",
        "",
        "(ours) Netns for node rules; empty = own (hostNetwork), e.g. /host/proc/1/ns/net.",
    )
    probe_snat_v4: str = env("HOST_PROBE_SNAT_IP", DEFAULT_PROBE_SNAT_V4, "Kubelet probe SNAT address.")
    probe_snat_v6: str = env(
        "HOST_PROBE_SNAT_IPV6", DEFAULT_PROBE_SNAT_V6, "Kubelet probe SNAT address (v6)."
    )
    host_rules: bool = env("HOST_PROBE_RULES", True, "(ours) Install the node-level probe SNAT rules (§3.4).")
    retry_interval: float = env(
        "ZDS_RETRY_INTERVAL", 5.0, "(ours) Retry period for pods pending in ztunnel.", parse=parse_duration
    )
    readiness_port: int = env("READINESS_PORT", 8000, "(ours) /readyz port.")
    metrics_port: int = env("MONITORING_PORT", 15014, "(ours) Prometheus /metrics port.")
    listen_address: str = env("LISTEN_ADDRESS", "0.0.0.0", "(ours) Bind address for readiness and metrics.")
    kubeconfig: str = env("KUBECONFIG", "", "Kubeconfig for the agent; empty = in-cluster service account.")
    safe_upgrade_disabled: bool = env(
        "AMBIENT_DISABLE_SAFE_UPGRADE", False, "Always uninstall from the node on shutdown."
    )
    log_level: str = env("LOG_LEVEL", "info", "(ours) Log level spec, e.g. info,cni.zds=debug.")
    log_json: bool = env("LOG_AS_JSON", False, "(ours) JSON log lines.")

    def selectors_json(self) -> str:
        return json.dumps(self.enablement_selectors)
