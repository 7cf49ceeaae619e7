"""scripts/fetch_go.py: the go.sum hash it checks a downloaded toolchain against, and safe unpacking."""

from __future__ import annotations

import importlib.util
import io
import stat
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "fetch_go.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fetch_go", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sample_zip(files: dict[str, tuple[str, int]]) -> zipfile.ZipFile:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, (text, mode) in files.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFREG | mode) << 16
            archive.writestr(info, text)
    return zipfile.ZipFile(io.BytesIO(buffer.getvalue()))


def test_h1_matches_go_dirhash() -> None:
    # the expected value is what golang.org/x/mod/sumdb/dirhash.HashZip(Hash1) prints for this zip
    archive = sample_zip(
        {
            "example.com/m@v1.0.0/go.mod": ("module example.com/m\n", 0o644),
            "example.com/m@v1.0.0/b/x.go": ("package b\n", 0o644),
            "example.com/m@v1.0.0/a.txt": ("hello\n", 0o644),
        }
    )
    assert load().h1(archive) == "h1:97HnCZhRZvR6GLTkYhbcC+97156Ue0hgHq+RxWjHKCw="


def test_expected_hash_is_read_for_the_zip_not_the_go_mod() -> None:
    answer = (
        "49562754\n"
        "golang.org/toolchain v0.0.1-go1.24.13.linux-amd64 h1:zip=\n"
        "golang.org/toolchain v0.0.1-go1.24.13.linux-amd64/go.mod h1:mod=\n"
    )
    fetch_go = load()
    assert fetch_go.expected_h1(answer, "v0.0.1-go1.24.13.linux-amd64") == "h1:zip="
    with pytest.raises(ValueError, match="no hash"):
        fetch_go.expected_h1(answer, "v0.0.1-go1.24.12.linux-amd64")


def test_unpack_keeps_modes_and_refuses_escapes(tmp_path: Path) -> None:
    fetch_go = load()
    prefix = "golang.org/toolchain@v0.0.1-go1.24.13.linux-amd64/"
    good = sample_zip({prefix + "bin/go": ("#!/bin/sh\n", 0o755), prefix + "VERSION": ("go1.24.13\n", 0o644)})
    fetch_go.unpack(good, prefix, tmp_path / "go")
    assert (tmp_path / "go/bin/go").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "go/VERSION").read_text() == "go1.24.13\n"
    evil = sample_zip({prefix + "../../etc/x": ("boom\n", 0o644)})
    with pytest.raises(ValueError, match="unsafe path"):
        fetch_go.unpack(evil, prefix, tmp_path / "evil")
    assert not (tmp_path / "etc").exists()


def test_machine_names_map_to_go_arches() -> None:
    fetch_go = load()
    assert fetch_go.module_version("1.24.13", "x86_64") == "v0.0.1-go1.24.13.linux-amd64"
    assert fetch_go.module_version("1.24.13", "aarch64") == "v0.0.1-go1.24.13.linux-arm64"
    with pytest.raises(SystemExit):
        fetch_go.module_version("1.24.13", "sparc")
