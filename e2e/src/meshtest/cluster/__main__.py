"""``python -m meshtest.cluster up|down|status|logs|kubectl|helm|env`` (also ``tox -e cluster -- <cmd>``)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from meshtest.cluster.agent import find_log
from meshtest.cluster.config import ClusterLayout
from meshtest.cluster.control import Cluster, ensure_binaries


def tool_env(layout: ClusterLayout) -> dict[str, str]:
    """Environment for kubectl/helm against this cluster (the built binaries first on PATH)."""
    return {
        **os.environ,
        "KUBECONFIG": str(layout.kubeconfig),
        "PATH": f"{layout.bin}:{os.environ.get('PATH', '')}",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m meshtest.cluster", description="local Kubernetes cluster"
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="build (or check) the cached binaries")
    sub.add_parser("up", help="start a fresh cluster (tears down a previous one first)")
    sub.add_parser("down", help="stop the cluster and remove namespaces, links and processes")
    sub.add_parser("status", help="print component and node status as JSON")
    sub.add_parser("env", help="print shell exports: KUBECONFIG and PATH with the built kubectl/helm")
    logs = sub.add_parser("logs", help="print a pod container's log: logs <ns>/<pod> [-c container] [-p]")
    logs.add_argument("pod")
    logs.add_argument("-c", "--container")
    logs.add_argument("-p", "--previous", action="store_true")
    exec_ = sub.add_parser("exec", help="run a command in a container: exec <ns>/<pod> [-c container] -- cmd")
    exec_.add_argument("pod")
    exec_.add_argument("-c", "--container")
    exec_.add_argument("argv", nargs=argparse.REMAINDER)
    for tool in ("kubectl", "helm"):
        cmd = sub.add_parser(tool, help=f"run the built {tool} against the cluster", add_help=False)
        cmd.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    layout = ClusterLayout.default()
    cluster = Cluster(layout)
    if args.cmd == "build":
        ensure_binaries(layout)
    elif args.cmd == "up":
        took = cluster.up()
        print(f"cluster up in {took:.1f}s")
        print(f"export KUBECONFIG={layout.kubeconfig}\nexport PATH={layout.bin}:$PATH")
    elif args.cmd == "down":
        cluster.down()
    elif args.cmd == "status":
        status = cluster.status()
        print(json.dumps(status, indent=2))
        return 0 if status["healthy"] else 1
    elif args.cmd == "env":
        print(f"export KUBECONFIG={layout.kubeconfig}\nexport PATH={layout.bin}:$PATH")
    elif args.cmd == "logs":
        return _logs(layout, args.pod, args.container, args.previous)
    elif args.cmd == "exec":
        from meshtest.kube import KubeCluster

        namespace, _, pod = args.pod.rpartition("/")
        argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        result = KubeCluster(layout.kubeconfig, layout).exec(
            namespace or "default", pod, argv, args.container
        )
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
        return result.returncode
    else:
        binary = str(layout.binary(args.cmd))
        os.execve(binary, [binary, *args.args], tool_env(layout))
    return 0


def _logs(layout: ClusterLayout, ref: str, container: str | None, previous: bool) -> int:
    namespace, _, pod = ref.rpartition("/")
    namespace = namespace or "default"
    for node in layout.nodes:
        node_dir = layout.node_dir(node.name)
        if container is None:
            matches = sorted((node_dir / "pods").glob(f"{namespace}_{pod}_*/logs/*.log"))
            names = sorted({p.name.rsplit(".", 2)[0] for p in matches})
            if len(names) > 1:
                print(f"pod has several containers, choose one with -c: {', '.join(names)}", file=sys.stderr)
                return 2
            if not names:
                continue
            container = names[0]
        path = find_log(node_dir, namespace, pod, container, previous)
        if path is not None:
            sys.stdout.write(path.read_text(errors="replace"))
            return 0
    print(f"no logs for {namespace}/{pod}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
