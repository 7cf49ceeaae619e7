"""The installed plugin runs on a node that has none of our Python: a runtime is built from this interpreter,
installed by the agent's installer into a temp CNI bin/conf dir, and its launcher is run in a new mount
namespace where the source interpreter's prefix, the repository (with its .venv) and the system's Python
stdlib are hidden under empty tmpfs mounts. The plugin answers VERSION, looks pods up on an HTTPS API server
(real TLS: the runtime's ``ssl``), passes a non-ambient pod through and hands an ambient one to the agent's
socket, as it would under a container runtime on a kind node.
"""

# Small temp files in test bodies; blocking file operations there are fine.
# ruff: noqa: ASYNC240

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import glob
import ipaddress
import json
import os
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import istio_cni
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from istio_cni.conflist import plugin_entry
from istio_cni.events import AddOutcome, PluginAddEvent, PluginEventServer
from istio_cni.install import Installer
from istio_cni.noderuntime import RUNTIMES_NAME
from istio_cni.runtime import INTERPRETER, build, is_glibc, read_info, tree_hash

pytestmark = [pytest.mark.root, pytest.mark.slow]
TOKEN = "node-test-token"
LOOPBACK = "127.0.0.1"
PREV = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}], "ips": [{"address": "10.78.9.5/24"}]}


def hidden_paths(keep: list[str]) -> list[str]:
    """Everywhere a Python of ours (or the system's) lives on this machine: none of it exists on a node."""
    base = Path(sys.base_prefix)
    pyenv = next((p for p in base.parents if p.name == ".pyenv"), None)
    repo = Path(istio_cni.__file__).resolve().parents[4]
    paths = {str(pyenv or base), sys.prefix}
    paths |= {str(repo)} if (repo / "services" / "cni").is_dir() else set()
    paths |= {p for p in ("/work",) if os.path.isdir(p)}
    system = glob.glob("/usr/lib/python3*") + glob.glob("/usr/local/lib/python3*")
    paths |= {p for p in system if os.path.isdir(p)}
    # never what the test itself needs (the runtime, temp dirs); an outer mount would hide an inner one's
    # mount point. If that left the source prefix visible, on_bare_node fails rather than proving nothing.
    paths = {p for p in paths if not any(k == p or k.startswith(p + "/") for k in keep)}
    return sorted(p for p in paths if not any(p.startswith(q + "/") for q in paths))


async def on_bare_node(argv: list[str], env: dict[str, str], stdin: bytes) -> tuple[int, bytes, bytes]:
    """Run ``argv`` in a private mount namespace with :func:`hidden_paths` covered by empty tmpfs."""
    hide = hidden_paths([p for p in (*argv, *env.values()) if p.startswith("/")])
    script = (
        'for d in "$@"; do [ "$d" = -- ] && break; mount -t tmpfs -o size=1m tmpfs "$d" || exit 97; done\n'
        f"[ ! -e {sys.base_prefix}/lib ] && [ ! -e {sys.prefix}/bin ] || exit 98\n"
        'while [ "$1" != -- ]; do shift; done; shift\n'
        'exec "$@"\n'
    )
    proc = await asyncio.create_subprocess_exec(
        "unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *hide, "--",
        "env", *(f"{k}={v}" for k, v in env.items()), *argv,  # only for the plugin, not for mount
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, cwd="/",
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    assert proc.returncode not in (97, 98), f"could not hide the Pythons: {err.decode()}"
    return proc.returncode or 0, out, err


@pytest.fixture(scope="module", params=["test-python", "system-python"])
def runtime(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A runtime built from the interpreter running the tests (pyenv: shared libpython, absolute RUNPATH),
    and one from the system's (Debian: static interpreter, vendor-patched ``site``); both get hidden."""
    prefix = sys.base_prefix if request.param == "test-python" else "/usr"
    if not os.path.isfile(f"{prefix}/bin/python3"):
        pytest.skip(f"no {prefix}/bin/python3 on this machine")
    into = tmp_path_factory.mktemp("image") / "cni-plugin-runtime"
    build(prefix, str(into))
    return str(into)


def self_signed_for_loopback() -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


AMBIENT = ("istio.io/dataplane-mode", "ambient")
OBJECTS: dict[str, dict[str, Any]] = {
    "/api/v1/namespaces/plain": {"metadata": {"name": "plain"}},
    "/api/v1/namespaces/plain/pods/web": {"metadata": {"name": "web", "namespace": "plain", "uid": "u-web"}},
    "/api/v1/namespaces/mesh": {
        "metadata": {"name": "mesh", "labels": {"istio.io/dataplane-mode": "ambient"}}
    },
    "/api/v1/namespaces/mesh/pods/app": {"metadata": {"name": "app", "namespace": "mesh", "uid": "u-app"}},
}


@pytest.fixture
async def api_server(tmp_path: Path) -> AsyncIterator[tuple[str, list[str]]]:
    """An HTTPS "API server" on loopback: two namespaces with a pod each. Yields (kubeconfig, paths seen)."""
    cert, key = self_signed_for_loopback()
    (tmp_path / "apiserver.crt").write_bytes(cert)
    (tmp_path / "apiserver.key").write_bytes(key)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp_path / "apiserver.crt", tmp_path / "apiserver.key")
    seen: list[str] = []

    async def get(request: web.Request) -> web.Response:
        seen.append(request.path)
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.Response(status=401)
        obj = OBJECTS.get(request.path)
        return web.json_response(obj) if obj else web.Response(status=404)

    app = web.Application()
    app.router.add_get("/{tail:.*}", get)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, LOOPBACK, 0, ssl_context=ctx)
    await site.start()
    port = runner.addresses[0][1]
    kubeconfig = tmp_path / "run" / "istio-cni-kubeconfig"
    kubeconfig.parent.mkdir(exist_ok=True)
    cluster = {
        "server": f"https://{LOOPBACK}:{port}",
        "certificate-authority-data": base64.b64encode(cert).decode(),
    }
    users = [{"name": "u", "user": {"token": TOKEN}}]
    kubeconfig.write_text(json.dumps({"clusters": [{"name": "c", "cluster": cluster}], "users": users}))
    try:
        yield str(kubeconfig), seen
    finally:
        await runner.cleanup()


def cni_env(command: str, namespace: str = "", pod: str = "") -> dict[str, str]:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": f"c-{pod}", "CNI_NETNS": "/var/run/netns/x",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}  # fmt: skip
    if pod:
        env["CNI_ARGS"] = f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod}"
    return env


async def test_installed_plugin_runs_without_our_python(
    runtime: str, api_server: tuple[str, list[str]], tmp_path: Path
) -> None:
    kubeconfig, api_log = api_server
    bin_dir, conf_dir, run_dir = tmp_path / "bin", tmp_path / "net.d", tmp_path / "run"
    bin_dir.mkdir()
    conf_dir.mkdir()
    (conf_dir / "10-bridge.conflist").write_text(
        json.dumps({"cniVersion": "1.0.0", "name": "k8s", "plugins": [{"type": "bridge"}]})
    )
    entry = plugin_entry(exclude_namespaces=["kube-system"], enablement_selectors=[],
                         agent_run_dir=str(run_dir), kubeconfig=kubeconfig)  # fmt: skip
    installer = Installer(str(bin_dir), str(conf_dir), str(run_dir), "/nonexistent/python", entry,
                          runtime=runtime)  # fmt: skip
    info = read_info(runtime)
    events: list[PluginAddEvent] = []

    async def agent(event: PluginAddEvent) -> AddOutcome:
        events.append(event)
        return AddOutcome(True)

    server = PluginEventServer(str(run_dir / "pluginevent.sock"), agent)
    try:
        assert installer.install()
        assert tree_hash(bin_dir / RUNTIMES_NAME / info.hash) == info.hash
        net = json.loads(Path(installer.chained_into or "").read_text())
        ours = net["plugins"][-1]
        launcher = str(bin_dir / "istio-cni")

        def conf(prev: Any = PREV) -> bytes:
            return json.dumps(
                dict(ours, cniVersion=net["cniVersion"], name=net["name"], prevResult=prev)
            ).encode()

        code, out, err = await on_bare_node([launcher], cni_env("VERSION"), b'{"cniVersion": "1.0.0"}')
        assert code == 0, err.decode()
        assert json.loads(out)["supportedVersions"][-1] == "1.0.0"

        # not in the mesh: decided from the API server over TLS, passed through, the agent never asked
        code, out, err = await on_bare_node([launcher], cni_env("ADD", "plain", "web"), conf())
        assert code == 0, err.decode()
        assert json.loads(out) == PREV
        assert api_log == ["/api/v1/namespaces/plain/pods/web", "/api/v1/namespaces/plain"]
        assert events == []

        # in the mesh: handed to the agent over its unix socket, then passed through
        await server.start()
        code, out, err = await on_bare_node([launcher], cni_env("ADD", "mesh", "app"), conf())
        assert code == 0, err.decode()
        assert json.loads(out) == PREV
        assert [(e.pod_namespace, e.pod_name, e.pod_uid, e.ips) for e in events] == [
            ("mesh", "app", "u-app", ("10.78.9.5",))
        ]
        code, out, err = await on_bare_node([launcher], cni_env("DEL", "mesh", "app"), conf(None))
        assert (code, out) == (0, b""), err.decode()
    finally:
        await server.close()
        installer.uninstall()
    assert sorted(os.listdir(bin_dir)) == []


async def test_runtime_uses_its_own_prefix_and_libraries(runtime: str) -> None:
    """What the launcher exec's, with what it links: its own prefix, and the libraries it bundles."""
    info = read_info(runtime)
    env = {"LD_LIBRARY_PATH": f"{runtime}/lib"} if info.library_path else {}
    probe = (
        "import json, ssl, hashlib, sys; hashlib.sha256(b'x');"
        "maps = {l.split()[-1] for l in open('/proc/self/maps') if '.so' in l};"
        "print(json.dumps({'prefix': sys.prefix, 'path': sys.path, 'maps': sorted(maps)}))"
    )
    code, out, err = await on_bare_node([f"{runtime}/{INTERPRETER}", "-I", "-c", probe], env, b"")
    assert code == 0, err.decode()
    seen = json.loads(out)
    assert seen["prefix"] == runtime
    assert all(p.startswith(runtime) for p in seen["path"]), seen["path"]
    bundled = {p.name for p in Path(runtime, "lib").glob("*.so*")}
    from_runtime = {Path(m).name for m in seen["maps"] if m.startswith(runtime)}
    loaded_bundled = {Path(m).name for m in seen["maps"] if Path(m).name in bundled}
    assert loaded_bundled <= from_runtime, "a bundled library was loaded from the node instead"
    from_node = [m for m in seen["maps"] if not m.startswith(runtime)]
    assert all(is_glibc(Path(m).name) for m in from_node), from_node  # only glibc comes from the node


def test_rebuilding_the_same_sources_keeps_the_hash(tmp_path: Path) -> None:
    """The build is reproducible: a rebuild (every local e2e run, every image build) names the same node copy
    instead of copying a new runtime onto every node."""
    first = build(sys.base_prefix, str(tmp_path / "first"))
    again = build(sys.base_prefix, str(tmp_path / "again"))
    assert again.hash == first.hash
