"""``python -m meshtest.echo server|client ...`` (the echo image's entrypoints)."""

from __future__ import annotations

import sys


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ("server", "client"):
        print("usage: python -m meshtest.echo server|client [options]", file=sys.stderr)
        sys.exit(2)
    if sys.argv[1] == "server":
        from meshtest.echo.server import main as server_main

        server_main(sys.argv[2:])
    else:
        from meshtest.echo.client import main as client_main

        client_main(sys.argv[2:])


if __name__ == "__main__":
    main()
