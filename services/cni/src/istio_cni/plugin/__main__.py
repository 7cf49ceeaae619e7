"""CNI plugin entry point: ``python -m istio_cni.plugin`` (what the installed ``istio-cni`` launcher runs).

Decision on ADD (behaviour.md §3.1), failing closed like upstream once a pod is known to belong in the mesh:
1. not a Kubernetes pod, ambient off, or an excluded namespace: pass ``prevResult`` through;
2. with a kubeconfig: ask the API server; a pod that the enablement selectors do not match passes through
   (if the API server cannot be reached, the agent decides instead);
3. otherwise the node agent must enrol the pod synchronously; if it cannot, the ADD fails with code 11 (try
   again later), so the sandbox is retried and no container starts outside the mesh.
Without a kubeconfig the agent makes the selector decision itself, so step 3 applies to every candidate pod.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping

from istio_cni.enrolment import DEFAULT_SELECTORS, should_enrol
from istio_cni.plugin.agentclient import PLUGIN_EVENT_SOCKET, AgentUnavailable, post_add
from istio_cni.plugin.core import (
    ERR_INTERNAL,
    ERR_TRY_AGAIN_LATER,
    CniError,
    CniRequest,
    add_event,
    parse_request,
    render_error,
    render_result,
)
from istio_cni.plugin.kube import KubeLookupError, pod_and_namespace


def _log(level: str, msg: str, **fields: object) -> None:
    """One structured line on stderr: runtimes put the plugin's stderr in their own log."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    pairs = " ".join(f"{k}={v}" for k, v in fields.items())
    print(f"{stamp}\t{level}\tistio-cni\t{msg}\t{pairs}", file=sys.stderr)


def _add(req: CniRequest) -> None:
    event = add_event(req)
    if event is None:
        return
    cfg = req.config
    if cfg.kubeconfig and os.path.exists(cfg.kubeconfig):
        try:
            pod, namespace = pod_and_namespace(cfg.kubeconfig, req.pod_namespace, req.pod_name)
        except KubeLookupError as exc:
            # The agent decides with its own caches; only if it is unreachable too does the ADD fail.
            _log("warning", "cannot ask the API server; leaving the decision to the node agent", error=exc)
        else:
            selectors = list(cfg.enablement_selectors) or DEFAULT_SELECTORS
            if not should_enrol(pod, namespace, selectors, cfg.exclude_namespaces):
                return
            event["pod_uid"] = event["pod_uid"] or pod.get("metadata", {}).get("uid", "")
    socket_path = os.path.join(cfg.cni_agent_run_dir, PLUGIN_EVENT_SOCKET)
    try:
        answer = post_add(socket_path, event)
    except AgentUnavailable as exc:
        raise CniError(
            ERR_TRY_AGAIN_LATER,
            f"istio-cni: pod {req.pod_namespace}/{req.pod_name} could not be added to the ambient mesh"
            " (is the istio-cni node agent running on this node?)",
            str(exc),
        ) from exc
    _log(
        "info", "pod add handled", pod=f"{req.pod_namespace}/{req.pod_name}", enrolled=answer.get("enrolled")
    )


def run(env: Mapping[str, str], stdin: bytes) -> tuple[bytes, int]:
    """The whole plugin as a function: (stdout, exit code)."""
    version = "1.0.0"
    try:
        req = parse_request(env, stdin)
        version = req.config.cni_version
        if req.command == "ADD":
            _add(req)
        return render_result(req), 0
    except CniError as err:
        _log("error", err.msg, code=err.code, details=err.details)
        return render_error(err, version), 1
    except Exception as exc:  # fail closed with a CNI error object, never a bare traceback
        internal = CniError(ERR_INTERNAL, f"istio-cni: unexpected failure: {exc}", type(exc).__name__)
        _log("error", internal.msg, code=internal.code, details=internal.details)
        return render_error(internal, version), 1


def main() -> None:
    out, code = run(os.environ, sys.stdin.buffer.read())
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    main()
