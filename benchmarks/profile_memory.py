#!/usr/bin/env python
"""Where reconcile's memory goes: the same world as reconcile_100k.py, one stage at a time.

    python benchmarks/profile_memory.py --objects 20000 [--tracemalloc]

Starts moto and seeds it like the benchmark, then (in a subprocess, so the server's memory is
not counted) runs list_storage, read_database and diff_inventories one after another, printing
after each stage the RSS and peak RSS above the baseline, Arrow's allocated bytes, and the deep
size of the frames it holds. With --tracemalloc, the top allocation sites at each stage's peak.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import reconcile_100k as bench  # noqa: E402


def _mb(b: int) -> str:
    return f"{b / 2**20:8.1f} MB"


def child(args) -> None:
    os.environ.update(bench.ENV)
    import pandas as pd
    import pyarrow as pa
    import sqlalchemy as sa

    from integrity.diff import DiffOptions, diff_inventories
    from integrity.inventory import list_storage, read_database
    from integrity.spec import default_spec
    from integrity.storage.s3 import S3Storage

    client = bench._client(args.endpoint)
    store = S3Storage(client, args.bucket)
    engine = sa.create_engine(f"sqlite:///{args.db}")
    spec = default_spec()
    n = args.objects
    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start(12)
    memory = bench.PeakMemory()
    memory.start()
    base = memory.baseline
    print(f"baseline RSS {_mb(base)}")

    def stage(name: str, **frames: pd.DataFrame) -> None:
        rss, hwm = bench._status("VmRSS"), bench._status("VmHWM")
        held = sum(int(f.memory_usage(deep=True).sum()) for f in frames.values())
        print(
            f"{name:<16} rss+{_mb(rss - base)}  peak+{_mb(hwm - base)} ({(hwm - base) / n:6.0f} B/obj)  "
            f"arrow {_mb(pa.total_allocated_bytes())}  frames {_mb(held)} ({held / n:5.0f} B/obj)"
        )
        for fname, f in frames.items():
            per_col = {c: int(v) for c, v in f.memory_usage(deep=True, index=False).items()}
            print(
                f"    {fname}: {len(f):,} rows, dtypes {dict(f.dtypes.astype(str))}, bytes {per_col}"
            )
        if args.tracemalloc:
            import tracemalloc

            current, peak = tracemalloc.get_traced_memory()
            print(f"    tracemalloc current {_mb(current)} peak {_mb(peak)}")
            snap = tracemalloc.take_snapshot()
            for s in snap.statistics("lineno")[:8]:
                print(f"      {s.size / 2**20:7.1f} MB {s.count:>8,}  {s.traceback[0]}")
            tracemalloc.reset_peak()

    t = time.perf_counter()
    inv = list_storage(store, None, concurrency=8)
    print(f"listed {len(inv.objects):,} in {time.perf_counter() - t:.1f} s")
    stage("list_storage", objects=inv.objects)
    t = time.perf_counter()
    db = read_database(engine, spec)
    print(f"read {db.rows:,} rows in {time.perf_counter() - t:.1f} s")
    stage("read_database", objects=inv.objects, **db.tables)
    if args.diff_parts:
        diff_parts(inv, db, spec, n, store)
    t = time.perf_counter()
    report = diff_inventories(inv, db, spec, DiffOptions())
    print(f"diff {len(report.findings):,} findings in {time.perf_counter() - t:.1f} s")
    stage("diff", objects=inv.objects, **db.tables)


def diff_parts(inv, db, spec, n: int, store) -> None:
    """The diff's pieces one at a time: each one's transient peak above the RSS before it."""
    import gc
    from datetime import datetime, timezone

    import pandas as pd
    import pyarrow as pa

    from integrity import diff as d
    from integrity.keys import normalized_array, resolve_references

    options = d.DiffOptions()
    now = pd.Timestamp(datetime.now(timezone.utc))
    keys = inv.objects["key"]
    docs = db.tables["documents"]

    def part(name, fn):
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = bench._status("VmRSS")
        a0 = pa.total_allocated_bytes()
        t = time.perf_counter()
        result = fn()
        took = time.perf_counter() - t
        peak = bench._status("VmHWM") - before
        kept = bench._status("VmRSS") - before
        print(
            f"  {name:<44} {took:6.2f} s  peak+{_mb(peak)} ({peak / n:5.0f} B/obj)  "
            f"kept+{_mb(kept)}  arrow {(pa.total_allocated_bytes() - a0) / 2**20:+.1f} MB"
        )
        return result

    index = d._ObjectIndex(keys)
    part(
        "one ListObjectsV2 page (boto3 parse, 1000 keys)", lambda: next(iter(store.list_pages("")))
    )
    table = pa.Table.from_pandas(inv.objects, preserve_index=False)
    part("objects arrow table .to_pandas()", lambda: table.to_pandas())
    part(
        "keys.isin(object column) [contains]",
        lambda: index.contains(docs["r2_key"].astype("object")),
    )
    part("normalized_array(keys) [NFC+lower in Arrow, all keys]", lambda: normalized_array(keys))
    part(
        "_ObjectIndex.normal_match (Arrow NFC+lower, index_in)",
        lambda: index.normal_match(docs["r2_key"]),
    )
    part(
        "resolve_references(documents.r2_key)",
        lambda: resolve_references(docs["r2_key"], inv.bucket),
    )
    part(
        "resolve_references(images.original_url)",
        lambda: resolve_references(db.tables["images"]["original_url"], inv.bucket),
    )
    part("_processed_keys", lambda: d._processed_keys(db, spec, index, inv.bucket))
    part("_unprocessed_uploads", lambda: d._unprocessed_uploads(inv, db, spec, index, options, now))
    part("_missing_references", lambda: d._missing_references(db, spec, index, inv.bucket))
    part("_progress_behind", lambda: d._progress_behind(inv, db, spec))
    part(
        "objects.drop_duplicates('key')",
        lambda: inv.objects.drop_duplicates("key", ignore_index=True),
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--objects", type=int, default=20_000)
    p.add_argument("--tracemalloc", action="store_true")
    p.add_argument(
        "--diff-parts", action="store_true", help="also measure each piece of the diff alone"
    )
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--endpoint")
    p.add_argument("--bucket", default=bench.BUCKET)
    p.add_argument("--db")
    args = p.parse_args()
    if args.child:
        return child(args)
    import logging

    from moto.server import ThreadedMotoServer

    os.environ.update(bench.ENV)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    world = bench.build_world(args.objects)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    bench._client(endpoint).create_bucket(Bucket=bench.BUCKET)
    bench.seed_moto(world, bench.BUCKET)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.sqlite"
        bench.seed_sqlite(world, db)
        del world
        cmd = (
            [
                sys.executable,
                __file__,
                "--child",
                "--endpoint",
                endpoint,
                "--db",
                str(db),
                "--objects",
                str(args.objects),
            ]
            + (["--tracemalloc"] if args.tracemalloc else [])
            + (["--diff-parts"] if args.diff_parts else [])
        )
        subprocess.run(cmd, check=True, env={**os.environ, **bench.ENV})
    server.stop()


if __name__ == "__main__":
    main()
