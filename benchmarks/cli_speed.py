#!/usr/bin/env python
"""`integrity reconcile` on the demo beside `python -c "import pandas, sqlalchemy, pyarrow"`.

    python benchmarks/cli_speed.py                      # 7 alternating rounds
    python benchmarks/cli_speed.py --rounds 11 --json benchmarks/results-cli-speed.json

The floor is what any Python tool on this stack pays to start: the interpreter and the three
libraries the reconciliation is built on. The command is the console script as a user runs it
(a dry run on the demo: the listing, the database read, the in-memory diff and the summary),
from a fresh process each time. The two alternate round by round, so a change in the machine's
load touches both alike; the medians and their ratio are reported, with the load average
(1, 5 and 15 minutes) before and after each round. The demo is built once, under a temporary
home, before the rounds.

The target: the command within 2x the floor's wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

FLOOR = [sys.executable, "-c", "import pandas, sqlalchemy, pyarrow"]
TARGET_RATIO = 2.0


def _console_script() -> list[str]:
    script = Path(sys.executable).parent / "integrity"
    return [str(script)] if script.exists() else [sys.executable, "-m", "integrity.cli"]


def _environment(home: Path) -> dict[str, str]:
    """A clean environment: the demo's home, and no project or AWS endpoint variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INTEGRITY_", "AWS_"))}
    env["INTEGRITY_HOME"] = str(home)
    return env


def _timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr[-500:]}")
    return wall, result.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="alternating rounds (default 7)")
    parser.add_argument("--json", metavar="FILE", help="write the results here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="integrity-cli-speed-") as scratch:
        home, cwd = Path(scratch) / "home", Path(scratch)
        env = _environment(home)
        command = [*_console_script(), "reconcile", "--json"]
        _timed([*_console_script(), "demo", "--json"], env, cwd)  # build once, untimed
        _timed(command, env, cwd)  # warm the page cache for both, untimed
        _timed(FLOOR, env, cwd)
        rounds: list[dict[str, Any]] = []
        for number in range(args.rounds):
            load_before = os.getloadavg()
            # Alternate which runs first, so neither always meets the other's leftovers.
            order = ("floor", "reconcile") if number % 2 == 0 else ("reconcile", "floor")
            walls: dict[str, float] = {}
            summary: dict[str, Any] = {}
            for name in order:
                wall, out = _timed(FLOOR if name == "floor" else command, env, cwd)
                walls[name] = wall
                if name == "reconcile":
                    summary = json.loads(out)
            rounds.append(
                {
                    "round": number + 1,
                    "order": list(order),
                    "floor_s": round(walls["floor"], 3),
                    "reconcile_s": round(walls["reconcile"], 3),
                    "ratio": round(walls["reconcile"] / walls["floor"], 3),
                    "reconcile_inside_s": summary.get("seconds"),
                    "objects": summary.get("checked", {}).get("objects"),
                    "rows": summary.get("checked", {}).get("rows"),
                    "load_before": [round(x, 2) for x in load_before],
                    "load_after": [round(x, 2) for x in os.getloadavg()],
                }
            )
            print(
                f"round {number + 1}: floor {walls['floor']:.2f} s, reconcile "
                f"{walls['reconcile']:.2f} s, ratio {walls['reconcile'] / walls['floor']:.2f}, "
                f"load {load_before[0]:.2f}",
                flush=True,
            )

    floor = statistics.median(r["floor_s"] for r in rounds)
    reconcile = statistics.median(r["reconcile_s"] for r in rounds)
    result = {
        "benchmark": "cli_speed",
        "command": "integrity reconcile --json (the demo, a dry run)",
        "floor": 'python -c "import pandas, sqlalchemy, pyarrow"',
        "rounds": args.rounds,
        "median_floor_s": round(floor, 3),
        "median_reconcile_s": round(reconcile, 3),
        "median_ratio": round(statistics.median(r["ratio"] for r in rounds), 3),
        "ratio_of_medians": round(reconcile / floor, 3),
        "target_ratio": TARGET_RATIO,
        "within_target": reconcile / floor <= TARGET_RATIO,
        "load_average_start": rounds[0]["load_before"],
        "load_average_end": rounds[-1]["load_after"],
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "per_round": rounds,
    }
    print(
        f"median: floor {floor:.2f} s, reconcile {reconcile:.2f} s, ratio {reconcile / floor:.2f} "
        f"(target <= {TARGET_RATIO:g}); load average {rounds[0]['load_before']} -> "
        f"{rounds[-1]['load_after']} on {os.cpu_count()} CPUs"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
