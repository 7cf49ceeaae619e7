"""Interop: our HBONE server driven by HTTP/2 clients we did not write.

- Go's standard-library HTTP/2 client (``interop/h2connect.go``, built with the Go toolchain the e2e cluster
  recipe already needs): a spec-valid CONNECT (``:authority`` only, no ``:scheme``/``:path``) over mTLS 1.3,
  ALPN h2, no SNI, streamed body with END_STREAM, checking our SPIFFE SAN. This is the tunnel interop test.
- ``nghttp`` (Debian ``nghttp2-client``): it cannot send a valid CONNECT (it always adds ``:scheme`` and
  ``:path``, even with ``-H ':method: CONNECT'``), and curl 7.88 has no HTTP/2 CONNECT either. So nghttp
  checks our framing, mTLS and error answers: a GET gets 400 and its malformed CONNECT gets PROTOCOL_ERROR.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from meshkit.hbone.request import ConnectRequest
from meshkit.hbone.server import Decision, HboneServer, InboundPeer, Reject
from meshkit.identity.certs import WorkloadCertificate

from .conftest import SERVER_ID, EchoServer, forward_to, listen

HERE = Path(__file__).resolve().parent


# where scripts/setup installs Go (the e2e cluster recipe needs it too)
GO_ROOT_BIN = Path("/usr/local/go/bin/go")


@pytest.fixture(scope="module")
def go_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the Go client: standard library only, so no module download and no toolchain switch."""
    go = shutil.which("go") or (str(GO_ROOT_BIN) if GO_ROOT_BIN.exists() else None)
    if go is None:
        pytest.fail(
            f"Go is missing: the HBONE interop test builds interop/h2connect.go with it; install Go at "
            f"{GO_ROOT_BIN.parent.parent} (scripts/setup does) or put `go` on PATH",
            pytrace=False,
        )
    out = tmp_path_factory.mktemp("go") / "h2connect"
    env = {
        **os.environ,
        "CGO_ENABLED": "0",
        "GOTOOLCHAIN": "local",  # never download another toolchain
        "GOFLAGS": "-mod=mod",
        "GOPROXY": "off",  # stdlib only: any module fetch is a bug, and must fail rather than hit the network
    }
    built = subprocess.run(
        [go, "build", "-o", str(out), str(HERE / "interop" / "h2connect.go")],
        capture_output=True,
        text=True,
        timeout=280,
        env=env,
        check=False,
    )
    if built.returncode != 0:
        pytest.fail(f"`go build` of the interop client failed ({go}):\n{built.stderr}", pytrace=False)
    return out


@pytest.fixture
def pem_files(tmp_path: Path, client_cert: WorkloadCertificate) -> dict[str, Path]:
    files = {"cert": tmp_path / "c.pem", "key": tmp_path / "k.pem", "roots": tmp_path / "roots.pem"}
    files["cert"].write_bytes(client_cert.chain_pem)
    files["key"].write_bytes(client_cert.private_key_pem)
    files["roots"].write_bytes(client_cert.roots_pem)
    return files


@pytest_asyncio.fixture
async def server(echo: EchoServer, server_cert: WorkloadCertificate) -> AsyncIterator[HboneServer]:
    forward = forward_to(echo.port)

    async def handler(peer: InboundPeer, request: ConnectRequest) -> Decision:
        if request.authority.port == 401:
            return Reject(401)
        return await forward(peer, request)

    srv = HboneServer(listen(), lambda: server_cert, handler)
    await srv.start()
    yield srv
    await srv.close()


async def run(*cmd: str, stdin: bytes = b"", limit_s: float = 60) -> tuple[int, bytes, str]:
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), limit_s)
    return proc.returncode or 0, out, err.decode(errors="replace")


async def go_connect(
    go_client: Path,
    server: HboneServer,
    pem: dict[str, Path],
    authority: str,
    expected: str,
    *,
    stdin: bytes = b"",
) -> tuple[int, bytes, str]:
    host, port = server.address
    files = (str(pem["cert"]), str(pem["key"]), str(pem["roots"]))
    return await run(str(go_client), f"{host}:{port}", authority, *files, expected, stdin=stdin)


@pytest.mark.slow
async def test_go_http2_client_tunnels_through_our_server(
    go_client: Path, server: HboneServer, pem_files: dict[str, Path]
) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 5)  # several windows' worth of DATA frames, then END_STREAM
    code, out, err = await go_connect(
        go_client, server, pem_files, "10.0.0.1:80", SERVER_ID.uri, stdin=payload
    )
    assert code == 0, err
    assert "status 200 proto HTTP/2.0" in err
    assert out == payload  # echoed, and our END_STREAM ended Go's response body


@pytest.mark.slow
async def test_go_http2_client_gets_401_when_denied(
    go_client: Path, server: HboneServer, pem_files: dict[str, Path]
) -> None:
    code, _out, err = await go_connect(go_client, server, pem_files, "10.0.0.1:401", SERVER_ID.uri)
    assert code == 3, err
    assert "status 401" in err


@pytest.mark.slow
async def test_go_http2_client_rejects_an_unexpected_server_identity(
    go_client: Path, server: HboneServer, pem_files: dict[str, Path]
) -> None:
    other = "spiffe://cluster.local/ns/other/sa/other"
    code, _out, err = await go_connect(go_client, server, pem_files, "10.0.0.1:80", other)
    assert code == 1
    assert f"is not {other}" in err


async def test_nghttp_get_is_answered_400(server: HboneServer, pem_files: dict[str, Path]) -> None:
    host, port = server.address
    _code, out, _err = await run(
        "nghttp", "-v", "--cert", str(pem_files["cert"]), "--key", str(pem_files["key"]),
        f"https://{host}:{port}/",
    )  # fmt: skip
    text = out.decode(errors="replace")
    assert "recv SETTINGS frame" in text  # mTLS + ALPN h2 + preface worked with a foreign client
    assert ":status: 400" in text
    assert "(niv=" in text


async def test_nghttp_malformed_connect_is_a_stream_protocol_error(
    server: HboneServer, pem_files: dict[str, Path]
) -> None:
    host, port = server.address
    _code, out, _err = await run(
        "nghttp", "-v", "--cert", str(pem_files["cert"]), "--key", str(pem_files["key"]),
        "-H", ":method: CONNECT", "-H", ":authority: 10.0.0.1:80", f"https://{host}:{port}/",
    )  # fmt: skip
    text = out.decode(errors="replace")
    # nghttp adds :scheme and :path to its CONNECT, which RFC 9113 §8.5 forbids: a stream error
    assert ":path: /" in text
    assert "recv RST_STREAM frame" in text
    assert "error_code=PROTOCOL_ERROR" in text
    assert "recv GOAWAY" not in text
    assert ":status: 200" not in text


async def test_nghttp_without_client_certificate_is_refused(server: HboneServer) -> None:
    host, port = server.address
    _code, out, _err = await run("nghttp", "-v", f"https://{host}:{port}/")
    text = out.decode(errors="replace")
    assert ":status:" not in text
    assert "recv SETTINGS frame" not in text  # the server never speaks HTTP/2 to it
