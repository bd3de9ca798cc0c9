"""Test and CI time: the wall time of pytest runs and their slowest tests, with the machine's load.

    .venv/bin/python benchmarks/ci_time.py --label after --out benchmarks/results-ci-time.json \
        full e2e-file quick

Each named run is one `python -m pytest -q -p no:cacheprovider --durations=15` over:
`full` (everything, as CI runs it), `e2e-file` (integrity_tests/test_instance_e2e.py alone) and
`quick` (`-m "not e2e"`). INTEGRITY_TEST_POSTGRES_URL must be set, as on CI, or the PostgreSQL
tests skip. The 1-minute load average is read before and after each run: the machine is shared,
so a figure without its load means little. Results are merged into the JSON file under the label.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNS = {
    "full": [],
    "e2e-file": ["integrity_tests/test_instance_e2e.py"],
    "quick": ["-m", "not e2e"],
}
DURATION = re.compile(r"^([0-9.]+)s (call|setup|teardown)\s+(\S+)$")
SUMMARY = re.compile(r"^=*\s*(\d+ (?:passed|failed|skipped|deselected).*?) in [0-9.]+s")


def load_average() -> float:
    return os.getloadavg()[0]


def run(name: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=15"]
    command += RUNS[name]
    load_before = load_average()
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    lines = done.stdout.splitlines()
    slowest = []
    for line in lines:
        match = DURATION.match(line.strip())
        if match:
            slowest.append({"seconds": float(match[1]), "phase": match[2], "test": match[3]})
    summary = next((m[1] for line in lines if (m := SUMMARY.search(line))), "no summary")
    return {
        "command": " ".join(["python", *command[1:]]),
        "wall_seconds": round(seconds, 1),
        "load_1min_before": round(load_before, 2),
        "load_1min_after": round(load_average(), 2),
        "cores": os.cpu_count(),
        "exit_code": done.returncode,
        "summary": summary,
        "slowest": slowest,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", choices=sorted(RUNS))
    parser.add_argument("--label", required=True, help="e.g. before, after")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks/results-ci-time.json")
    args = parser.parse_args()
    if not os.environ.get("INTEGRITY_TEST_POSTGRES_URL"):
        print("set INTEGRITY_TEST_POSTGRES_URL, as CI does", file=sys.stderr)
        return 2
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    for name in args.runs:
        result = run(name)
        results.setdefault(args.label, {})[name] = result
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(
            f"{args.label} {name}: {result['wall_seconds']} s, {result['summary']}, "
            f"load {result['load_1min_before']} -> {result['load_1min_after']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
