"""The plugin runtime on the node: its copies in ``<CNI bin dir>/istio-cni.d/<hash>/``, the launcher.

The image's runtime (built by :mod:`istio_cni.runtime`) is copied under a temp name and renamed, so a
half-copied runtime never has its final name; the launcher finds it relative to ``$0``, because the container
runtime runs the plugin by its node path (``/opt/cni/bin``), not the agent's (``/host/opt/cni/bin``). Only
names this module creates are ever removed: 16-hex-digit hash directories and ``.copy-*`` temp directories.
The :class:`~istio_cni.install.Installer` decides when (launcher first, then pruning; uninstall).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import shutil
import tempfile
import time

from meshkit.logs import kv

from istio_cni.runtime import (
    INTERPRETER,
    LIB_DIR,
    RuntimeBuildError,
    RuntimeInfo,
    read_info,
    replace_dir,
    tree_hash,
)

log = logging.getLogger("cni.install")

RUNTIMES_NAME = "istio-cni.d"  # <bin dir>/istio-cni.d/<hash>/: the plugin runtimes we copied (we own it)
RUNTIME_TMP_PREFIX = ".copy-"
STALE_COPY_S = 600.0  # an unfinished copy older than this was abandoned (agent killed mid-copy)
_HASH_DIR = re.compile(r"[0-9a-f]{16}")


def runtime_launcher_script(info: RuntimeInfo) -> str:
    """The launcher for runtime mode. A missing runtime answers CNI error 11 (try again later), so the
    sandbox is retried once the agent has restored it, instead of a shell's "not found"."""
    env = f'LD_LIBRARY_PATH="$rt/{LIB_DIR}"; export LD_LIBRARY_PATH\n' if info.library_path else ""
    missing = json.dumps(
        {
            "cniVersion": "1.0.0",
            "code": 11,
            "msg": "istio-cni: the plugin runtime is missing on this node"
            " (is the istio-cni node agent running?)",
        }
    )
    return (
        "#!/bin/sh\n"
        "# istio-cni CNI plugin launcher, written by the istio-cni node agent (removed on uninstall).\n"
        "# Runs the plugin on the Python runtime copied next to this file; $0 is the node's path of it.\n"
        'case "$0" in */*) d="${0%/*}" ;; *) d=. ;; esac\n'
        f'rt="$d/{RUNTIMES_NAME}/{info.hash}"\n'
        f'if [ ! -x "$rt/{INTERPRETER}" ]; then echo {shlex.quote(missing)}; exit 1; fi\n'
        f"{env}"
        f'exec "$rt/{INTERPRETER}" -I -m istio_cni.plugin "$@"\n'
    )


def choose_runtime(path: str, python: str) -> str | None:
    """Runtime mode when ``path`` (``CNI_PLUGIN_RUNTIME``) is a directory, else python mode; logs which."""
    if path and os.path.isdir(path):
        log.info("the CNI plugin will run on the bundled Python runtime", extra=kv(mode="runtime", dir=path))
        return path
    log.info(
        "no plugin runtime in this image: the CNI plugin will run on the agent's Python, which must exist"
        " at the same path on the node",
        extra=kv(mode="python", python=python, runtime=path),
    )
    return None


def copy_runtime(source: str, runtimes_path: str, info: RuntimeInfo, verify: bool) -> bool:
    """Copy ``source`` to ``<runtimes_path>/<hash>`` unless a good copy is there; True if it copied.

    ``verify`` re-hashes every file of an existing copy (once per agent start); otherwise VERSION and the
    interpreter are checked, which is cheap enough for every install pass.
    """
    target = os.path.join(runtimes_path, info.hash)
    if is_current(target, info, full=verify):
        return False
    damaged = os.path.lexists(target)
    os.makedirs(runtimes_path, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=RUNTIME_TMP_PREFIX, dir=runtimes_path)
    try:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
        os.chmod(tmp, 0o755)
        if not damaged and is_current(target, info, full=False):  # a surge pod's agent finished first
            shutil.rmtree(tmp, ignore_errors=True)
            return False
        replace_dir(tmp, target, RUNTIME_TMP_PREFIX)  # a damaged copy goes aside under a prunable name
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("copied the plugin runtime onto the node", extra=kv(dir=target, python=info.python))
    return True


def prune_runtimes(runtimes_path: str, keep: str | None) -> None:
    """Remove runtimes other than ``keep`` and abandoned copies; ``keep=None`` (python mode) removes all."""
    try:
        names = os.listdir(runtimes_path)
    except FileNotFoundError:
        return
    for name in names:
        path = os.path.join(runtimes_path, name)
        stale_copy = name.startswith(RUNTIME_TMP_PREFIX) and _age_s(path) > STALE_COPY_S
        if name != keep and (_HASH_DIR.fullmatch(name) or stale_copy):
            shutil.rmtree(path, ignore_errors=True)
            log.info("removed an old plugin runtime from the node", extra=kv(dir=path))
    if keep is None:
        with contextlib.suppress(OSError):
            os.rmdir(runtimes_path)  # only if empty: someone else's files stay


def is_current(target: str, info: RuntimeInfo, full: bool) -> bool:
    """The node copy is this runtime: same VERSION and an interpreter (``full``: every file re-hashed)."""
    try:
        if read_info(target) != info or not os.access(os.path.join(target, INTERPRETER), os.X_OK):
            return False
    except RuntimeBuildError:
        return False
    return not full or tree_hash(target) == info.hash


def _age_s(path: str) -> float:
    try:
        return time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
        return 0.0
