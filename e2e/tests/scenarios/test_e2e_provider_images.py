"""The images the kind provider (and ``make images``) builds, checked without Docker.

The build stage of each Dockerfile is replayed with uv in a scratch directory: only its ``COPY`` lines bring
files in, and its ``uv sync`` runs make the virtualenv the image ships. The image's entrypoint package, with
every submodule, must then import from that virtualenv, run from outside the repository. On the local
cluster pods run from the workspace's full (dev) environment, so a service that imports a dev-only dependency,
or reads a file from the source tree, works there and fails only in a real container; this is where that
shows.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from meshtest.cluster.images import IMAGES as IMAGE_TABLE
from meshtest.e2e import providers
from meshtest.e2e.tools import REPO

#: what .dockerignore keeps out of the build context (among what a member directory can hold)
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".mypy_cache", ".ruff_cache")

IMPORT_ALL = """
import importlib, os, pkgutil, sys
root = importlib.import_module(sys.argv[1])
broken = []
for info in pkgutil.walk_packages(root.__path__, sys.argv[1] + "."):
    try:
        importlib.import_module(info.name)
    except Exception as exc:
        broken.append(f"{info.name}: {exc!r}")
print("\\n".join(broken) if broken else "ok " + os.path.dirname(root.__file__))
"""


def build_stage(dockerfile: str) -> list[str]:
    """The instructions of the ``AS build`` stage, continuation lines joined."""
    text = (REPO / dockerfile).read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    start = next(i for i, line in enumerate(lines) if line.startswith("FROM ") and line.endswith(" AS build"))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("FROM ")), len(lines))
    return lines[start + 1 : end]


def copy_into(context: Path, sources: list[str], dest: str) -> None:
    target = context / dest
    for source in sources:
        path = REPO / source
        if path.is_dir():  # Docker copies a directory's contents
            shutil.copytree(path, target, ignore=IGNORED, dirs_exist_ok=True)
        else:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / path.name if dest.endswith("/") else target)


def replay(dockerfile: str, context: Path, venv: Path) -> None:
    env = {
        **os.environ,
        "UV_PROJECT_ENVIRONMENT": str(venv),
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_PYTHON": f"{sys.version_info.major}.{sys.version_info.minor}",
        "UV_NO_CONFIG": "1",
    }
    env.pop("VIRTUAL_ENV", None)
    for line in build_stage(dockerfile):
        op, _, rest = line.partition(" ")
        if op in ("ENV", "WORKDIR", "ARG") or rest.startswith("--from="):
            continue
        if op == "COPY":
            *sources, dest = rest.split()
            copy_into(context, sources, dest)
        elif op == "RUN" and rest.startswith("uv sync "):
            proc = subprocess.run(
                [*rest.split(), "--offline"],
                cwd=context,
                env=env,
                capture_output=True,
                text=True,
                check=False,
            )
            assert proc.returncode == 0, f"{dockerfile}: {rest}\n{proc.stderr[-3000:]}"
        else:
            pytest.fail(f"{dockerfile}: this test does not know how to replay {line!r}; teach it")


@pytest.mark.parametrize(("dockerfile", "name"), providers.IMAGES)
def test_image_virtualenv_imports_its_entrypoint_package(dockerfile: str, name: str, tmp_path: Path) -> None:
    context, venv = tmp_path / "src", tmp_path / "venv"
    context.mkdir()
    replay(dockerfile, context, venv)
    module = IMAGE_TABLE[name].entrypoint[2]
    package = module.split(".")[0] if name != "app" else module
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-c", IMPORT_ALL, package],
        cwd=tmp_path,
        env={"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok "), f"{name}: modules that do not import in the image:\n{proc.stdout}"
    installed = Path(proc.stdout.split(" ", 1)[1].strip())
    assert installed.is_relative_to(venv), f"{package} imported from {installed}, not from the image's venv"
