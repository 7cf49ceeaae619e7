"""Shared helper for benchmarks: write ``bench/results/<name>.json`` (flat named figures) and print it."""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, figures: dict[str, float | int | str]) -> Path:
    """Round floats sensibly, write the JSON file and print one ``name.figure = value`` line per figure."""
    clean: dict[str, float | int | str] = {}
    for key, value in figures.items():
        clean[key] = round(value, 3) if isinstance(value, float) else value
    clean["_meta.when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    clean["_meta.python"] = platform.python_version()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(clean, indent=2, sort_keys=True) + "\n")
    for key, value in clean.items():
        print(f"{name}: {key} = {value}", file=sys.stdout, flush=True)
    return path
