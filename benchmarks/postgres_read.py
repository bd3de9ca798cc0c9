#!/usr/bin/env python
"""Reading one large PostgreSQL table into Parquet, side by side: the streamed SELECT, COPY into
pyarrow, and ADBC.

    python benchmarks/postgres_read.py --url postgresql+psycopg://postgres@127.0.0.1/bench
    python benchmarks/postgres_read.py --url ... --rows 1000000 --methods select,adbc
    python benchmarks/postgres_read.py --url ... --json benchmarks/results-postgres-read-10m.json

The table (`bench_images`, built once with generate_series and kept between runs; --rebuild
builds it again) has an `images`-like shape: text id, tenant (997 projects), status,
timestamptz updated_at, an original URL (one row in 1,000 with a comma and quotes, one in 1,001
with non-ASCII characters), a staged key (NULL in a third of the rows) and an error column that
the spec does not read. Every method reads the spec's columns of every row and writes them to a
Parquet file, so each does the same work end to end:

| method | what it does |
|---|---|
| `select` | `read_database(..., method="select")`: one streamed SELECT, rows converted to Arrow per batch (at a commit before the bulk path: the same SELECT collected into one in-memory frame) |
| `copy-csv` | psycopg 3 `COPY (SELECT ...) TO STDOUT (FORMAT csv)`, parsed by pyarrow's streaming CSV reader |
| `copy-binary` | psycopg 3 `COPY ... (FORMAT binary)`, rows decoded by psycopg's `read_row()`, one Arrow batch per 50k rows |
| `adbc` | `adbc-driver-postgresql`, `cursor.fetch_record_batch()` (COPY binary decoded in C++) |
| `integrity` | `read_database(...)` as the reconciliation calls it (the bulk path on PostgreSQL) |

Each method runs in its own subprocess (peak RSS is that process's `ru_maxrss`, baseline its RSS
after imports). The load average is recorded before and after each, since the machine is shared.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TABLE = "bench_images"
METHODS = ("select", "copy-csv", "copy-binary", "adbc", "integrity")

BUILD = f"""
DROP TABLE IF EXISTS {TABLE};
CREATE UNLOGGED TABLE {TABLE} AS
SELECT
  'img-' || lpad(i::text, 9, '0') AS id,
  'project-' || (i % 997) AS project_id,
  (ARRAY['ready','ready','ready','pending','failed','error'])[1 + i % 6] AS status,
  timestamptz '2026-01-01 00:00:00+00' + (i * interval '37 milliseconds') AS updated_at,
  's3://media-bucket/images/project-' || (i % 997) || '/' || md5(i::text) ||
    CASE WHEN i % 1000 = 0 THEN ' copy, "final".jpg'
         WHEN i % 1001 = 0 THEN '-é€.jpg' ELSE '.jpg' END AS original_url,
  CASE WHEN i % 3 = 0 THEN NULL
       ELSE 'staging/project-' || (i % 997) || '/' || md5((i * 7)::text) || '.webp' END AS staged_url,
  CASE WHEN i % 6 = 5 THEN 'decode failed: line 1' ELSE NULL END AS error
FROM generate_series(1, %(rows)s) AS i;
ALTER TABLE {TABLE} ADD PRIMARY KEY (id);
ANALYZE {TABLE};
"""

COLUMNS = ["id", "project_id", "status", "updated_at", "original_url", "staged_url"]
LABELS = ["row_id", "tenant", "status", "updated_at", "original_url", "staged_url"]
QUERY = "SELECT " + ", ".join(f'{c} AS "{n}"' for c, n in zip(COLUMNS, LABELS)) + f" FROM {TABLE}"


def _spec():
    from integrity.spec import parse_spec

    return parse_spec(
        {
            "tables": {
                "images": {
                    "table": TABLE,
                    "tenant": "project_id",
                    "references": [{"column": "original_url"}, {"column": "staged_url"}],
                }
            },
            "uploads": None,
            "jobs": None,
            "plans": None,
        }
    )


def _schema():
    import pyarrow as pa

    return pa.schema(
        [(n, pa.timestamp("us", tz="UTC") if n == "updated_at" else pa.string()) for n in LABELS]
    )


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _plain_url(url: str) -> str:
    import sqlalchemy as sa

    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _copy_csv(url: str, out: Path) -> int:
    import psycopg
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    schema = _schema()

    class CopyStream(io.RawIOBase):
        def __init__(self, copy: Any) -> None:
            self._chunks = iter(copy)
            self._rest = b""

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            while not self._rest:
                chunk = next(self._chunks, None)
                if chunk is None:
                    return 0
                self._rest = bytes(chunk)
            n = min(len(buffer), len(self._rest))
            buffer[:n] = self._rest[:n]
            self._rest = self._rest[n:]
            return n

    rows = 0
    with psycopg.connect(_plain_url(url)) as conn, conn.cursor() as cur:
        cur.execute("SET TimeZone = 'UTC'")
        with cur.copy(f"COPY ({QUERY}) TO STDOUT (FORMAT csv)") as copy:
            reader = pcsv.open_csv(
                io.BufferedReader(CopyStream(copy), buffer_size=1 << 20),
                read_options=pcsv.ReadOptions(column_names=LABELS, block_size=8 << 20),
                parse_options=pcsv.ParseOptions(newlines_in_values=True),
                convert_options=pcsv.ConvertOptions(
                    column_types=schema,
                    null_values=[""],
                    strings_can_be_null=True,
                    quoted_strings_can_be_null=False,
                ),
            )
            with pq.ParquetWriter(out, schema) as writer:
                for batch in reader:
                    writer.write_batch(batch)
                    rows += batch.num_rows
    return rows


def _copy_binary(url: str, out: Path) -> int:
    import psycopg
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _schema()
    rows = 0
    with (
        psycopg.connect(_plain_url(url)) as conn,
        conn.cursor() as cur,
        cur.copy(f"COPY ({QUERY}) TO STDOUT (FORMAT binary)") as copy,
        pq.ParquetWriter(out, schema) as writer,
    ):
        copy.set_types(["text", "text", "text", "timestamptz", "text", "text"])
        batch: list[tuple[Any, ...]] = []
        while (row := copy.read_row()) is not None:
            batch.append(row)
            if len(batch) == 50_000:
                rows += _write_rows(writer, batch, schema, pa)
                batch = []
        rows += _write_rows(writer, batch, schema, pa)
    return rows


def _write_rows(writer: Any, batch: list[tuple[Any, ...]], schema: Any, pa: Any) -> int:
    if not batch:
        return 0
    columns = list(zip(*batch))
    writer.write_batch(
        pa.record_batch([pa.array(c, f.type) for c, f in zip(columns, schema)], schema=schema)
    )
    return len(batch)


def _adbc(url: str, out: Path) -> int:
    import adbc_driver_postgresql.dbapi as adbc
    import pyarrow.parquet as pq

    schema = _schema()
    rows = 0
    with adbc.connect(_plain_url(url)) as conn, conn.cursor() as cur:
        cur.execute(QUERY)
        reader = cur.fetch_record_batch()
        with pq.ParquetWriter(out, schema) as writer:
            for batch in reader:
                writer.write_batch(batch.cast(schema))
                rows += batch.num_rows
    return rows


def _read_database(url: str, out: Path, method: str) -> int:
    import inspect

    import sqlalchemy as sa

    from integrity.inventory import read_database

    engine = sa.create_engine(url)
    if "method" in inspect.signature(read_database).parameters:
        db = read_database(engine, _spec(), directory=out.parent, method=method)
    else:  # the code before the bulk path: one SELECT into one in-memory frame per table
        db = read_database(engine, _spec())
    if not db.complete:
        raise SystemExit(f"incomplete read: {db.errors}")
    return db.rows


def child(method: str, url: str) -> dict[str, Any]:
    import pyarrow  # noqa: F401  (imported before the baseline, as every method needs it)
    import sqlalchemy  # noqa: F401

    import integrity.inventory  # noqa: F401

    baseline = _rss_kb()
    with tempfile.TemporaryDirectory(prefix="pgread-") as tmp:
        out = Path(tmp) / "images.parquet"
        started = time.perf_counter()
        cpu = os.times()
        if method == "select":
            rows = _read_database(url, out, "select")
        elif method == "integrity":
            rows = _read_database(url, out, "auto")
        elif method == "copy-csv":
            rows = _copy_csv(url, out)
        elif method == "copy-binary":
            rows = _copy_binary(url, out)
        elif method == "adbc":
            rows = _adbc(url, out)
        else:
            raise SystemExit(f"unknown method {method!r}")
        wall = time.perf_counter() - started
        cpu_after = os.times()
        size = sum(p.stat().st_size for p in Path(tmp).rglob("*.parquet"))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "method": method,
        "rows": rows,
        "wall_seconds": round(wall, 2),
        "rows_per_second": round(rows / wall),
        "client_cpu_seconds": round(
            (cpu_after.user - cpu.user) + (cpu_after.system - cpu.system), 2
        ),
        "peak_rss_mb": round(peak / 1024, 1),
        "baseline_rss_mb": round(baseline / 1024, 1),
        "peak_above_baseline_mb": round((peak - baseline) / 1024, 1),
        "parquet_mb": round(size / 2**20, 1),
    }


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def build(url: str, rows: int, rebuild: bool) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.connect() as conn:
        exists = conn.execute(sa.text("SELECT to_regclass(:t)"), {"t": TABLE}).scalar()
        count = conn.execute(sa.text(f"SELECT count(*) FROM {TABLE}")).scalar() if exists else None
    if count == rows and not rebuild:
        print(f"{TABLE}: {rows:,} rows already there", file=sys.stderr)
        return
    started = time.perf_counter()
    with engine.begin() as conn:
        conn.exec_driver_sql(BUILD.replace("%(rows)s", str(int(rows))))
    print(f"built {TABLE} ({rows:,} rows) in {time.perf_counter() - started:.1f}s", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="a SQLAlchemy URL of a scratch database")
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.url)))
        return
    build(args.url, args.rows, args.rebuild)
    results: list[dict[str, Any]] = []
    for _ in range(args.repeat):
        for method in args.methods.split(","):
            load_before = _load()
            done = subprocess.run(
                [sys.executable, __file__, "--url", args.url, "--child", method],
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                print(f"{method} failed: {done.stderr.strip()[-2000:]}", file=sys.stderr)
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            result["load_before"] = load_before
            result["load_after"] = _load()
            results.append(result)
            print(json.dumps(result), file=sys.stderr)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"table": TABLE, "rows": args.rows, "cores": os.cpu_count(), "results": results},
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
