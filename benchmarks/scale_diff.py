#!/usr/bin/env python
"""The diff alone at scale: the out-of-core Parquet diff at 1M and 10M objects x as many rows,
with the in-memory diff's figures at 1M side by side, and the engine choice (DuckDB against
Polars streaming) on the same files.

    python benchmarks/scale_diff.py                                   # 1M and 10M, limit 1GB
    python benchmarks/scale_diff.py --sizes 1000000 --memory-limit 2GB
    python benchmarks/scale_diff.py --engines                         # DuckDB vs Polars too
    python benchmarks/scale_diff.py --json benchmarks/results-scale-diff.json

The worlds are built by `scale_world.build_world` (vectorised, straight to Parquet) into
--dir and reused when already there. Every measurement runs in its own subprocess: the worker
imports everything, resets the kernel's peak-RSS mark (/proc/self/clear_refs), takes its RSS as
the baseline and reports VmHWM - baseline after the work. The Parquet diff starts from the two
snapshot files (nothing loaded: the engine reads them); the in-memory diff starts with both
inventories loaded as frames (the baseline includes them; their size is reported apart). The
load average before and after each run is recorded: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak() -> int:
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def _load() -> float:
    return os.getloadavg()[0]


# --------------------------------------------------------------------------- workers


def worker_parquet(world_dir: Path, memory_limit: str, out: Path) -> dict:
    from integrity.diff import DiffOptions
    from integrity.engine import EngineLimits, parse_memory_limit
    from integrity.parquet_diff import diff_snapshots
    from integrity.spec import default_spec

    meta = json.loads((world_dir / "world.json").read_text())
    from datetime import datetime

    options = DiffOptions(now=datetime.fromisoformat(meta["now"]))
    limits = EngineLimits(memory_limit=parse_memory_limit(memory_limit), spill_root=out.parent)
    baseline = _reset_peak()
    started = time.perf_counter()
    report = diff_snapshots(
        world_dir / "objects.parquet",
        world_dir / "database",
        default_spec(),
        options,
        limits=limits,
    )
    seconds = time.perf_counter() - started
    peak = _status("VmHWM") - baseline
    report.save(out)
    return {
        "seconds": seconds,
        "peak_above_baseline_bytes": peak,
        "baseline_bytes": baseline,
        "spill_peak_bytes": int(report.timings["spill_peak_bytes"]),
        "memory_limit_bytes": int(report.timings["memory_limit_bytes"]),
        "counts": report.counts(),
    }


def worker_frames(world_dir: Path, out: Path) -> dict:
    from datetime import datetime

    from integrity.diff import DiffOptions, diff_inventories
    from integrity.inventory import DatabaseInventory, StorageInventory
    from integrity.spec import default_spec

    meta = json.loads((world_dir / "world.json").read_text())
    options = DiffOptions(now=datetime.fromisoformat(meta["now"]))
    before_frames = _status("VmRSS")
    storage = StorageInventory.load(world_dir / "objects.parquet")
    storage.objects  # noqa: B018 - loaded before the baseline, as the old path had it
    db = DatabaseInventory.load(world_dir / "database")
    baseline = _reset_peak()
    started = time.perf_counter()
    report = diff_inventories(storage, db, default_spec(), options)
    seconds = time.perf_counter() - started
    peak = _status("VmHWM") - baseline
    report.save(out)
    return {
        "seconds": seconds,
        "peak_above_baseline_bytes": peak,
        "frames_bytes": baseline - before_frames,
        "counts": report.counts(),
    }


def worker_engine(world_dir: Path, engine: str, memory_limit: str, spill: Path) -> dict:
    """The heaviest joins alone, in DuckDB or Polars streaming, on the same files."""
    objects = str(world_dir / "objects.parquet")
    db = world_dir / "database"
    pattern = r"^organizations/([^/]+)/projects/([^/]+)/plans/([^/]+)/sheets/.+"
    out: dict = {}
    if engine == "duckdb":
        import duckdb

        from integrity.engine import parse_memory_limit

        conn = duckdb.connect(
            config={
                "memory_limit": f"{parse_memory_limit(memory_limit) // 1024}KiB",
                "temp_directory": str(spill),
                "preserve_insertion_order": False,
            }
        )
        baseline = _reset_peak()
        started = time.perf_counter()
        refs = f"""(SELECT r2_key AS k FROM '{db}/documents.parquet'
            UNION ALL SELECT original_url FROM '{db}/images.parquet'
            UNION ALL SELECT staged_url FROM '{db}/images.parquet' WHERE status = 'ready')"""
        out["references_not_listed"] = conn.execute(
            f"SELECT count(*) FROM {refs} r ANTI JOIN '{objects}' o ON o.key = r.k"
        ).fetchone()[0]
        out["references_seconds"] = time.perf_counter() - started
        mark = time.perf_counter()
        out["uploads_unprocessed"] = conn.execute(
            f"""SELECT count(*) FROM '{objects}' o
            ANTI JOIN (SELECT r2_key FROM '{db}/documents.parquet') d ON d.r2_key = o.key
            WHERE prefix(o.key, 'documents/') AND NOT suffix(o.key, '/')"""
        ).fetchone()[0]
        out["uploads_seconds"] = time.perf_counter() - mark
        mark = time.perf_counter()
        out["plans_with_descriptors"] = conn.execute(
            f"""SELECT count(*) FROM (
                SELECT regexp_extract(key, '{pattern}', ['t', 'p', 'l']) AS g, count(*)
                FROM '{objects}' WHERE suffix(key, '.dzi') AND regexp_matches(key, '{pattern}')
                GROUP BY g)"""
        ).fetchone()[0]
        out["descriptors_seconds"] = time.perf_counter() - mark
    else:
        import polars as pl

        baseline = _reset_peak()
        started = time.perf_counter()
        keys = pl.scan_parquet(objects).select("key")
        refs = pl.concat(
            [
                pl.scan_parquet(db / "documents.parquet").select(pl.col("r2_key").alias("k")),
                pl.scan_parquet(db / "images.parquet").select(pl.col("original_url").alias("k")),
                pl.scan_parquet(db / "images.parquet")
                .filter(pl.col("status") == "ready")
                .select(pl.col("staged_url").alias("k")),
            ]
        )
        out["references_not_listed"] = (
            refs.join(keys, left_on="k", right_on="key", how="anti")
            .select(pl.len())
            .collect(engine="streaming")
            .item()
        )
        out["references_seconds"] = time.perf_counter() - started
        mark = time.perf_counter()
        documents = pl.scan_parquet(db / "documents.parquet").select(pl.col("r2_key").alias("key"))
        uploads = keys.filter(
            pl.col("key").str.starts_with("documents/") & ~pl.col("key").str.ends_with("/")
        )
        out["uploads_unprocessed"] = (
            uploads.join(documents, on="key", how="anti")
            .select(pl.len())
            .collect(engine="streaming")
            .item()
        )
        out["uploads_seconds"] = time.perf_counter() - mark
        mark = time.perf_counter()
        groups = (
            keys.filter(pl.col("key").str.ends_with(".dzi"))
            .select(
                [
                    pl.col("key").str.extract(pattern, i).alias(n)
                    for i, n in ((1, "t"), (2, "p"), (3, "l"))
                ]
            )
            .drop_nulls()
            .group_by(["t", "p", "l"])
            .len()
        )
        out["plans_with_descriptors"] = groups.select(pl.len()).collect(engine="streaming").item()
        out["descriptors_seconds"] = time.perf_counter() - mark
    out["seconds"] = time.perf_counter() - started
    out["peak_above_baseline_bytes"] = _status("VmHWM") - baseline
    return out


# --------------------------------------------------------------------------- parent


def ensure_world(n: int, root: Path, seed: int) -> dict:
    from scale_world import build_world

    directory = root / f"world-{n}-seed{seed}"
    marker = directory / "world.json"
    if marker.is_file():
        return json.loads(marker.read_text())
    world = build_world(n, directory, seed=seed)
    meta = {
        "objects": world.objects,
        "rows": world.rows,
        "total_rows": world.total_rows,
        "expected": world.expected,
        "now": world.now.isoformat(),
        "build_seconds": world.seconds,
        "directory": str(directory),
    }
    marker.write_text(json.dumps(meta, indent=2))
    return meta


def run_worker(*args: str) -> dict:
    load_before = _load()
    done = subprocess.run(
        [sys.executable, __file__, "--worker", *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["load_before"] = load_before
    result["load_after"] = _load()
    return result


def same_findings(a: Path, b: Path) -> bool:
    import pandas as pd

    from integrity.diff import ReconciliationReport

    left, right = ReconciliationReport.load(a), ReconciliationReport.load(b)
    try:
        pd.testing.assert_frame_equal(left.findings, right.findings)
    except AssertionError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--memory-limit", default="1GB")
    parser.add_argument("--old-at", type=int, default=1_000_000, help="frame diff at this size")
    parser.add_argument("--engines", action="store_true", help="DuckDB vs Polars on the joins")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/integrity-scale"))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        kind, world_dir, *rest = args.worker
        if kind == "parquet":
            result = worker_parquet(Path(world_dir), rest[0], Path(rest[1]))
        elif kind == "frames":
            result = worker_frames(Path(world_dir), Path(rest[0]))
        else:
            result = worker_engine(Path(world_dir), rest[0], rest[1], Path(rest[2]))
        print(json.dumps(result))
        return

    results: dict = {
        "memory_limit": args.memory_limit,
        "cores": os.cpu_count(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "runs": [],
    }
    for n in [int(s) for s in args.sizes.split(",")]:
        world = ensure_world(n, args.dir, args.seed)
        directory = Path(world["directory"])
        print(
            f"world {n:,}: {world['objects']:,} objects, {world['total_rows']:,} rows", flush=True
        )
        run: dict = {"objects": world["objects"], "rows": world["total_rows"], "world": world}
        report = directory / "parquet-report.parquet"
        run["parquet"] = run_worker("parquet", str(directory), args.memory_limit, str(report))
        p = run["parquet"]
        if "error" not in p:
            p["objects_per_second"] = world["objects"] / p["seconds"]
            p["bytes_per_object"] = p["peak_above_baseline_bytes"] / world["objects"]
            p["counts_match_planted"] = p["counts"] == world["expected"]
        print(f"  parquet diff: {json.dumps(p)}", flush=True)
        if n == args.old_at:
            old_report = directory / "frames-report.parquet"
            run["frames"] = run_worker("frames", str(directory), str(old_report))
            f = run["frames"]
            if "error" not in f:
                f["objects_per_second"] = world["objects"] / f["seconds"]
                f["bytes_per_object"] = f["peak_above_baseline_bytes"] / world["objects"]
                f["frames_bytes_per_object"] = f["frames_bytes"] / world["objects"]
                run["identical_findings"] = same_findings(old_report, report)
            print(f"  frame diff:   {json.dumps(f)}", flush=True)
        if args.engines:
            for engine in ("duckdb", "polars"):
                spill = args.dir / f"spill-{engine}"
                spill.mkdir(parents=True, exist_ok=True)
                run[f"engine_{engine}"] = run_worker(
                    "engine", str(directory), engine, args.memory_limit, str(spill)
                )
                print(f"  {engine} joins: {json.dumps(run[f'engine_{engine}'])}", flush=True)
        results["runs"].append(run)
    sizes = {r["objects"]: r for r in results["runs"]}
    if len(sizes) >= 2:
        small, large = sorted(sizes)[0], sorted(sizes)[-1]
        a, b = sizes[small].get("parquet", {}), sizes[large].get("parquet", {})
        if "peak_above_baseline_bytes" in a and "peak_above_baseline_bytes" in b:
            results["peak_ratio_large_to_small"] = (
                b["peak_above_baseline_bytes"] / a["peak_above_baseline_bytes"]
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
