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


# The figures each issue names, with its target where it sets one; every other figure stays in the JSON files.
HEADLINES: dict[str, list[tuple[str, str]]] = {
    "hbone": [
        ("tcp.throughput_gbps", ""),
        ("tls.throughput_gbps", ""),
        ("hbone.throughput_gbps", ">= 70% of tls"),
        ("tcp.rr_p50_us", ""),
        ("tls.rr_p50_us", ""),
        ("hbone.rr_p50_us", "<= 1.5x tls"),
        ("tcp.rr_p99_us", ""),
        ("tls.rr_p99_us", ""),
        ("hbone.rr_p99_us", ""),
        ("hbone.new_tunnels_per_s", ""),
        ("hbone.new_streams_per_s", ""),
        ("tls.relay_cpu_ms_per_1k_req", ""),
        ("hbone.relay_cpu_ms_per_1k_req", "<= 150"),
    ],
    "ca": [("ca.csr_signed_per_s", ""), ("ca.p99_ms", "")],
    "xds": [
        ("xds.full_state_ms", "<= 2000"),
        ("xds.change_to_100_clients_p99_ms", "<= 500"),
        ("istiod.rss_mb", "<= 1024"),
    ],
    "mesh": [
        ("direct.throughput_gbps", ""),
        ("mesh.throughput_gbps", ""),
        ("direct.rr_p50_us", ""),
        ("mesh.rr_p50_us", "added <= 500"),
        ("direct.rr_p99_us", ""),
        ("mesh.rr_p99_us", ""),
        ("mesh.cpu_ms_per_1k_req", "<= 300"),
        ("mesh.new_conns_per_s", ""),
        ("ztunnel.rss_mb_1k_workloads", "<= 64"),
    ],
    "waypoint": [
        ("waypoint.rps_per_core", ">= 3000"),
        ("l4.rr_p50_us", ""),
        ("waypoint.rr_p50_us", "added <= 1000"),
        ("l4.rr_p99_us", ""),
        ("waypoint.rr_p99_us", ""),
    ],
}


def readme_table() -> str:
    rows = ["| benchmark | figure | latest | target |", "|---|---|---|---|"]
    for name in ORDER:
        path = HERE / "results" / f"{name}.json"
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        for key, target in HEADLINES.get(name, []):
            rows.append(f"| {name} | `{key}` | {data.get(key, 'missing')} | {target} |")
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
