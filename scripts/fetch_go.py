#!/usr/bin/env python3
"""Fetch a Go toolchain from the Go module proxy when the machine has none new enough.

The local cluster's Kubernetes binaries are built from source and need Go >= 1.24, which Debian 12 does not
package. Go publishes every toolchain as the module ``golang.org/toolchain`` (that is how ``GOTOOLCHAIN=auto``
gets one), so a machine that can reach only package registries can still get it: the zip comes from the proxy,
and its ``h1:`` hash is checked against the checksum database (also read through the proxy) before anything is
unpacked. Standard library only: this runs before the project's environment exists.

    python3 scripts/fetch_go.py <dest-dir> <version>     # prints the GOROOT it unpacked

The version is scripts/paths.sh's GO_FALLBACK_VERSION (the one place it is set: PATH looks for that GOROOT).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import platform
import shutil
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

MODULE = "golang.org/toolchain"
ARCHES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


def module_version(go_version: str, machine: str) -> str:
    try:
        arch = ARCHES[machine.lower()]
    except KeyError:
        raise SystemExit(f"fetch_go: no Go toolchain for machine type {machine!r}") from None
    return f"v0.0.1-go{go_version}.linux-{arch}"


def h1(archive: zipfile.ZipFile) -> str:
    """The go.sum hash of a module zip: SHA-256 of "<sha256 hex>  <name>\\n" for each file, sorted by name."""
    summary = hashlib.sha256()
    for name in sorted(i.filename for i in archive.infolist() if not i.is_dir()):
        if "\n" in name:
            raise ValueError(f"file name with a newline in the module zip: {name!r}")
        summary.update(f"{hashlib.sha256(archive.read(name)).hexdigest()}  {name}\n".encode())
    return "h1:" + base64.b64encode(summary.digest()).decode()


def expected_h1(sumdb_answer: str, version: str) -> str:
    """The zip's hash from a checksum-database lookup answer (``<module> <version> h1:...`` lines)."""
    for line in sumdb_answer.splitlines():
        fields = line.split()
        if len(fields) == 3 and fields[0] == MODULE and fields[1] == version:
            return fields[2]
    raise ValueError(f"the checksum database has no hash for {MODULE}@{version}")


def unpack(archive: zipfile.ZipFile, prefix: str, dest: Path) -> None:
    """Extract the files under ``prefix`` into ``dest`` keeping their modes (the zip holds bin/go etc.)."""
    for info in archive.infolist():
        if info.is_dir() or not info.filename.startswith(prefix):
            continue
        rel = Path(info.filename[len(prefix) :])
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"unsafe path in the module zip: {info.filename!r}")
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(info) as src, target.open("wb") as out:
            shutil.copyfileobj(src, out)
        mode = (info.external_attr >> 16) & 0o777
        os.chmod(target, mode or 0o644)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=300) as response:  # https URLs only (see fetch)
        data: bytes = response.read()
    return data


def fetch(dest: Path, go_version: str) -> Path:
    proxy = os.environ.get("GOPROXY", "https://proxy.golang.org").split(",")[0].split("|")[0]
    if not proxy.startswith("https://"):
        proxy = "https://proxy.golang.org"
    version = module_version(go_version, platform.machine())
    print(f"fetch_go: {MODULE}@{version} from {proxy}", file=sys.stderr)
    data = _get(f"{proxy}/{MODULE}/@v/{version}.zip")
    want = expected_h1(_get(f"{proxy}/sumdb/sum.golang.org/lookup/{MODULE}@{version}").decode(), version)
    archive = zipfile.ZipFile(io.BytesIO(data))
    have = h1(archive)
    if have != want:
        raise SystemExit(f"fetch_go: checksum mismatch for {MODULE}@{version}: got {have}, want {want}")
    goroot = dest / f"go{go_version}"
    if goroot.exists():
        shutil.rmtree(goroot)
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".go-", dir=dest))
    unpack(archive, f"{MODULE}@{version}/", staging)
    staging.rename(goroot)
    return goroot


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    print(fetch(Path(argv[0]), argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
