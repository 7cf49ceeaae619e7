"""Every program the node agent executes is installed in its image (``services/cni/Dockerfile``).

The agent runs ``nsenter``, ``sh`` and the iptables/ipset/iproute2 tools; a tool missing from the image only
shows on a real node (the local cluster runs the agent on this machine, which has them all). So the agent's
real code paths run here with ``PATH`` pointing at logging shims of every system program, and each program
they reach must map, through :data:`PACKAGE_OF`, to a package of the final stage's ``apt-get install`` line
or to one that every Debian image has (:data:`BASE_PACKAGES`). A new exec without its package fails here.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from istio_cni.dataplane import DataplaneConfig, MeshDataplane
from istio_cni.hostrules import HostRules
from istio_cni.metrics import CniMetrics
from istio_cni.netns import Netns
from istio_cni.rules import DEFAULT_PROBE_SNAT_V4, DEFAULT_PROBE_SNAT_V6
from meshkit.metrics import new_registry

SERVICE = Path(__file__).resolve().parents[1]
DOCKERFILE = SERVICE / "Dockerfile"
SRC = SERVICE / "src" / "istio_cni"

#: program → Debian (bookworm) package that ships it
PACKAGE_OF = {
    "nsenter": "util-linux",
    "unshare": "util-linux",
    "sh": "dash",
    "ip": "iproute2",
    "iptables-save": "iptables",
    "iptables-restore": "iptables",
    "ip6tables-save": "iptables",
    "ip6tables-restore": "iptables",
    "ipset": "ipset",
}
#: Essential packages: in every Debian image, python:*-slim included
BASE_PACKAGES = frozenset({"util-linux", "dash", "coreutils"})
SYSTEM_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def final_stage(text: str) -> str:
    text = text.replace("\\\n", " ")
    return text[text.rindex("\nFROM ") :]


def apt_packages(dockerfile: str) -> set[str]:
    """Packages that the final stage's ``apt-get install`` lines install."""
    packages: set[str] = set()
    for match in re.finditer(r"apt-get install ([^&;\n]*)", final_stage(dockerfile)):
        packages.update(word for word in match.group(1).split() if not word.startswith("-"))
    return packages


def test_apt_line_parser() -> None:
    text = (
        "FROM a AS b\nRUN apt-get install -y x\n"
        "FROM c\nRUN apt-get update \\\n && apt-get install -y -q p q \\\n && rm x\n"
    )
    assert apt_packages(text) == {"p", "q"}


def test_agent_executes_only_through_run_command() -> None:
    """The shims below see every program the agent starts only if it starts them in the paths driven here:
    all execs go through :func:`istio_cni.netns.run_command` (``runtime.py`` is the image build's tool)."""
    spawning = {"subprocess", "create_subprocess_exec", "create_subprocess_shell", "Popen", "system"}
    spawning |= {"execv", "execvp", "execve", "execvpe", "spawnv", "posix_spawn", "popen"}
    found = []
    for path in SRC.rglob("*.py"):
        if path.name == "runtime.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            name = node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", None)
            if name in spawning:
                found.append(f"{path.relative_to(SRC)}:{node.lineno} {name}")
    assert {f.split(":")[0] for f in found} == {"netns.py"}, found


class ExecLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def names(self) -> set[str]:
        return set(self.path.read_text().split()) if self.path.exists() else set()


@pytest.fixture
def exec_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ExecLog:
    """``PATH`` = shims of every system program, each logging its name and exec'ing the real one."""
    shims, log = tmp_path / "shims", tmp_path / "exec.log"
    shims.mkdir()
    for directory in reversed(SYSTEM_DIRS):  # earlier PATH entries win, as in a lookup
        if not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            real = os.path.join(directory, name)
            if os.access(real, os.X_OK) and not os.path.isdir(real):
                shim = shims / name
                shim.write_text(f"#!/bin/sh\necho '{name}' >>'{log}'\nexec '{real}' \"$@\"\n")
                shim.chmod(0o755)
    monkeypatch.setenv("PATH", str(shims))
    return ExecLog(log)


class Annotations:
    async def set_redirection(self, namespace: str, name: str, value: str | None) -> None:
        pass


def pod(ip: str) -> dict[str, Any]:
    return {
        "metadata": {"uid": "u-tools", "name": "web", "namespace": "demo"},
        "spec": {"serviceAccountName": "web"},
        "status": {"podIPs": [{"ip": ip}, {"ip": "fd00:78::5"}]},
    }


@pytest.mark.root
async def test_programs_the_agent_runs_are_in_the_image(
    make_netns: Callable[[], Any], subnet: str, exec_log: ExecLog
) -> None:
    node, pod_ns = Netns.open(make_netns().path), make_netns()
    exec_log.clear()  # only what the agent runs from here on
    host = HostRules(node, DEFAULT_PROBE_SNAT_V4, DEFAULT_PROBE_SNAT_V6)
    dataplane = MeshDataplane(DataplaneConfig(), Annotations(), CniMetrics(new_registry()), host)
    try:
        await host.install()
        assert not await dataplane.enrol(pod(f"{subnet}.5"), Netns.open(pod_ns.path))  # no ztunnel: pending
        await host.sync_ips(set())
        await dataplane.unenrol("u-tools", deleted=False)
        await host.uninstall()
    finally:
        dataplane.close()
        node.close()
    ran = exec_log.names()
    assert {"nsenter", "ipset", "iptables-restore", "ip6tables-restore", "ip"} <= ran  # the shims work
    unknown = sorted(ran - PACKAGE_OF.keys())
    assert not unknown, f"the agent runs {unknown}: add each with its Debian package to PACKAGE_OF"
    installed = apt_packages(DOCKERFILE.read_text()) | BASE_PACKAGES
    missing = {name: PACKAGE_OF[name] for name in sorted(ran) if PACKAGE_OF[name] not in installed}
    assert not missing, f"the agent runs these, but services/cni/Dockerfile does not install them: {missing}"


def _package_owning(program: str) -> str | None:
    path = shutil.which(program, path=":".join(SYSTEM_DIRS))
    if path is None:
        return None
    real = os.path.realpath(path)
    for candidate in (real, real.removeprefix("/usr"), path):  # usrmerge: dpkg may list /bin/x for /usr/bin/x
        done = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return done.stdout.split(":", 1)[0]
    return None


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="the table is checked against dpkg on Debian")
@pytest.mark.parametrize("program", sorted(PACKAGE_OF))
def test_package_table_is_what_debian_ships(program: str) -> None:
    assert _package_owning(program) == PACKAGE_OF[program]
