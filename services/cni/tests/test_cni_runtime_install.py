"""The installer's runtime mode with a stand-in runtime (a shell script as ``bin/python3``): the launcher as
the node's shell runs it, the copy to ``istio-cni.d/<hash>``, upgrades, damage, repair by the watcher,
uninstall.
The real interpreter on a node without our Python is in test_cni_runtime_node.py.
"""

# Small temp files in test bodies; blocking file operations there are fine.
# ruff: noqa: ASYNC240

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from istio_cni.install import Installer
from istio_cni.noderuntime import (
    RUNTIME_TMP_PREFIX,
    RUNTIMES_NAME,
    STALE_COPY_S,
    choose_runtime,
    runtime_launcher_script,
)
from istio_cni.runtime import VERSION_FILE, RuntimeInfo, tree_hash

# Prints how it was run, so the tests see exactly what the launcher exec'd.
FAKE_PYTHON = """#!/bin/sh
printf '%s\\n' "exe=$0" "LD_LIBRARY_PATH=${LD_LIBRARY_PATH-unset}" "$@"
cat
"""


def make_runtime(root: Path, marker: str = "v1", library_path: bool = False) -> RuntimeInfo:
    (root / "bin").mkdir(parents=True, exist_ok=True)
    (root / "lib" / "python3.11").mkdir(parents=True, exist_ok=True)
    (root / "bin" / "python3").write_text(FAKE_PYTHON)
    (root / "bin" / "python3").chmod(0o755)
    (root / "lib" / "python3.11" / "os.py").write_text(f"# {marker}\n")
    info = RuntimeInfo(tree_hash(root), "3.11.0", library_path)
    (root / VERSION_FILE).write_text(info.to_json())
    return info


@pytest.fixture
def node(tmp_path: Path) -> dict[str, Path]:
    paths = {n: tmp_path / n for n in ("bin", "net.d", "run", "image")}
    for p in paths.values():
        p.mkdir()
    (paths["net.d"] / "10-bridge.conflist").write_text(
        json.dumps({"cniVersion": "1.0.0", "name": "k8s", "plugins": [{"type": "bridge"}]})
    )
    return paths


def installer(node: dict[str, Path], runtime: Path | None) -> Installer:
    return Installer(
        str(node["bin"]), str(node["net.d"]), str(node["run"]), "/nonexistent/python", {"type": "istio-cni"},
        runtime=str(runtime) if runtime else None,
    )  # fmt: skip


def run_launcher(path: str, *args: str, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [path, *args], input="{}", capture_output=True, text=True, cwd=cwd, env={"PATH": "/usr/bin:/bin"},
        check=False,
    )  # fmt: skip


def runtimes(node: dict[str, Path]) -> list[str]:
    return sorted(os.listdir(node["bin"] / RUNTIMES_NAME))


def test_install_copies_runtime_and_launcher_runs_it(node: dict[str, Path]) -> None:
    info = make_runtime(node["image"])
    inst = installer(node, node["image"])
    assert inst.install()
    copy = node["bin"] / RUNTIMES_NAME / info.hash
    assert runtimes(node) == [info.hash]  # no temp copy left behind
    assert tree_hash(copy) == info.hash
    assert (copy / VERSION_FILE).read_text() == info.to_json()
    launcher = node["bin"] / "istio-cni"
    assert launcher.read_text() == runtime_launcher_script(info)
    assert os.access(launcher, os.X_OK)
    done = run_launcher(str(launcher), "arg one")
    assert done.returncode == 0, done.stderr
    exe, ld, *argv = done.stdout.splitlines()
    assert exe == f"exe={copy}/bin/python3"  # found next to the launcher, whatever the agent's path was
    assert ld == "LD_LIBRARY_PATH=unset"
    assert argv == ["-I", "-m", "istio_cni.plugin", "arg one", "{}"]  # args and stdin passed through
    assert not inst.install()  # idempotent: nothing rewritten


def test_launcher_by_relative_path_and_library_path(node: dict[str, Path]) -> None:
    info = make_runtime(node["image"], library_path=True)
    installer(node, node["image"]).install()
    for path, cwd in (("./istio-cni", str(node["bin"])), ("bin/istio-cni", str(node["bin"].parent))):
        done = run_launcher(path, cwd=cwd)
        assert done.returncode == 0, done.stderr
        exe, ld, *_ = done.stdout.splitlines()
        rt = f"{os.path.dirname(path)}/{RUNTIMES_NAME}/{info.hash}"
        assert (exe, ld) == (f"exe={rt}/bin/python3", f"LD_LIBRARY_PATH={rt}/lib")


def test_launcher_without_runtime_fails_with_try_again_later(node: dict[str, Path]) -> None:
    info = make_runtime(node["image"])
    installer(node, node["image"]).install()
    shutil.rmtree(node["bin"] / RUNTIMES_NAME / info.hash)
    done = run_launcher(str(node["bin"] / "istio-cni"))
    assert done.returncode == 1
    body = json.loads(done.stdout)
    assert body["code"] == 11
    assert "plugin runtime is missing" in body["msg"]


def test_upgrade_switches_launcher_then_removes_the_old_runtime(node: dict[str, Path]) -> None:
    old = make_runtime(node["image"], "v1")
    installer(node, node["image"]).install()
    stale_copy = node["bin"] / RUNTIMES_NAME / f"{RUNTIME_TMP_PREFIX}dead"
    fresh_copy = node["bin"] / RUNTIMES_NAME / f"{RUNTIME_TMP_PREFIX}busy"
    foreign = node["bin"] / RUNTIMES_NAME / "README"
    for d in (stale_copy, fresh_copy):
        d.mkdir()
    os.utime(stale_copy, (0, 0))
    foreign.write_text("not ours")
    new = make_runtime(node["image"], "v2")
    assert new.hash != old.hash
    assert installer(node, node["image"]).install()
    assert runtimes(node) == sorted([new.hash, fresh_copy.name, foreign.name])
    assert (node["bin"] / "istio-cni").read_text() == runtime_launcher_script(new)
    assert STALE_COPY_S > 60


def test_first_pass_replaces_a_damaged_copy(node: dict[str, Path]) -> None:
    info = make_runtime(node["image"])
    installer(node, node["image"]).install()
    os_py = node["bin"] / RUNTIMES_NAME / info.hash / "lib" / "python3.11" / "os.py"
    os_py.write_text("# tampered\n")  # VERSION still says the right hash
    fresh = installer(node, node["image"])  # a restarted agent re-hashes the node copy once
    assert fresh.install()
    assert os_py.read_text() == "# v1\n"
    os_py.write_text("# tampered again\n")
    assert not fresh.install()  # later passes only check VERSION and the interpreter (cheap)


def test_python_mode_removes_runtimes_and_uninstall_removes_everything(node: dict[str, Path]) -> None:
    make_runtime(node["image"])
    installer(node, node["image"]).install()
    python_mode = installer(node, None)
    assert python_mode.install()
    assert "/nonexistent/python -m istio_cni.plugin" in (node["bin"] / "istio-cni").read_text()
    assert not (node["bin"] / RUNTIMES_NAME).exists()
    inst = installer(node, node["image"])
    inst.install()
    inst.uninstall()
    assert sorted(os.listdir(node["bin"])) == []
    assert "istio-cni" not in (node["net.d"] / "10-bridge.conflist").read_text()


def test_an_invalid_runtime_is_an_install_failure(node: dict[str, Path]) -> None:
    (node["image"] / "bin").mkdir()  # no VERSION: not a runtime
    inst = installer(node, node["image"])
    inst._attempt()
    assert inst.failures == 1
    assert not (node["bin"] / "istio-cni").exists()  # never a launcher pointing at nothing


def test_choose_runtime(node: dict[str, Path], tmp_path: Path) -> None:
    assert choose_runtime(str(node["image"]), "/py") == str(node["image"])
    assert choose_runtime(str(tmp_path / "absent"), "/py") is None
    assert choose_runtime("", "/py") is None


async def settle(inst: Installer) -> None:
    """Let the watcher consume the events of its own last writes (one more pass, which writes nothing), so
    that the next pass can only come from what the test does."""
    seen = inst.passes
    async with asyncio.timeout(10):
        while inst.passes <= seen:
            await inst.wait_changed()


async def restored(inst: Installer, copy: Path) -> None:
    async with asyncio.timeout(10):
        while not copy.is_dir():
            await inst.wait_changed()
    await settle(inst)


async def test_watch_restores_deleted_runtime(node: dict[str, Path]) -> None:
    info = make_runtime(node["image"])
    inst = installer(node, node["image"])
    copy = node["bin"] / RUNTIMES_NAME / info.hash
    ready = asyncio.Event()
    task = asyncio.create_task(inst.watch(ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        await settle(inst)
        shutil.rmtree(copy)  # the hash dir alone: only a watch on istio-cni.d sees this
        await restored(inst, copy)
        shutil.rmtree(node["bin"] / RUNTIMES_NAME)  # the whole runtimes dir: the bin dir sees it
        await restored(inst, copy)
        shutil.rmtree(copy)  # the restored istio-cni.d is a new directory: it must be watched again
        await restored(inst, copy)
        assert tree_hash(copy) == info.hash
        assert inst.repairs == 3
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    inst.uninstall()


def test_two_agents_copying_at_once_keep_one_copy(
    node: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A surge pod's agent finishes the same copy while we are copying: ours is dropped, theirs stays."""
    info = make_runtime(node["image"])
    first, second = installer(node, node["image"]), installer(node, node["image"])
    real_copytree = shutil.copytree
    theirs: list[int] = []

    def racing_copytree(src: str, dst: str, **kw: bool) -> object:
        if not theirs:
            monkeypatch.setattr(shutil, "copytree", real_copytree)
            assert second.install()  # the other agent, start to finish
            theirs.append(os.stat(node["bin"] / RUNTIMES_NAME / info.hash).st_ino)
        return real_copytree(src, dst, **kw)

    monkeypatch.setattr(shutil, "copytree", racing_copytree)
    first.install()
    assert runtimes(node) == [info.hash]  # no temp copy left behind
    assert os.stat(node["bin"] / RUNTIMES_NAME / info.hash).st_ino == theirs[0]  # not replaced under them
