"""ztunnel's memory budget (64 MB RSS with 1,000 workloads) relies on never importing grpcio or aiohttp: it
speaks gRPC and HTTP with its own small clients. Whatever it imports from meshkit must keep it so."""

from __future__ import annotations

import subprocess
import sys

HEAVY = {"grpc", "aiohttp"}


def test_ztunnel_imports_neither_grpcio_nor_aiohttp() -> None:
    code = (
        "import sys, ztunnel.__main__, ztunnel.app, ztunnel.identity, ztunnel.xds\n"
        "from ztunnel.__main__ import usage\n"
        "usage()\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert not HEAVY & set(loaded)
