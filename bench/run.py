"""Run every benchmark (``bench/<name>.py`` with a ``main()``), or those named on the command line.

Each benchmark writes ``bench/results/<name>.json`` and prints its figures; ``--readme`` then rewrites the
figures table in README.md between its markers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["hbone", "ca", "xds", "mesh", "waypoint"]


def discover() -> list[str]:
    found = {p.stem for p in HERE.glob("*.py") if not p.stem.startswith("_") and p.stem != "run"}
    return [n for n in ORDER if n in found] + sorted(found - set(ORDER))


def readme_table() -> str:
    rows = ["| benchmark | figure | value |", "|---|---|---|"]
    for path in sorted((HERE / "results").glob("*.json")):
        data = json.loads(path.read_text())
        for key, value in data.items():
            if not key.startswith("_meta"):
                rows.append(f"| {path.stem} | `{key}` | {value} |")
    return "\n".join(rows)


def update_readme() -> None:
    readme = HERE.parent / "README.md"
    text = readme.read_text()
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        readme.write_text(f"{head}{start}\n{readme_table()}\n{end}{tail}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--readme", action="store_true", help="refresh the README figures table afterwards")
    args = parser.parse_args()
    names = args.names or discover()
    failed = []
    for name in names:
        print(f"==> bench {name}", flush=True)
        if subprocess.call([sys.executable, str(HERE / f"{name}.py")]) != 0:
            failed.append(name)
    if args.readme:
        update_readme()
    if failed:
        print(f"benchmarks failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
