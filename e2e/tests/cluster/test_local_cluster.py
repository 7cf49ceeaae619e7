"""The local cluster's "done when" list (issue #3): Ready workers, echo across nodes through DNS + ClusterIP
with the client's own IP visible, TokenRequest/TokenReview, pod env/volumes/probes/lifecycle as the kubelet
does."""

from __future__ import annotations

import base64
import json
import subprocess
import time
import urllib.parse
import urllib.request
from typing import Any

import pytest
from meshtest.cluster.config import pod_netns_name
from meshtest.echo import parse_responses
from meshtest.kube import KubeCluster

pytestmark = [pytest.mark.cluster, pytest.mark.root]
IMAGE = "localhost:5000/app:istio-testing"


def echo_deployment(name: str, replicas: int, version: str = "v1") -> list[dict[str, Any]]:
    labels = {"app": name, "version": version}
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "affinity": {
                            "podAntiAffinity": {
                                "requiredDuringSchedulingIgnoredDuringExecution": [
                                    {
                                        "labelSelector": {"matchLabels": labels},
                                        "topologyKey": "kubernetes.io/hostname",
                                    }
                                ]
                            }
                        },
                        "containers": [
                            {
                                "name": "app",
                                "image": IMAGE,
                                "args": [
                                    "--port",
                                    "8080",
                                    "--tcp",
                                    "9090",
                                    "--grpc",
                                    "7070",
                                    "--version",
                                    version,
                                ],
                                "ports": [{"containerPort": 8080, "name": "http"}],
                                "readinessProbe": {
                                    "httpGet": {"path": "/", "port": "http"},
                                    "periodSeconds": 2,
                                },
                                "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 5},
                            }
                        ],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name},
            "spec": {
                "selector": {"app": name},
                "ports": [
                    {"name": "http", "port": 80, "targetPort": 8080},
                    {"name": "tcp", "port": 9090, "targetPort": 9090},
                    {"name": "grpc", "port": 7070, "targetPort": 7070},
                ],
            },
        },
    ]


def first_worker(kube: KubeCluster) -> str:
    return kube.layout.nodes[1].name if kube.layout is not None else "amb-w1"


def forward(pod_ip: str, url: str, count: int = 1) -> list[Any]:
    """Make the echo pod at ``pod_ip`` call ``url`` (the runner reaches pod IPs through the node routes)."""
    query = urllib.parse.urlencode({"url": url, "count": str(count), "timeout": "5", "newConnection": "true"})
    with urllib.request.urlopen(f"http://{pod_ip}:8080/_forward?{query}", timeout=60) as resp:
        return parse_responses(resp.read().decode())


def test_two_ready_workers(kube_cluster: KubeCluster) -> None:
    nodes = kube_cluster.get("nodes")["items"]
    ready = {
        n["metadata"]["name"]
        for n in nodes
        if any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])
    }
    workers = {
        n["metadata"]["name"]
        for n in nodes
        if "node-role.kubernetes.io/control-plane" not in n["metadata"]["labels"]
    }
    assert len(workers) == 2
    assert workers <= ready
    wide = kube_cluster.kubectl("get", "nodes,pods", "-A", "-o", "wide").stdout
    for worker in workers:
        assert worker in wide
    assert kube_cluster.kubectl("version", "-o", "json").stdout.count("v1.33") >= 2


def test_echo_service_across_nodes_by_dns(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    ns = kube_namespace
    kube_cluster.apply(echo_deployment("echo", 2), ns)
    pods = kube_cluster.ready_pods(ns, "app=echo", 2)
    assert len({p["spec"]["nodeName"] for p in pods}) == 2, "replicas must land on different nodes"
    kube_cluster.apply(echo_deployment("client", 1), ns)
    (client,) = kube_cluster.ready_pods(ns, "app=client", 1)
    client_ip, client_node = client["status"]["podIP"], client["spec"]["nodeName"]
    kube_cluster.wait_service(ns, "echo", 80)
    assert client_ip.startswith("10.244.")
    replies = forward(client_ip, f"http://echo.{ns}.svc.cluster.local/", count=12)
    assert all(r.code == "200" for r in replies), replies
    assert {r.ip for r in replies} == {client_ip}, "the server must see the client pod's own IP"
    hostnames = {r.hostname for r in replies}
    assert hostnames == {p["metadata"]["name"] for p in pods}, "ClusterIP balances over both nodes"
    remote = [p for p in pods if p["spec"]["nodeName"] != client_node]
    assert remote
    assert remote[0]["metadata"]["name"] in hostnames
    for scheme, port in (("tcp", 9090), ("grpc", 7070)):
        (reply,) = forward(client_ip, f"{scheme}://echo.{ns}.svc.cluster.local:{port}")
        assert reply.code == "200", reply.body
        assert reply.ip == client_ip, reply.body


def test_client_image_runs_to_completion_with_logs(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    ns = kube_namespace
    kube_cluster.apply(echo_deployment("echo", 1), ns)
    kube_cluster.ready_pods(ns, "app=echo", 1)
    kube_cluster.wait_service(ns, "echo", 80)
    kube_cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "once"},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "client",
                        "image": IMAGE,
                        "command": ["client"],
                        "args": [f"http://echo.{ns}:80/", "--count", "3"],
                    }
                ],
            },
        },
        ns,
    )
    pod = kube_cluster.pod_phase(ns, "once", ["Succeeded", "Failed"])
    assert pod["status"]["phase"] == "Succeeded", kube_cluster.pod_log(ns, "once", "client")
    replies = parse_responses(kube_cluster.pod_log(ns, "once", "client"))
    assert len(replies) == 3
    assert {r.ip for r in replies} == {pod["status"]["podIP"]}
    # `kubectl logs` goes through the API server to the node agent's kubelet endpoint
    assert "StatusCode=200" in kube_cluster.kubectl("logs", "-n", ns, "once").stdout
    (server,) = kube_cluster.get("pods", namespace=ns, selector="app=echo")["items"]
    kubectl = str(kube_cluster.layout.binary("kubectl")) if kube_cluster.layout else "kubectl"
    argv = [kubectl, "logs", "-f", "-n", ns, server["metadata"]["name"]]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=kube_cluster.env) as follow:
        try:  # `-f` streams: the first line arrives and the command keeps running
            assert follow.stdout is not None
            assert "listening" in follow.stdout.readline()
            assert follow.poll() is None, "still following"
        finally:
            follow.kill()


def test_token_request_and_review(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    ns = kube_namespace
    kube_cluster.kubectl("create", "serviceaccount", "-n", ns, "workload")
    token = kube_cluster.kubectl(
        "create", "token", "-n", ns, "workload", "--audience", "istio-ca", "--duration", "10m"
    ).stdout.strip()
    review = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token, "audiences": ["istio-ca"]},
    }
    out = json.loads(kube_cluster.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(review)).stdout)
    assert out["status"]["authenticated"] is True
    assert out["status"]["user"]["username"] == f"system:serviceaccount:{ns}:workload"
    assert out["status"]["audiences"] == ["istio-ca"]
    review["spec"]["audiences"] = ["someone-else"]
    out = json.loads(kube_cluster.kubectl("create", "-o", "json", "-f", "-", input=json.dumps(review)).stdout)
    assert not out["status"].get("authenticated")


def test_pod_env_volumes_and_projected_token(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    ns = kube_namespace
    kube_cluster.kubectl("create", "configmap", "-n", ns, "cfg", "--from-literal=greeting=hello")
    kube_cluster.kubectl("create", "secret", "generic", "-n", ns, "sec", "--from-literal=password=pw1")
    script = (
        "echo POD=$POD_NAME NODE=$NODE IP=$POD_IP CPU=$CPU GREETING=$greeting S_password=$S_password; "
        "echo HOST=$(hostname); cat /etc/cfg/greeting; echo; cat /etc/sec/password; echo; "
        "cat /etc/podinfo/labels; echo; cat /var/run/secrets/kubernetes.io/serviceaccount/namespace; echo; "
        "echo TOKEN=$(cat /var/run/secrets/tokens/istio-token); ls /host-ztunnel; touch /scratch/x; "
        "grep nameserver /etc/resolv.conf; ls -A /tmp | wc -l"
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "env", "labels": {"app": "env"}},
        "spec": {
            "restartPolicy": "Never",
            "initContainers": [
                {
                    "name": "init",
                    "image": "busybox",
                    "command": ["sh", "-c", "echo init > /scratch/i"],
                    "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                }
            ],
            "containers": [
                {
                    "name": "main",
                    "image": "busybox",
                    "command": ["sh", "-c", script + "; cat /scratch/i"],
                    "resources": {"limits": {"cpu": "250m"}},
                    "env": [
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                        {
                            "name": "CPU",
                            "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1m"}},
                        },
                    ],
                    "envFrom": [
                        {"configMapRef": {"name": "cfg"}, "prefix": ""},
                        {"secretRef": {"name": "sec"}, "prefix": "S_"},
                    ],
                    "volumeMounts": [
                        {"name": "cfg", "mountPath": "/etc/cfg"},
                        {"name": "sec", "mountPath": "/etc/sec"},
                        {"name": "podinfo", "mountPath": "/etc/podinfo"},
                        {"name": "tokens", "mountPath": "/var/run/secrets/tokens"},
                        {"name": "ztunnel", "mountPath": "/host-ztunnel"},
                        {"name": "scratch", "mountPath": "/scratch"},
                    ],
                }
            ],
            "volumes": [
                {"name": "cfg", "configMap": {"name": "cfg"}},
                {"name": "sec", "secret": {"secretName": "sec"}},
                {
                    "name": "podinfo",
                    "downwardAPI": {
                        "items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]
                    },
                },
                {
                    "name": "tokens",
                    "projected": {
                        "sources": [
                            {
                                "serviceAccountToken": {
                                    "audience": "istio-ca",
                                    "expirationSeconds": 3600,
                                    "path": "istio-token",
                                }
                            }
                        ]
                    },
                },
                {"name": "ztunnel", "hostPath": {"path": "/var/run/ztunnel", "type": "DirectoryOrCreate"}},
                {"name": "scratch", "emptyDir": {}},
            ],
        },
    }
    kube_cluster.apply(pod, ns)
    done = kube_cluster.pod_phase(ns, "env", ["Succeeded", "Failed"])
    log = kube_cluster.pod_log(ns, "env", "main")
    assert done["status"]["phase"] == "Succeeded", log
    node, ip = done["spec"]["nodeName"], done["status"]["podIP"]
    assert f"POD=env NODE={node} IP={ip} CPU=250 GREETING=hello S_password=pw1" in log
    assert "HOST=env" in log
    assert "\nhello\n" in log
    assert "\npw1\n" in log
    assert 'app="env"' in log
    assert f"\n{ns}\n" in log
    assert "nameserver 10.96.0.10" in log
    assert log.rstrip().endswith("\n0\ninit")  # a private, empty /tmp; then the init container's file
    token = log.split("TOKEN=", 1)[1].split()[0]
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "==="))
    assert claims["aud"] == ["istio-ca"]
    assert claims["kubernetes.io"]["pod"]["name"] == "env"
    assert (
        kube_cluster.layout is None or (kube_cluster.layout.node_root(node) / "var/run/ztunnel").is_dir()
    )  # the node's own hostPath


def test_probes_restarts_and_graceful_deletion(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    ns = kube_namespace
    kube_cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "flaky"},
            "spec": {
                "terminationGracePeriodSeconds": 3,
                "containers": [
                    {
                        "name": "main",
                        "image": "busybox",
                        "command": [
                            "sh",
                            "-c",
                            "trap 'echo TERM; exit 0' TERM; echo TRAPPED; while true; do sleep 0.1; done",
                        ],
                        "livenessProbe": {
                            "exec": {"command": ["test", "-e", "/nonexistent"]},
                            "periodSeconds": 1,
                            "failureThreshold": 2,
                        },
                    }
                ],
            },
        },
        ns,
    )

    def restarted() -> bool:
        pod = kube_cluster.get("pod", "flaky", ns)
        statuses = pod["status"].get("containerStatuses", [])
        # restarted and running again, so "previous" is the instance the liveness probe killed
        return bool(statuses) and statuses[0]["restartCount"] >= 1 and "running" in statuses[0]["state"]

    kube_cluster.wait_for("a liveness restart", restarted, timeout=60)
    assert "TERM" in kube_cluster.pod_log(ns, "flaky", "main", previous=True)  # liveness kill is graceful
    kube_cluster.wait_for("the TERM trap", lambda: "TRAPPED" in kube_cluster.pod_log(ns, "flaky", "main"))
    started = time.monotonic()
    kube_cluster.kubectl("delete", "pod", "-n", ns, "flaky", "--wait=true", timeout=60)
    assert time.monotonic() - started < 3, (
        "a container that exits on SIGTERM is gone well before the grace period"
    )
    assert "TERM" in kube_cluster.pod_log(ns, "flaky", "main")
    assert kube_cluster.kubectl("get", "pod", "-n", ns, "flaky", check=False).returncode != 0


def test_grace_period_ends_with_sigkill(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    ns = kube_namespace
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "stubborn"},
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "containers": [
                {
                    "name": "main",
                    "image": "busybox",
                    "command": [
                        "sh",
                        "-c",
                        "trap 'echo IGNORED' TERM; echo TRAPPED; while true; do sleep 0.1; done",
                    ],
                }
            ],
        },
    }
    kube_cluster.apply(pod, ns)
    kube_cluster.pod_phase(ns, "stubborn", ["Running"])
    # "running" is reported at exec time; the shell must have installed its trap before we delete
    kube_cluster.wait_for("the TERM trap", lambda: "TRAPPED" in kube_cluster.pod_log(ns, "stubborn", "main"))
    started = time.monotonic()
    kube_cluster.kubectl("delete", "pod", "-n", ns, "stubborn", "--wait=true", timeout=60)
    took = time.monotonic() - started
    assert 2 <= took < 8, f"deletion took {took:.1f}s with a 2s grace period"
    assert "IGNORED" in kube_cluster.pod_log(ns, "stubborn", "main")


def test_host_network_pod_and_chained_cni_plugin(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    """A plugin appended to the node's conflist runs on the next pod with prevResult and the pod's CNI_ARGS,
    exactly as istio-cni will; when it fails, the sandbox is torn down (DEL) and retried. A hostNetwork pod
    in the node's namespace with the node's IP."""
    layout = kube_cluster.layout
    if layout is None:
        pytest.skip("inspects the local cluster's node files")
    ns = kube_namespace
    node = layout.nodes[1]
    root = layout.node_root(node.name)
    conf_path = root / "etc/cni/net.d/10-amb-bridge.conflist"
    if "istio-cni" in conf_path.read_text():
        pytest.skip("a mesh is installed: its istio-cni owns this node's CNI configuration")
    record = root / "var/lib/cni/chain-record.json"
    failed_once = root / "var/lib/cni/chain-failed-once"
    failed_once.unlink(missing_ok=True)
    plugin = root / "opt/cni/bin/amb-recorder"
    # a minimal chained plugin: fail the first ADD, then record stdin and env and pass prevResult through
    # (what istio-cni does on ADD)
    plugin.write_text(
        "#!/bin/sh\n"
        "input=$(cat)\n"
        'if [ "$CNI_COMMAND" = ADD ] && [ ! -e /var/lib/cni/chain-failed-once ]; then\n'
        "  touch /var/lib/cni/chain-failed-once\n"
        '  echo \'{"cniVersion":"1.0.0","code":11,"msg":"not ready yet"}\'; exit 1\n'
        "fi\n"
        'if [ "$CNI_COMMAND" = ADD ]; then\n'
        '  printf \'{"args":"%s","netns":"%s","stdin":%s}\' "$CNI_ARGS" "$CNI_NETNS" "$input" \\\n'
        "    > /var/lib/cni/chain-record.json\n"
        "  printf '%s' \"$input\" | python3 -c "
        "'import json,sys; print(json.dumps(json.load(sys.stdin)[\"prevResult\"]))'\n"
        "fi\n"
    )
    plugin.chmod(0o755)
    original = conf_path.read_text()
    conf = json.loads(original)
    conf["plugins"].append({"type": "amb-recorder"})
    conf_path.write_text(json.dumps(conf))
    try:
        kube_cluster.apply(
            [
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": name},
                    "spec": {
                        "nodeName": node.name,
                        "hostNetwork": host_net,
                        "containers": [
                            {
                                "name": "app",
                                "image": IMAGE,
                                "args": ["--port", str(port)],
                                "readinessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 1},
                            }
                        ],
                    },
                }
                for name, host_net, port in (("chained", False, 8080), ("hostnet", True, 18080))
            ],
            ns,
        )
        chained = kube_cluster.ready_pods(ns, "", 2)
    finally:
        conf_path.write_text(original)
    pods = {p["metadata"]["name"]: p for p in chained}
    assert failed_once.exists()
    events = kube_cluster.get("events", namespace=ns)["items"]
    assert any(e["reason"] == "FailedCreatePodSandBox" and "not ready yet" in e["message"] for e in events)
    recorded = json.loads(record.read_text())
    assert "K8S_POD_NAME=chained" in recorded["args"]
    assert f"K8S_POD_NAMESPACE={ns}" in recorded["args"]
    prev_ips = [ip["address"].split("/")[0] for ip in recorded["stdin"]["prevResult"]["ips"]]
    assert prev_ips == [pods["chained"]["status"]["podIP"]]
    assert pods["hostnet"]["status"]["podIP"] == node.ip
    (reply,) = forward(pods["chained"]["status"]["podIP"], f"http://{node.ip}:18080/")
    assert reply.hostname == node.name  # hostNetwork: the node's UTS name, reached on the node IP


def test_unknown_image_is_reported_on_the_pod(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    ns = kube_namespace
    kube_cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "bad"},
            "spec": {"containers": [{"name": "main", "image": "docker.io/library/nginx:1.27"}]},
        },
        ns,
    )

    def waiting_reason() -> str:
        statuses = kube_cluster.get("pod", "bad", ns)["status"].get("containerStatuses", [])
        return statuses[0]["state"].get("waiting", {}).get("reason", "") if statuses else ""

    assert kube_cluster.wait_for("ErrImagePull", lambda: waiting_reason() == "ErrImagePull", timeout=60)


def test_host_netns_dir_sees_later_sandboxes(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    """A pod mounting the host's /var/run/netns (as the CNI agent does, HostToContainer) sees the network
    namespaces of pods created after it started: pod mount namespaces are slaves of the host's."""
    ns = kube_namespace
    watcher = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "watcher"},
        "spec": {
            "nodeName": first_worker(kube_cluster),
            "hostNetwork": True,
            "containers": [
                {
                    "name": "main",
                    "image": "busybox",
                    "command": [
                        "sh",
                        "-c",
                        "while true; do echo SEEN $(ls /host/var/run/netns); sleep 0.3; done",
                    ],
                    "volumeMounts": [
                        {
                            "name": "netns",
                            "mountPath": "/host/var/run/netns",
                            "mountPropagation": "HostToContainer",
                        }
                    ],
                }
            ],
            "volumes": [
                {"name": "netns", "hostPath": {"path": "/var/run/netns", "type": "DirectoryOrCreate"}}
            ],
        },
    }
    kube_cluster.apply(watcher, ns)
    kube_cluster.wait_for("watcher output", lambda: "SEEN" in kube_cluster.pod_log(ns, "watcher", "main"))
    kube_cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "late"},
            "spec": {"nodeName": first_worker(kube_cluster), "containers": [{"name": "app", "image": IMAGE}]},
        },
        ns,
    )
    kube_cluster.ready_pods(ns, "", 2)
    uid = kube_cluster.get("pod", "late", ns)["metadata"]["uid"]
    netns_name = pod_netns_name(uid, kube_cluster.layout.instance if kube_cluster.layout else 0)
    kube_cluster.wait_for(
        f"{netns_name} visible in the watcher pod",
        lambda: netns_name in kube_cluster.pod_log(ns, "watcher", "main"),
        timeout=30,
    )


def test_startup_probe_gates_readiness(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    ns = kube_namespace
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "slow"},
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": "busybox",
                    "command": ["sh", "-c", "sleep 2; touch /work/started; while true; do sleep 1; done"],
                    "startupProbe": {
                        "exec": {"command": ["test", "-e", "/work/started"]},
                        "periodSeconds": 1,
                        "failureThreshold": 30,
                    },
                    "volumeMounts": [{"name": "work", "mountPath": "/work"}],
                }
            ],
            "volumes": [{"name": "work", "emptyDir": {}}],
        },
    }
    kube_cluster.apply(pod, ns)

    def status() -> dict[str, Any]:
        statuses = kube_cluster.get("pod", "slow", ns)["status"].get("containerStatuses", [])
        return statuses[0] if statuses else {}

    running = kube_cluster.wait_for(
        "container running", lambda: "running" in status().get("state", {}) and status()
    )
    assert running["started"] is False
    assert running["ready"] is False
    final = kube_cluster.wait_for(
        "startup probe passed", lambda: status().get("ready") and status(), timeout=30
    )
    assert final["started"] is True
    assert final["restartCount"] == 0
    inside = kube_cluster.exec(ns, "slow", ["sh", "-c", "hostname; ls /work; echo $HOSTNAME"])
    assert inside.returncode == 0, inside.stderr
    assert inside.stdout.split() == ["slow", "started", "slow"]


def test_pre_stop_hook_host_aliases_and_dns_config(kube_cluster: KubeCluster, kube_namespace: str) -> None:
    ns = kube_namespace
    loop = (
        "trap 'echo TERM; exit 0' TERM; echo TRAPPED; "
        "while true; do [ -e /work/hook ] && echo SAW-HOOK; sleep 0.2; done"
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "hooked"},
        "spec": {
            "terminationGracePeriodSeconds": 10,
            "hostAliases": [{"ip": "10.1.2.3", "hostnames": ["alias.example"]}],
            "dnsConfig": {"options": [{"name": "ndots", "value": "2"}]},
            "containers": [
                {
                    "name": "main",
                    "image": "busybox",
                    "command": ["sh", "-c", loop],
                    "lifecycle": {
                        "preStop": {"exec": {"command": ["sh", "-c", "touch /work/hook; sleep 1"]}}
                    },
                    "volumeMounts": [{"name": "work", "mountPath": "/work"}],
                }
            ],
            "volumes": [{"name": "work", "emptyDir": {}}],
        },
    }
    kube_cluster.apply(pod, ns)
    kube_cluster.wait_for("the TERM trap", lambda: "TRAPPED" in kube_cluster.pod_log(ns, "hooked", "main"))
    inside = kube_cluster.exec(ns, "hooked", ["sh", "-c", "cat /etc/hosts /etc/resolv.conf"]).stdout
    assert "10.1.2.3\talias.example" in inside
    assert "options ndots:2" in inside
    kube_cluster.kubectl("delete", "pod", "-n", ns, "hooked", "--wait=true", timeout=60)
    log = kube_cluster.pod_log(ns, "hooked", "main")
    assert "SAW-HOOK" in log
    assert log.index("SAW-HOOK") < log.index("TERM"), "preStop runs before SIGTERM"
