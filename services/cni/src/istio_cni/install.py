"""Installing the plugin on the node: the launcher in the CNI bin dir, our entry in the primary conflist, and
the kubeconfig the plugin uses; keeping them in place while the agent runs; removing them on uninstall.

The "binary" is a small launcher script named ``istio-cni``, in one of two modes:

- runtime mode (an image with a plugin runtime, see :mod:`istio_cni.runtime`): the runtime directory is
  copied to ``<bin dir>/istio-cni.d/<hash>/`` and the launcher execs its interpreter
  (:mod:`istio_cni.noderuntime`); other hash directories are removed once the new launcher is in place.
- python mode (no runtime in the image, e.g. the local cluster, whose "containers" share the host's files):
  the launcher execs ``<python> -m istio_cni.plugin``; that Python must exist at the same path on the host.

Files are written atomically (temp file + rename) keeping the original file mode, so kubelet never reads a
half-written config. The install pass is synchronous on purpose: a thread still copying after cancellation
could put files back after an uninstall; a runtime copy takes well under a second.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import shlex
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

from meshkit.logs import kv

from istio_cni import conflist
from istio_cni.inotify import DirWatcher
from istio_cni.noderuntime import RUNTIMES_NAME, copy_runtime, prune_runtimes, runtime_launcher_script
from istio_cni.runtime import RuntimeBuildError, RuntimeInfo, read_info

log = logging.getLogger("cni.install")

LAUNCHER_NAME = "istio-cni"
KUBECONFIG_NAME = "istio-cni-kubeconfig"
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
REPAIR_QUIET_S = 1.0  # repairs closer together than this mean a fight with another writer
MAX_REPAIR_BACKOFF_S = 30.0


def launcher_script(python: str) -> str:
    return (
        "#!/bin/sh\n"
        "# istio-cni CNI plugin launcher, written by the istio-cni node agent (removed on uninstall).\n"
        f'exec {shlex.quote(python)} -m istio_cni.plugin "$@"\n'
    )


def write_atomic(path: str, text: str, mode: int | None = None) -> None:
    directory = os.path.dirname(path) or "."
    if mode is None:
        try:
            mode = os.stat(path).st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o644
    fd, tmp = tempfile.mkstemp(prefix=".istio-cni-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def in_cluster_kubeconfig(sa_dir: str = SA_DIR) -> str | None:
    """A JSON kubeconfig from this pod's service account, or None outside a cluster."""
    host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    try:
        with open(os.path.join(sa_dir, "token"), encoding="utf-8") as fh:
            token = fh.read().strip()
        with open(os.path.join(sa_dir, "ca.crt"), "rb") as fh:
            ca = base64.b64encode(fh.read()).decode()
    except OSError:
        return None
    if not host:
        return None
    server = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
    cfg: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": {"server": server, "certificate-authority-data": ca}}],
        "users": [{"name": "istio-cni", "user": {"token": token}}],
        "contexts": [{"name": "istio-cni", "context": {"cluster": "local", "user": "istio-cni"}}],
        "current-context": "istio-cni",
    }
    return json.dumps(cfg)


@dataclass
class Installer:
    bin_dir: str
    conf_dir: str
    run_dir: str
    python: str
    entry: dict[str, Any]
    conf_name: str = ""
    kubeconfig_text: str | None = None
    repairs: int = 0  # writes after the first: someone removed or rewrote our files
    passes: int = 0  # install passes run by the watcher, written or not
    writes: int = 0
    failures: int = 0
    backoff_s: float = 0.0  # > 0 while another writer keeps undoing our changes
    chained_into: str | None = None
    runtime: str | None = None  # a plugin runtime directory (runtime mode); None: python mode
    # the runtime's VERSION, read (and the node copy fully re-hashed) at the first pass that copied it; the
    # image's runtime does not change while the agent runs, so later passes only do the cheap check
    _runtime_info: RuntimeInfo | None = None
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def launcher_path(self) -> str:
        return os.path.join(self.bin_dir, LAUNCHER_NAME)

    @property
    def kubeconfig_path(self) -> str:
        return os.path.join(self.run_dir, KUBECONFIG_NAME)

    @property
    def runtimes_path(self) -> str:
        return os.path.join(self.bin_dir, RUNTIMES_NAME)

    def install_files(self) -> bool:
        """Runtime (in runtime mode), launcher and kubeconfig; True if anything had to be (re)written."""
        os.makedirs(self.bin_dir, exist_ok=True)
        wrote = False
        keep = None
        if self.runtime is None:
            script = launcher_script(self.python)
        else:
            info = self._runtime_info or read_info(self.runtime)
            wrote = copy_runtime(self.runtime, self.runtimes_path, info, verify=self._runtime_info is None)
            self._runtime_info = info
            script, keep = runtime_launcher_script(info), info.hash
        if _read(self.launcher_path) != script:
            write_atomic(self.launcher_path, script, 0o755)
            wrote = True
        prune_runtimes(self.runtimes_path, keep)
        if self.kubeconfig_text is not None and _read(self.kubeconfig_path) != self.kubeconfig_text:
            os.makedirs(self.run_dir, exist_ok=True)
            write_atomic(self.kubeconfig_path, self.kubeconfig_text, 0o600)
            wrote = True
        return wrote

    def ensure_chained(self) -> bool:
        """Put our entry last in the primary config; True if the file was (re)written."""
        try:
            names = os.listdir(self.conf_dir)
        except FileNotFoundError:
            return False
        name = conflist.pick_primary(names, self.conf_name)
        if name is None:
            return False
        path = os.path.join(self.conf_dir, name)
        text = _read(path)
        if text is None or conflist.is_chained(name, text, self.entry):
            self.chained_into = path if text is not None else None
            return False
        new_name, new_text = conflist.chain(name, text, self.entry)
        new_path = os.path.join(self.conf_dir, new_name)
        write_atomic(new_path, new_text, os.stat(path).st_mode & 0o7777)
        if new_path != path:
            os.unlink(path)
        self.chained_into = new_path
        log.info("chained istio-cni into the CNI config", extra=kv(file=new_path))
        return True

    def install(self) -> bool:
        files = self.install_files()
        chained = self.ensure_chained()
        return files or chained

    async def watch(self, ready: asyncio.Event | None = None) -> None:
        """Install, then repair whenever the bin, conf or runtimes dir changes, until cancelled."""
        for d in (self.bin_dir, self.conf_dir):
            os.makedirs(d, exist_ok=True)
        watcher = DirWatcher([self.bin_dir, self.conf_dir])
        loop = asyncio.get_running_loop()
        last_repair = float("-inf")
        try:
            self._attempt()
            while True:
                if self.runtime is not None:
                    # a deleted hash dir shows up in istio-cni.d, not in the bin dir; (re-)watched after
                    # every pass because a restore creates a new directory
                    with contextlib.suppress(OSError):
                        watcher.add(self.runtimes_path)
                if ready is not None and self.chained_into is not None:
                    ready.set()
                self._changed.set()
                await watcher.changed()
                if self.backoff_s:
                    await asyncio.sleep(self.backoff_s)  # another writer keeps undoing us: do not spin
                before = self.repairs
                self._attempt()
                if self.repairs > before:
                    now = loop.time()
                    fighting = now - last_repair < REPAIR_QUIET_S
                    backoff = min(max(self.backoff_s * 2, 0.1), MAX_REPAIR_BACKOFF_S) if fighting else 0.0
                    self.backoff_s = backoff
                    if fighting:
                        log.warning(
                            "something keeps rewriting the CNI config or the plugin; is another istio-cni"
                            " agent running on this node?",
                            extra=kv(repairs=self.repairs, backoff_s=backoff),
                        )
                    last_repair = now
        finally:
            watcher.close()

    def _attempt(self) -> None:
        """One install pass; a broken primary config is logged and retried on the next change."""
        self.passes += 1
        try:
            wrote = self.install()
        except (OSError, conflist.ConfError, RuntimeBuildError) as exc:
            self.failures += 1
            log.error("could not install the CNI plugin", extra=kv(error=str(exc)))  # noqa: TRY400
            return
        if wrote:
            self.writes += 1
            if self.writes > 1:
                self.repairs += 1
                log.info("repaired the CNI installation", extra=kv(repairs=self.repairs))

    async def wait_changed(self) -> None:
        """For tests: wait until the watch loop has processed the latest change."""
        self._changed.clear()
        await self._changed.wait()

    def uninstall(self) -> None:
        """Remove our conflist entry, the launcher, the runtimes and the kubeconfig; nothing else."""
        try:
            names = os.listdir(self.conf_dir)
        except FileNotFoundError:
            names = []
        for name in names:
            if not name.endswith(conflist.CONF_SUFFIXES):
                continue
            path = os.path.join(self.conf_dir, name)
            text = _read(path)
            try:
                new_text = conflist.unchain(name, text) if text is not None else None
            except conflist.ConfError:
                continue
            if new_text is not None:
                write_atomic(path, new_text)
                log.info("removed istio-cni from the CNI config", extra=kv(file=path))
        for path in (self.launcher_path, self.kubeconfig_path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        shutil.rmtree(self.runtimes_path, ignore_errors=True)  # after the launcher: it must not point nowhere


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except (FileNotFoundError, IsADirectoryError):
        return None
