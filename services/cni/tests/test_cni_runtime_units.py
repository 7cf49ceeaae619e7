"""The plugin runtime's pure parts: what is pruned, which libraries are copied, the content hash, VERSION, and
that the plugin's own sources import nothing outside the standard library (the runtime ships nothing else).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import sys
import sysconfig
from pathlib import Path

import istio_cni
import pytest
from istio_cni.runtime import (
    RuntimeBuildError,
    RuntimeInfo,
    content_hash,
    foreign_libraries,
    is_glibc,
    keep_stdlib,
    parse_ldd,
    plugin_sources,
)
from istio_cni.runtime import main as runtime_main

PACKAGE_DIR = Path(istio_cni.__file__).parent
EXT = ".cpython-311-x86_64-linux-gnu.so"


@pytest.mark.parametrize(
    "rel",
    [
        "os.py",
        "ssl.py",
        "json/__init__.py",
        "http/client.py",
        "urllib/request.py",
        "encodings/utf_8.py",
        "asyncio/base_events.py",
        "unittest/mock.py",  # the package stays, only its test suite goes
        f"lib-dynload/_ssl{EXT}",
        f"lib-dynload/_hashlib{EXT}",
        f"lib-dynload/_json{EXT}",
        "_sysconfigdata__linux_x86_64-linux-gnu.py",
        "LICENSE.txt",
    ],
)
def test_stdlib_kept(rel: str) -> None:
    assert keep_stdlib(rel)


@pytest.mark.parametrize(
    "rel",
    [
        "test/test_os.py",
        "test/support/__init__.py",
        "idlelib/idle.py",
        "tkinter/__init__.py",
        "turtledemo/__main__.py",
        "turtle.py",
        "ensurepip/__init__.py",
        "ensurepip/_bundled/pip-23.2.1-py3-none-any.whl",
        "lib2to3/main.py",
        "site-packages/pip/__init__.py",
        "site-packages/README.txt",
        "dist-packages/yaml/__init__.py",
        "istio_cni/install.py",  # only the plugin's files, from the package itself
        "__pycache__/os.cpython-311.pyc",
        "json/__pycache__/decoder.cpython-311.opt-1.pyc",
        "unittest/test/test_case.py",
        "ctypes/test/test_bytes.py",
        "distutils/tests/test_core.py",
        "config-3.11-x86_64-linux-gnu/libpython3.11.a",
        f"lib-dynload/_tkinter{EXT}",
        f"lib-dynload/_testcapi{EXT}",
        f"lib-dynload/_testinternalcapi{EXT}",
        f"lib-dynload/_curses{EXT}",
        f"lib-dynload/readline{EXT}",
        f"lib-dynload/nis{EXT}",
        f"lib-dynload/xxlimited{EXT}",
    ],
)
def test_stdlib_pruned(rel: str) -> None:
    assert not keep_stdlib(rel)


@pytest.mark.parametrize(
    ("soname", "glibc"),
    [
        ("libc.so.6", True),
        ("libm.so.6", True),
        ("libpthread.so.0", True),
        ("libdl.so.2", True),
        ("librt.so.1", True),
        ("libutil.so.1", True),
        ("libresolv.so.2", True),
        ("ld-linux-x86-64.so.2", True),
        ("ld-linux-aarch64.so.1", True),
        ("libnss_files.so.2", True),
        ("libssl.so.3", False),
        ("libcrypto.so.3", False),
        ("libpython3.11.so.1.0", False),
        ("libz.so.1", False),
        ("libcom_err.so.2", False),  # "libc" as a prefix only
        ("libmagic.so.1", False),
    ],
)
def test_glibc_libraries_stay_the_nodes(soname: str, glibc: bool) -> None:
    assert is_glibc(soname) is glibc


LDD = """\
\tlinux-vdso.so.1 (0x00007ffd5a3f2000)
\tlibpython3.11.so.1.0 => /opt/py/lib/libpython3.11.so.1.0 (0x00007f0c1e600000)
\tlibssl.so.3 => /lib/x86_64-linux-gnu/libssl.so.3 (0x00007f0c1e55a000)
\tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f0c1e479000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0c1e298000)
\tlibffi.so.8 => not found
\t/lib64/ld-linux-x86-64.so.2 (0x00007f0c1ed8f000)
"""


def test_parse_ldd() -> None:
    assert parse_ldd(LDD) == [
        ("libpython3.11.so.1.0", "/opt/py/lib/libpython3.11.so.1.0"),
        ("libssl.so.3", "/lib/x86_64-linux-gnu/libssl.so.3"),
        ("libm.so.6", "/lib/x86_64-linux-gnu/libm.so.6"),
        ("libc.so.6", "/lib/x86_64-linux-gnu/libc.so.6"),
        ("libffi.so.8", None),
    ]
    assert parse_ldd("\tstatically linked\n") == []


def test_foreign_libraries_are_non_glibc_outside_the_runtime() -> None:
    deps = parse_ldd(LDD.replace("libffi.so.8 => not found", "libffi.so.8 => /rt/lib/libffi.so.8 (0x1)"))
    assert foreign_libraries(deps, "/rt") == {
        "libpython3.11.so.1.0": "/opt/py/lib/libpython3.11.so.1.0",
        "libssl.so.3": "/lib/x86_64-linux-gnu/libssl.so.3",
    }
    assert foreign_libraries(deps, "/opt/py") == {"libssl.so.3": "/lib/x86_64-linux-gnu/libssl.so.3",
                                                  "libffi.so.8": "/rt/lib/libffi.so.8"}  # fmt: skip
    # a sibling directory sharing the prefix string is still outside
    assert "libffi.so.8" in foreign_libraries([("libffi.so.8", "/rt2/lib/libffi.so.8")], "/rt")
    with pytest.raises(RuntimeBuildError, match=r"libffi\.so\.8 not found"):
        foreign_libraries(parse_ldd(LDD), "/rt")


def test_content_hash_covers_path_content_and_exec_bit_not_order() -> None:
    files = [("bin/python3", True, b"\x01" * 32), ("lib/python3.11/os.py", False, b"\x02" * 32)]
    base = content_hash(files)
    assert len(base) == 16
    assert content_hash(reversed(files)) == base
    assert content_hash([files[0], ("lib/python3.11/os.py", False, b"\x03" * 32)]) != base
    assert content_hash([files[0], ("lib/python3.11/os.py", True, b"\x02" * 32)]) != base
    assert content_hash([files[0], ("lib/python3.11/sys.py", False, b"\x02" * 32)]) != base
    assert content_hash(files[:1]) != base


def test_runtime_info_round_trip_and_rejects() -> None:
    info = RuntimeInfo("0123456789abcdef", "3.11.7", True)
    assert RuntimeInfo.from_json(info.to_json()) == info
    for bad in ("{}", "not json", info.to_json().replace('"format": 1', '"format": 2'),
                info.to_json().replace("0123456789abcdef", "../../etc")):  # fmt: skip
        with pytest.raises(RuntimeBuildError):
            RuntimeInfo.from_json(bad)


def test_plugin_sources_are_the_plugin_and_nothing_of_the_agent() -> None:
    files = plugin_sources(PACKAGE_DIR)
    assert files[:2] == ["__init__.py", "enrolment.py"]
    assert {"plugin/__init__.py", "plugin/__main__.py", "plugin/core.py", "plugin/kube.py"} <= set(files)
    assert not {"install.py", "settings.py", "app.py", "runtime.py"} & set(files)


def _imports(path: Path) -> list[tuple[str, int]]:
    """(absolute module name, line) for every import in a file, function-level ones included."""
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import; keep imports absolute"
            found.append((node.module or "", node.lineno))
    return found


def offending_imports(package_dir: Path) -> list[str]:
    """Imports in the plugin's files that the node runtime cannot satisfy."""
    shipped = {"istio_cni." + f.removesuffix(".py").replace("/", ".") for f in plugin_sources(package_dir)}
    shipped = {m.removesuffix(".__init__") for m in shipped} | {"istio_cni"}
    bad = []
    for rel in plugin_sources(package_dir):
        for module, line in _imports(package_dir / rel):
            top = module.split(".")[0]
            if top == "istio_cni":
                if module not in shipped:
                    bad.append(f"{rel}:{line}: {module} (not shipped in the plugin runtime)")
            elif top not in sys.stdlib_module_names:
                bad.append(f"{rel}:{line}: {module} (not in the standard library)")
            elif not _kept_in_runtime(top):
                bad.append(f"{rel}:{line}: {module} (pruned from the plugin runtime)")
    return sorted(bad, key=lambda b: (b.split(":")[0], int(b.split(":")[1])))


def _kept_in_runtime(top: str) -> bool:
    """Where this interpreter finds a stdlib module, relative to its stdlib dir, is what the build copies."""
    spec = importlib.util.find_spec(top)
    if spec is None or spec.origin is None or not os.path.isabs(spec.origin):
        return spec is not None  # built-in or frozen: part of the interpreter itself
    return keep_stdlib(os.path.relpath(spec.origin, sysconfig.get_path("stdlib")))


def test_plugin_imports_only_the_standard_library_and_itself() -> None:
    """The node runtime ships the stdlib and these files only: any other import fails on the node."""
    bad = offending_imports(PACKAGE_DIR)
    assert not bad, "\n".join(bad)


def test_import_check_catches_foreign_imports(tmp_path: Path) -> None:
    """The check above is only worth something if it can fail."""
    (tmp_path / "plugin").mkdir()
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "enrolment.py").write_text("import json\n")
    (tmp_path / "plugin" / "core.py").write_text(
        "from istio_cni.enrolment import x\ndef f():\n    import yaml\n"
        "from istio_cni.settings import Settings\nimport tkinter\n"
    )
    assert offending_imports(tmp_path) == [
        "plugin/core.py:3: yaml (not in the standard library)",
        "plugin/core.py:4: istio_cni.settings (not shipped in the plugin runtime)",
        "plugin/core.py:5: tkinter (pruned from the plugin runtime)",
    ]


def test_build_cli_refuses_a_non_python_prefix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert runtime_main(["build", "--prefix", str(tmp_path), "--into", str(tmp_path / "rt")]) == 1
    assert "no bin/python3" in capsys.readouterr().err
    assert not (tmp_path / "rt").exists()
    assert list(tmp_path.iterdir()) == []  # no staging directory left behind
