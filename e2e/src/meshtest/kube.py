"""Test-side handle on a Kubernetes cluster: kubectl/helm with the built binaries, an admin API client, waits,
and the failure dump (component logs, pod logs, Events). Works for the local cluster and, through
``AMBIENT_CLUSTER_KUBECONFIG``, for any other (kind); local-only extras (component logs) are skipped then.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from meshtest.cluster.agent import find_log
from meshtest.cluster.config import ClusterLayout

Obj = dict[str, Any]


class WaitTimeout(AssertionError):
    """A bounded wait ran out; the message says what was awaited and the last state seen."""


@dataclass(frozen=True, slots=True)
class KubeCluster:
    kubeconfig: Path
    layout: ClusterLayout | None  # None: not the local cluster

    # -- tools -----------------------------------------------------------------------------------------------
    def _bin(self, name: str) -> str:
        if self.layout is not None and self.layout.binary(name).exists():
            return str(self.layout.binary(name))
        found = shutil.which(name)
        if found is None:
            raise FileNotFoundError(f"{name} not found: run `python -m meshtest.cluster build`")
        return found

    @property
    def env(self) -> dict[str, str]:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        if self.layout is not None:
            env["PATH"] = f"{self.layout.bin}:{env.get('PATH', '')}"
        return env

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [self._bin("kubectl"), *args],
            input=input,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def helm(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [self._bin("helm"), *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"helm {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def apply(self, objects: Obj | Sequence[Obj] | str, namespace: str | None = None) -> None:
        text = (
            objects
            if isinstance(objects, str)
            else yaml.safe_dump_all([objects] if isinstance(objects, dict) else list(objects))
        )
        self.kubectl("apply", *(["-n", namespace] if namespace else []), "-f", "-", input=text)

    def get(self, kind: str, name: str = "", namespace: str | None = None, selector: str = "") -> Obj:
        args = ["get", kind, *([name] if name else []), "-o", "json"]
        args += ["-n", namespace] if namespace else []
        args += ["-l", selector] if selector else []
        result: Obj = json.loads(self.kubectl(*args).stdout)
        return result

    # -- waits -----------------------------------------------------------------------------------------------
    def workers(self) -> list[str]:
        """The names of the nodes that are not control-plane nodes, sorted."""
        return sorted(
            n["metadata"]["name"]
            for n in self.get("nodes")["items"]
            if "node-role.kubernetes.io/control-plane" not in n["metadata"].get("labels", {})
        )

    def wait_for(
        self, what: str, check: Callable[[], Any], timeout: float = 60, interval: float = 0.25
    ) -> Any:
        """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = check()
            except (RuntimeError, subprocess.SubprocessError) as err:
                last = err
            else:
                if last:
                    return last
            time.sleep(interval)
        raise WaitTimeout(f"timed out after {timeout}s waiting for {what}; last: {last!r}")

    def ready_pods(self, namespace: str, selector: str, count: int, timeout: float = 90) -> list[Obj]:
        def check() -> list[Obj] | None:
            pods = [
                p
                for p in self.get("pods", namespace=namespace, selector=selector)["items"]
                if not p["metadata"].get("deletionTimestamp")
            ]
            ready = [p for p in pods if _condition(p, "Ready")]
            return ready if len(ready) >= count else None

        return list(self.wait_for(f"{count} ready pods {selector} in {namespace}", check, timeout))

    def pod_phase(self, namespace: str, name: str, phases: Sequence[str], timeout: float = 90) -> Obj:
        def check() -> Obj | None:
            pod = self.get("pod", name, namespace)
            return pod if pod.get("status", {}).get("phase") in phases else None

        return dict(self.wait_for(f"pod {namespace}/{name} in {phases}", check, timeout))

    def wait_service(self, namespace: str, service: str, port: int, timeout: float = 60) -> str:
        """Wait until the Service's ClusterIP accepts TCP on ``port`` from every node (kube-proxy has synced
        its
        endpoints everywhere); returns the ClusterIP. On a non-local cluster only the Service's endpoints are
        awaited."""
        svc = self.get("service", service, namespace)
        cluster_ip = str(svc["spec"]["clusterIP"])

        def has_endpoints() -> bool:
            slices = self.get(
                "endpointslices", namespace=namespace, selector=f"kubernetes.io/service-name={service}"
            )
            return any(
                e.get("conditions", {}).get("ready")
                for s in slices["items"]
                for e in s.get("endpoints") or []
            )

        self.wait_for(f"endpoints of {namespace}/{service}", has_endpoints, timeout)
        if self.layout is not None:
            probe = f"import socket; socket.create_connection(({cluster_ip!r}, {port}), 1).close()"
            for node in self.layout.nodes:
                argv = ["nsenter", f"--net={node.netns_path}", "--", sys.executable, "-c", probe]
                self.wait_for(
                    f"{cluster_ip}:{port} from {node.name}",
                    lambda a=argv: subprocess.run(a, capture_output=True, check=False).returncode == 0,  # type: ignore[misc]
                    timeout,
                )
        return cluster_ip

    def exec(
        self, namespace: str, pod: str, argv: Sequence[str], container: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in a container. Local cluster: ``nsenter`` into the container process's network, mount
        and UTS namespaces with its environment (no streaming server here); otherwise ``kubectl exec``."""
        if self.layout is None:
            args = ["exec", "-n", namespace, pod, *(["-c", container] if container else []), "--", *argv]
            return self.kubectl(*args, check=False, timeout=timeout)
        statuses = self.get("pod", pod, namespace).get("status", {}).get("containerStatuses", [])
        chosen = next((s for s in statuses if container in (None, s["name"])), None)
        if chosen is None or not str(chosen.get("containerID", "")).startswith("meshtest://"):
            raise RuntimeError(f"no running container {container or ''} in {namespace}/{pod}")
        pid = chosen["containerID"].removeprefix("meshtest://")
        with open(f"/proc/{pid}/environ", "rb") as environ:
            env = dict(item.split("=", 1) for item in environ.read().decode().split("\0") if "=" in item)
        # the caller's argv, with the container's own environment
        return subprocess.run(
            ["nsenter", "-t", pid, "-n", "-m", "-u", "-r", "-w", "--", *argv],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )

    # -- logs and dumps --------------------------------------------------------------------------------------
    def pod_log(
        self, namespace: str, pod: str, container: str | None = None, *, previous: bool = False
    ) -> str:
        """A container's log: from the node's files when local (fast, no API round trip), else kubectl
        logs."""
        if self.layout is not None and container is not None:
            for node in self.layout.nodes:
                path = find_log(self.layout.node_dir(node.name), namespace, pod, container, previous)
                if path is not None:
                    return path.read_text(errors="replace")
        args = ["logs", "-n", namespace, pod] + (["-c", container] if container else [])
        args += ["--previous"] if previous else []
        return self.kubectl(*args, check=False).stdout

    def dump(self, namespace: str | None, tail: int = 60) -> str:
        """Everything useful after a failure: pods, Events, every container log, and component log tails."""
        out = []
        scope = ["-n", namespace] if namespace else ["-A"]
        out.append(
            self.kubectl("get", "nodes,pods,svc,endpointslices", *scope, "-o", "wide", check=False).stdout
        )
        out.append(self.kubectl("get", "events", *scope, "--sort-by=.lastTimestamp", check=False).stdout)
        if namespace:
            with_logs = self.kubectl("get", "pods", "-n", namespace, "-o", "json", check=False).stdout or "{}"
            for pod in json.loads(with_logs).get("items", []):
                name = pod["metadata"]["name"]
                out.append(
                    f"--- pod {namespace}/{name} status:\n{json.dumps(pod.get('status', {}), indent=1)}"
                )
                spec = pod["spec"]
                for container in spec.get("initContainers", []) + spec.get("containers", []):
                    text = self.pod_log(namespace, name, container["name"])
                    out.append(f"--- log {namespace}/{name}/{container['name']}:\n{_tail(text, tail)}")
        if self.layout is not None and self.layout.logs.exists():
            for log_file in sorted(self.layout.logs.glob("*.log")):
                out.append(
                    f"--- component {log_file.name}:\n{_tail(log_file.read_text(errors='replace'), tail)}"
                )
        return "\n".join(out)


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _condition(obj: Obj, kind: str) -> bool:
    return any(
        c.get("type") == kind and c.get("status") == "True"
        for c in obj.get("status", {}).get("conditions", [])
    )
