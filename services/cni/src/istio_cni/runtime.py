"""The plugin runtime: a relocatable CPython plus the plugin's sources, which the agent copies onto the node.

Upstream ships the CNI plugin as a static Go binary; our plugin is Python, and a node has no Python of ours
(or none at all). So the image carries a self-contained runtime directory::

    bin/python3                      the interpreter (the real binary, not a symlink)
    lib/libpython3.X.so.1.0          when the interpreter is built shared
    lib/<soname>                     shared libraries from outside the prefix that the interpreter or a kept
                                     extension module loads (ldd), except glibc's own (the node's glibc is
                                     the floor: a copied libc would not match the node's ld.so)
    lib/python3.X/                   the standard library, pruned (:data:`PRUNED_STDLIB`), with bytecode
    lib/python3.X/istio_cni/         __init__.py, enrolment.py, plugin/ and nothing else (see below)
    VERSION                          JSON :class:`RuntimeInfo`: content hash, Python version, library_path

``python -m istio_cni.runtime build --prefix <cpython prefix> --into <dir>`` makes one. The planning (what to
keep, which libraries to copy, the content hash) is pure; :func:`build` is the thin file/ldd shell around it.
This module, like the plugin, uses only the standard library, so any Python can run the build (the Dockerfile
runs it with the relocatable interpreter itself, not with the agent's virtualenv).

The plugin's package sits in the stdlib directory, not in site-packages: the stdlib directory is on
``sys.path`` for every CPython build, while where site-packages is depends on the ``site`` module's vendor
patches (Debian's puts ``dist-packages`` there instead), so this works whichever CPython the runtime is
built from. The runtime has no site-packages at all.

Invariants: the runtime never refers to its build location (prefix from the binary's own path, ``-I``, and
either RUNPATH ``$ORIGIN`` or the launcher's ``LD_LIBRARY_PATH``, recorded in ``library_path``); the hash
covers every file but VERSION, so an install can tell whether a node copy is current.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

RUNTIME_FORMAT = 1
VERSION_FILE = "VERSION"
INTERPRETER = "bin/python3"
LIB_DIR = "lib"
HASH_LEN = 16  # hex digits in the node directory name: plenty to tell builds apart

# Top-level stdlib entries the plugin never needs: test suites, GUI/terminal tools, installers, build files.
PRUNED_STDLIB = frozenset(
    {
        "test", "idlelib", "tkinter", "turtledemo", "turtle.py", "ensurepip", "lib2to3", "pydoc_data",
        "curses", "dbm", "sqlite3", "crypt.py", "venv", "__phello__", "__hello__.py",
    }
)  # fmt: skip
PRUNED_DIRS = frozenset({"__pycache__", "test", "tests", "idle_test"})  # anywhere: bytecode is rebuilt
PRUNED_PREFIXES = ("config-",)  # config-3.X-<arch>/: libpythonX.a and the makefile, build-time only
# Extension modules tied to what is pruned above, or that drag in X11/ncurses/Kerberos libraries.
PRUNED_EXTENSIONS = frozenset(
    {
        "_tkinter", "_curses", "_curses_panel", "readline", "nis", "ossaudiodev", "spwd", "_dbm", "_gdbm",
        "_sqlite3", "_crypt", "_ctypes_test", "_xxtestfuzz", "xxlimited", "xxlimited_35",
        "_xxsubinterpreters",
    }
)  # fmt: skip
# glibc's own libraries stay the node's: they must match the node's dynamic loader.
_GLIBC = re.compile(
    r"^(ld-linux[\w.-]*|ld64|libc|libm|libmvec|libpthread|libdl|librt|libutil|libresolv|libanl|libnsl"
    r"|libBrokenLocale|libthread_db|libnss_\w+|linux-vdso|linux-gate)\.so(\.\d+)*$"
)


class RuntimeBuildError(Exception):
    """The runtime could not be built, or is not usable; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class RuntimeInfo:
    """What ``VERSION`` says about a runtime."""

    hash: str
    python: str
    library_path: bool  # the launcher must set LD_LIBRARY_PATH to <runtime>/lib
    format: int = RUNTIME_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> RuntimeInfo:
        try:
            raw = json.loads(text)
            info = cls(str(raw["hash"]), str(raw["python"]), bool(raw["library_path"]), int(raw["format"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise RuntimeBuildError(f"not a plugin runtime VERSION file: {exc}") from None
        if info.format != RUNTIME_FORMAT or not re.fullmatch(rf"[0-9a-f]{{{HASH_LEN}}}", info.hash):
            raise RuntimeBuildError(f"unsupported plugin runtime VERSION: {text.strip()!r}")
        return info


def read_info(runtime: str | os.PathLike[str]) -> RuntimeInfo:
    try:
        text = Path(runtime, VERSION_FILE).read_text(encoding="utf-8")
    except OSError as exc:
        raise RuntimeBuildError(f"{runtime} is not a plugin runtime (no {VERSION_FILE}): {exc}") from None
    return RuntimeInfo.from_json(text)


# -- pure planning ---------------------------------------------------------------------------------------


def keep_stdlib(rel: str) -> bool:
    """Whether ``rel`` (a file path relative to ``lib/python3.X``) belongs in the runtime."""
    parts = rel.split("/")
    top = parts[0]
    if top in PRUNED_STDLIB or top.startswith(PRUNED_PREFIXES) or PRUNED_DIRS.intersection(parts[:-1]):
        return False
    if top in ("site-packages", "dist-packages", "istio_cni"):
        return False  # third-party packages; the plugin's own package is put next to the stdlib
    if top == "lib-dynload":
        module = parts[-1].split(".")[0]
        return module not in PRUNED_EXTENSIONS and not module.startswith("_test")
    return not rel.endswith((".pyc", ".pyo", ".exe"))


def is_glibc(soname: str) -> bool:
    return bool(_GLIBC.match(soname))


def parse_ldd(text: str) -> list[tuple[str, str | None]]:
    """``(soname, resolved path or None if not found)`` per ``name => path`` line of ``ldd`` output.

    Lines without ``=>`` (the vDSO, the program interpreter, "statically linked") are the node's own.
    """
    deps: list[tuple[str, str | None]] = []
    for line in text.splitlines():
        name, arrow, rest = line.strip().partition(" => ")
        if arrow:
            target = rest.split(" (")[0].strip()
            deps.append((name, None if target in ("not found", "") else target))
    return deps


def foreign_libraries(deps: Iterable[tuple[str, str | None]], root: str) -> dict[str, str]:
    """Non-glibc dependencies resolved outside ``root``: soname -> path to copy. Raises on 'not found'."""
    out: dict[str, str] = {}
    for soname, path in deps:
        if is_glibc(soname):
            continue
        if path is None:
            raise RuntimeBuildError(f"shared library {soname} not found (installed in the build stage?)")
        if not os.path.abspath(path).startswith(root.rstrip("/") + "/"):
            out[soname] = path
    return out


def plugin_sources(package_dir: str | os.PathLike[str]) -> list[str]:
    """The plugin's files relative to the ``istio_cni`` package: what the runtime gets of it."""
    pkg = Path(package_dir)
    plugin = sorted(f"plugin/{p.name}" for p in (pkg / "plugin").glob("*.py"))
    names = ["__init__.py", "enrolment.py", *plugin]
    return [n for n in names if (pkg / n).is_file()]


def content_hash(files: Iterable[tuple[str, bool, bytes]]) -> str:
    """Hash of ``(relative path, executable, sha256 of content)`` triples, order-independent."""
    outer = hashlib.sha256()
    for rel, executable, digest in sorted(files):
        outer.update(f"{rel}\0{int(executable)}\0".encode() + digest)
    return outer.hexdigest()[:HASH_LEN]


# -- thin file operations --------------------------------------------------------------------------------


def tree_hash(root: str | os.PathLike[str]) -> str:
    """The content hash of a runtime directory as it is on disk (VERSION excluded)."""
    return content_hash(_hashed_files(Path(root)))


def _hashed_files(root: Path) -> Iterator[tuple[str, bool, bytes]]:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            if rel == VERSION_FILE:
                continue
            with path.open("rb") as fh:
                digest = hashlib.file_digest(fh, "sha256").digest()
            yield rel, os.access(path, os.X_OK), digest


@dataclass(frozen=True, slots=True)
class SourcePython:
    """What the source interpreter says about itself (asked by running it: the builder may be another)."""

    executable: str
    version: str  # "3.11"
    full_version: str
    stdlib: str
    ldlibrary: str | None  # "libpython3.11.so.1.0" when built shared


# LIBDIR is where the build was configured to install (python-build-standalone says /install); the
# interpreter's own prefix, found at run time, is where a relocated install really has its libpython.
_PROBE = (
    "import json, os, sys, sysconfig; v = sysconfig.get_config_var;"
    "name = v('INSTSONAME') if v('Py_ENABLE_SHARED') else None;"
    "dirs = [os.path.join(sys.base_prefix, 'lib'), v('LIBDIR')];"
    "libs = [os.path.join(d, name) for d in dirs if name and os.path.isfile(os.path.join(d, name))];"
    "print(json.dumps({'version': '%d.%d' % sys.version_info[:2], 'full': sys.version.split()[0],"
    " 'stdlib': sysconfig.get_path('stdlib'), 'shared': name, 'lib': (libs or [None])[0]}))"
)


def probe(prefix: str) -> SourcePython:
    candidates = [Path(prefix, "bin", n) for n in ("python3", "python")]
    exe = next((c for c in candidates if c.is_file()), None)
    if exe is None:
        raise RuntimeBuildError(f"no bin/python3 under {prefix}: is it a CPython installation prefix?")
    done = _run([str(exe), "-I", "-c", _PROBE], {})
    raw = json.loads(done)
    if raw["shared"] and not raw["lib"]:
        raise RuntimeBuildError(f"{exe} is built shared but its {raw['shared']} is not under {prefix}/lib")
    return SourcePython(str(exe.resolve()), raw["version"], raw["full"], raw["stdlib"], raw["lib"])


def build(prefix: str, into: str, package_dir: str | None = None) -> RuntimeInfo:
    """Build a runtime from the CPython at ``prefix`` into ``into`` (replaced atomically when done)."""
    src = probe(prefix)
    pkg = Path(package_dir or Path(__file__).parent)
    parent = Path(into).absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".runtime-", dir=parent))
    try:
        os.chmod(stage, 0o755)  # mkdtemp's 0700 would follow the copy onto the node
        pylib = f"{LIB_DIR}/python{src.version}"
        _copy(src.executable, stage / INTERPRETER)
        if src.ldlibrary and _links(src.executable, Path(src.ldlibrary).name):  # Debian's is static
            _copy(src.ldlibrary, stage / LIB_DIR / Path(src.ldlibrary).name)
        for rel in _walk(src.stdlib):
            if keep_stdlib(rel):
                _copy(os.path.join(src.stdlib, rel), stage / pylib / rel)
        for rel in plugin_sources(pkg):
            _copy(str(pkg / rel), stage / pylib / "istio_cni" / rel)
        library_path = _bundle_libraries(stage)
        env = {"LD_LIBRARY_PATH": str(stage / LIB_DIR)} if library_path else {}
        # -B: the modules compileall itself imports would otherwise get timestamped .pyc files first, and a
        # rebuild of the same sources would get a new hash (a new copy on every node)
        _run([str(stage / INTERPRETER), "-I", "-B", "-m", "compileall", "-q", "-s", str(stage), "-p", "/",
              "--invalidation-mode", "unchecked-hash", str(stage / pylib)], env)  # fmt: skip
        _self_check(stage, env)
        info = RuntimeInfo(tree_hash(stage), src.full_version, library_path)
        (stage / VERSION_FILE).write_text(info.to_json(), encoding="utf-8")
        replace_dir(stage, into, ".runtime-")
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return info


def _links(elf: str, soname: str) -> bool:
    return any(name == soname for name, _ in parse_ldd(_run(["ldd", elf], {})))


def _bundle_libraries(stage: Path) -> bool:
    """Copy foreign shared libraries into ``lib/``; True if the loader needs LD_LIBRARY_PATH to find them."""
    elves = [stage / INTERPRETER, *sorted((stage / LIB_DIR).glob("*.so*")), *sorted(stage.rglob("*.so"))]
    needed: dict[str, str] = {}
    for elf in dict.fromkeys(elves):
        needed.update(foreign_libraries(parse_ldd(_run(["ldd", str(elf)], {})), str(stage)))
    for soname, path in needed.items():
        if not (stage / LIB_DIR / soname).exists():
            _copy(os.path.realpath(path), stage / LIB_DIR / soname)
    if needed:  # everything must now resolve inside the runtime with LD_LIBRARY_PATH=<runtime>/lib
        env = {"LD_LIBRARY_PATH": str(stage / LIB_DIR)}
        for elf in dict.fromkeys(elves):
            left = foreign_libraries(parse_ldd(_run(["ldd", str(elf)], env)), str(stage))
            if left:
                raise RuntimeBuildError(f"{elf} still loads {sorted(left.values())} from outside the runtime")
    return bool(needed)


_CHECK = (
    "import hashlib, http.client, json, socket, ssl, sys, urllib.request, zlib;"
    "from istio_cni.plugin.__main__ import run;"
    "out, code = run({'CNI_COMMAND': 'VERSION'}, b'{\"cniVersion\": \"1.0.0\"}');"
    "assert code == 0 and b'supportedVersions' in out, out;"
    "print(json.dumps({'prefix': sys.prefix, 'openssl': ssl.OPENSSL_VERSION}))"
)


def _self_check(stage: Path, env: dict[str, str]) -> None:
    """The staged runtime imports what the plugin uses and answers VERSION, with its prefix where it is."""
    raw = json.loads(_run([str(stage / INTERPRETER), "-I", "-c", _CHECK], env))
    if os.path.realpath(raw["prefix"]) != os.path.realpath(stage):
        raise RuntimeBuildError(f"the runtime's interpreter took prefix {raw['prefix']}, not its own dir")


def _walk(root: str) -> Iterator[str]:
    """Relative file paths under ``root``, not descending into directories that are pruned whole."""
    for dirpath, dirs, files in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        prefix = "" if rel_dir == "." else rel_dir + "/"
        dirs[:] = [d for d in dirs if keep_stdlib(f"{prefix}{d}/__init__.py")]  # site-packages can be huge
        for name in files:
            yield prefix + name


def _copy(src: str, dst: Path) -> None:
    """Copy file contents (symlinks followed) with normalised modes: 0755 if executable, else 0644."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    os.chmod(dst, 0o755 if os.access(src, os.X_OK) else 0o644)


def replace_dir(new: str | os.PathLike[str], target: str | os.PathLike[str], aside_prefix: str) -> None:
    """Rename ``new`` to ``target``; an existing ``target`` is first moved into a fresh ``aside_prefix*``
    directory next to it (rename cannot replace a non-empty directory), then removed."""
    aside = None
    if os.path.lexists(target):
        aside = tempfile.mkdtemp(prefix=aside_prefix, dir=os.path.dirname(os.path.abspath(target)))
        os.rename(target, os.path.join(aside, "old"))
    os.rename(new, target)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def _run(argv: list[str], env: dict[str, str]) -> str:
    """Run a build step with a clean environment (plus ``env``); its stdout, or an error with its stderr."""
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", **env}
    done = subprocess.run(argv, env=clean, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeBuildError(f"{' '.join(argv[:4])} ... failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m istio_cni.runtime", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("build", help="build a plugin runtime directory from a CPython installation")
    cmd.add_argument("--prefix", default=sys.base_prefix, help="CPython prefix (default: %(default)s)")
    cmd.add_argument("--into", required=True, help="runtime directory to create (replaced if it exists)")
    args = parser.parse_args(argv)
    try:
        info = build(args.prefix, args.into)
    except RuntimeBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    size = sum(f.stat().st_size for f in Path(args.into).rglob("*") if f.is_file())
    print(f"plugin runtime {info.hash} (Python {info.python}, {size / 2**20:.1f} MiB) in {args.into}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
