#!/usr/bin/env python
"""`integrity reconcile` end to end at 10M-100M objects: storage from an S3 Inventory report,
the database in PostgreSQL.

    python benchmarks/scale_end_to_end.py --objects 10000000 --formats csv,parquet
    python benchmarks/scale_end_to_end.py --objects 100000000 --rows 10000000 --formats parquet

Steps, each timed:
1. A world (benchmarks/scale_world.py: objects.parquet and the rows of the reference schema,
   with planted drift of every kind), built vectorised. With --rows below --objects, the world
   is built at --rows and the inventory is padded with extra objects under a prefix no row
   and no upload template names (so they change no finding).
2. The inventory report, in the exact AWS layout (integrity_tests/inventory_reports.py), one
   data file per million keys, in a directory.
3. The rows, ingested into a fresh PostgreSQL database through ADBC.
4. `integrity reconcile --inventory DIR --db-url ... --json` as a subprocess: its wall time,
   its peak RSS (wait4's ru_maxrss), the counts against the planted ones, and the spill size.

The machine's load is recorded before and after each run; other work on the machine skews
the figures, so read them next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from scale_world import BUCKET, build_world, reference_tables  # noqa: E402

from integrity_tests.inventory_reports import (  # noqa: E402
    DirectoryDestination,
    objects_table,
    write_report,
)

PADDING_PREFIX = "archive/"
"""Where padding objects go: under no tenant template and no reference, so no finding."""


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def ensure_world(rows: int, work: Path, seed: int) -> tuple[Path, dict]:
    directory = work / f"world-{rows}-seed{seed}"
    summary = directory / "world.json"
    if summary.exists():
        return directory, json.loads(summary.read_text())
    world = build_world(rows, directory, seed=seed)
    info = {
        "objects": world.objects,
        "rows": world.rows,
        "expected": world.expected,
        "now": world.now.isoformat(),
        "build_seconds": round(world.seconds, 1),
    }
    summary.write_text(json.dumps(info))
    return directory, info


def _inventory_tables(objects: Path, pad_to: int, chunk: int = 1_000_000):
    """The world's objects, then padding, as inventory tables of about `chunk` keys each."""
    written = 0
    for batch in pq.ParquetFile(objects).iter_batches(batch_size=chunk):
        written += batch.num_rows
        yield objects_table(
            batch.column("key"),
            source_bucket=BUCKET,
            sizes=batch.column("size"),
            etags=batch.column("etag"),
            last_modified=batch.column("last_modified").cast(
                pa.timestamp("ms", tz="UTC"), safe=False
            ),
        )
    index = 0
    while written < pad_to:
        n = min(chunk, pad_to - written)
        numbers = pc.cast(pa.array(range(index, index + n), pa.int64()), pa.string())
        keys = pc.binary_join_element_wise(
            PADDING_PREFIX, pc.utf8_lpad(numbers, width=12, padding="0"), ".bin", ""
        )
        yield objects_table(keys, source_bucket=BUCKET)
        written += n
        index += n


def ensure_report(world: Path, fmt: str, objects: int, work: Path) -> tuple[Path, dict]:
    root = work / f"inventory-{objects}-{fmt}"
    done = root / "report.json"
    if done.exists():
        return root, json.loads(done.read_text())
    started = time.perf_counter()
    written = write_report(
        DirectoryDestination(root / "inventory-destination"),
        _inventory_tables(world / "objects.parquet", objects),
        source_bucket=BUCKET,
        created_at=datetime.now(timezone.utc) - timedelta(minutes=5),
        fmt=fmt.upper() if fmt != "parquet" else "Parquet",
    )
    info = {
        "source": written.destination,
        "files": len(written.data_keys),
        "seconds": round(time.perf_counter() - started, 1),
        "bytes": sum(p.stat().st_size for p in (root / "inventory-destination").rglob("*")),
    }
    done.write_text(json.dumps(info))
    return root, info


def ingest_rows(world: Path, admin_url: str, database: str) -> tuple[str, float]:
    """A fresh database with the reference schema and the world's rows, through ADBC."""
    import adbc_driver_postgresql.dbapi as adbc
    import sqlalchemy as sa

    from integrity.schema import create_reference_schema

    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}"'))
        conn.execute(sa.text(f'CREATE DATABASE "{database}"'))
    admin.dispose()
    url = sa.make_url(admin_url).set(database=database)
    engine = sa.create_engine(url)
    create_reference_schema(engine)
    engine.dispose()
    started = time.perf_counter()
    uri = f"postgresql://{url.username or 'postgres'}@{url.host or '127.0.0.1'}:{url.port or 5432}/{database}"
    with adbc.connect(uri) as conn:
        for table, data in reference_tables(world):
            with conn.cursor() as cursor:
                cursor.adbc_ingest(table, data, mode="append")
            conn.commit()
    with sa.create_engine(url).connect() as conn:
        conn.execute(sa.text("ANALYZE"))
    return url.render_as_string(hide_password=False), time.perf_counter() - started


def run_reconcile(source: str, db_url: str, storage_dir: Path, memory_limit: str) -> dict:
    storage_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INTEGRITY_", "AWS_ENDPOINT"))}
    env["INTEGRITY_MEMORY_LIMIT"] = memory_limit
    env["INTEGRITY_HOME"] = str(storage_dir.parent / "home")
    command = [
        sys.executable,
        "-m",
        "integrity.cli",
        "reconcile",
        "--inventory",
        source,
        "--storage-dir",
        str(storage_dir),
        "--db-url",
        db_url,
        "--json",
    ]
    load_before = _load()
    started = time.perf_counter()
    out_path, err_path = storage_dir.parent / "reconcile.out", storage_dir.parent / "reconcile.err"
    with out_path.open("w") as out_file, err_path.open("w") as err_file:
        process = subprocess.Popen(command, env=env, stdout=out_file, stderr=err_file, text=True)
        _, status, usage = os.wait4(process.pid, 0)  # this child's own peak, not the sum
    seconds = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    peak = usage.ru_maxrss * 1024
    out, err = out_path.read_text(), err_path.read_text()
    if code not in (0, 3):
        raise SystemExit(f"reconcile failed ({code}): {err.strip()[-2000:]}")
    summary = json.loads(out)
    return {
        "seconds": round(seconds, 1),
        "peak_rss_bytes": peak,
        "exit": code,
        "findings": summary["findings"],
        "checked": summary["checked"],
        "timings": summary.get("timings"),
        "spill_peak_bytes": (summary.get("timings") or {}).get("spill_peak_bytes"),
        "load_before": load_before,
        "load_after": _load(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=10_000_000)
    parser.add_argument("--rows", type=int, default=None, help="rows (default: as many as objects)")
    parser.add_argument("--formats", default="csv,parquet")
    parser.add_argument("--work", type=Path, default=Path("/tmp/integrity-scale"))
    parser.add_argument(
        "--pg-url",
        default=os.environ.get(
            "INTEGRITY_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--database", default="integrity_scale")
    parser.add_argument("--memory-limit", default="1GB")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--reuse-db", action="store_true", help="the database already holds this world's rows"
    )
    args = parser.parse_args()
    rows = args.rows or args.objects
    args.work.mkdir(parents=True, exist_ok=True)

    world, info = ensure_world(rows, args.work, args.seed)
    print(f"world: {info['objects']:,} objects, {sum(info['rows'].values()):,} rows", flush=True)
    if args.reuse_db:
        import sqlalchemy as sa

        db_url = sa.make_url(args.pg_url).set(database=args.database).render_as_string(False)
        ingest_seconds = 0.0
    else:
        db_url, ingest_seconds = ingest_rows(world, args.pg_url, args.database)
        print(f"rows ingested into PostgreSQL in {ingest_seconds:.1f} s", flush=True)
    results = {
        "objects": max(args.objects, info["objects"]),
        "rows": sum(info["rows"].values()),
        "expected": info["expected"],
        "memory_limit": args.memory_limit,
        "cores": os.cpu_count(),
        "ingest_seconds": round(ingest_seconds, 1),
        "runs": {},
    }
    for fmt in args.formats.split(","):
        root, report = ensure_report(world, fmt, args.objects, args.work)
        print(
            f"{fmt}: report of {report['files']} files written in {report['seconds']} s", flush=True
        )
        run = run_reconcile(
            report["source"], db_url, args.work / "storage" / BUCKET, args.memory_limit
        )
        run["report"] = report
        run["counts_match_planted"] = run["findings"] == info["expected"]
        results["runs"][fmt] = run
        print(json.dumps({fmt: run}, indent=2), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
