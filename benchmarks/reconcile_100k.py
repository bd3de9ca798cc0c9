#!/usr/bin/env python
"""Reconcile N objects against ~N rows on moto's S3 server and SQLite, side by side with the
bare listing and the two naive designs.

    python benchmarks/reconcile_100k.py                       # 100,000 objects, every design
    python benchmarks/reconcile_100k.py --objects 10000 --designs reconcile,listing
    python benchmarks/reconcile_100k.py --json results.json

Designs (each runs in its own subprocess, so its peak memory is its own; every one of them
talks HTTP to the moto server that lives in this parent process):

  reconcile     integrity.reconcile.reconcile over the whole bucket (S3Storage over a boto3
                client from dagster-aws's S3Resource, SQLite through SQLAlchemy).
  listing       one sequential ListObjectsV2 paginator loop over the bucket, keys discarded.
  head_per_row  read every database reference, then one HEAD request per reference, 5 in flight.
  select_per_object
                list the bucket, then for every listed upload one SELECT on documents (and one
                on processing_jobs when there is no documents row).

Seeding writes straight into moto's in-process backend (uploading over HTTP runs ~250/s) and
into SQLite with bulk inserts. The data follow the reference schema and object layout, with a
planted drift of about 1% whose expected findings are printed next to what each design found.

Memory: a worker resets the kernel's peak-RSS mark (/proc/self/clear_refs) after its imports
and set-up, takes the RSS then as its baseline, and reports VmHWM - baseline after the work
(a 5 ms sampler thread is the fallback where clear_refs is not writable).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

DESIGNS = ("reconcile", "listing", "head_per_row", "select_per_object")
BUCKET = "integrity-bench"
ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
    "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
}

# --------------------------------------------------------------------------- memory


def _status(field: str) -> int:
    """A /proc/self/status field in bytes (0 where /proc is absent)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class PeakMemory:
    """Peak RSS above the RSS at start(): VmHWM after a clear_refs reset, else a sampler."""

    def __init__(self) -> None:
        self.baseline = 0
        self._sampled = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.method = "VmHWM"

    def start(self) -> None:
        import gc

        gc.collect()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the peak-RSS mark to the current RSS
        except OSError:
            self.method = "sampled VmRSS"
        self.baseline = _status("VmRSS")
        if self.method != "VmHWM":
            self._sampled = self.baseline
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._sampled = max(self._sampled, _status("VmRSS"))

    def peak(self) -> int:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            return self._sampled
        return _status("VmHWM")


# --------------------------------------------------------------------------- data

DOC_NAMES = [
    "contract.pdf",
    "invoice-2024-Q3.pdf",
    "site-survey.pdf",
    "Lease Agreement.pdf",
    "permit_application.pdf",
    "structural-calcs-rev2.pdf",
    "change order 14.pdf",
    "meeting-minutes.pdf",
    "insurance-certificate.pdf",
    "plans+specs.pdf",
    "punch list.pdf",
    "RFI-0042.pdf",
    "submittal_log.xlsx",
    "photo-report.pdf",
]
UNICODE_NAMES = ["résumé.pdf", "Übergabeprotokoll.pdf", "façade-détails.pdf", "cañería.pdf"]


def _hex(rng: random.Random, n: int) -> str:
    return f"{rng.getrandbits(4 * n):0{n}x}"


def _ts(dt: datetime) -> datetime:
    return dt.replace(tzinfo=None)  # SQLAlchemy DateTime on SQLite: naive UTC


def build_world(n: int, seed: int = 7) -> dict:
    """Objects (key, last_modified), rows per table, and the findings the drift should yield.

    Shares: ~40% of objects are document uploads (each with a documents row and a job row),
    ~40% are image originals and staged derivatives (~0.2 N images rows), the rest are plan
    sheets (.dzi descriptors and their tiles, a few plans rows).
    """
    rng = random.Random(seed)
    now = datetime.now(timezone.utc)
    old = lambda: now - timedelta(days=rng.randint(2, 400), seconds=rng.randint(0, 86399))  # noqa: E731
    orgs = [f"org-{_hex(rng, 8)}" for _ in range(max(2, n // 2000))]
    projects = [(rng.choice(orgs), f"prj-{_hex(rng, 8)}") for _ in range(max(2, n // 1000))]

    objects: list[tuple[str, datetime]] = []
    documents: list[dict] = []
    jobs: list[dict] = []
    images: list[dict] = []
    plans: list[dict] = []
    expected = {
        k: 0
        for k in (
            "orphan_object",
            "stuck_job",
            "missing_original",
            "missing_staged",
            "progress_behind",
            "foreign_reference",
            "normalization_mismatch",
        )
    }

    # -- documents: uploads under documents/{org}/...
    n_docs = int(n * 0.40)
    drift_every = 250  # one upload in 250 carries each fault (0-7), about 3% of uploads in all
    for i in range(n_docs):
        org = rng.choice(orgs)
        created = old()
        name = rng.choice(DOC_NAMES)
        unicode_case = i % 20_000 == 7
        if unicode_case:
            name = rng.choice(UNICODE_NAMES)
        key = f"documents/{org}/{created:%Y/%m}/{_hex(rng, 32)}-{name}"
        doc_id = f"doc-{_hex(rng, 24)}"
        fault = i % drift_every
        row = {
            "id": doc_id,
            "organization_id": org,
            "r2_key": key,
            "status": "complete",
            "error": None,
            "created_at": _ts(created),
            "updated_at": _ts(created + timedelta(minutes=3)),
        }
        job = {
            "object_key": key,
            "status": "complete",
            "attempts": 1,
            "started_at": _ts(created),
            "updated_at": _ts(created + timedelta(minutes=3)),
            "error": None,
        }
        if unicode_case:
            # stored NFD, recorded NFC: a normalisation mismatch, never "missing"
            objects.append((unicodedata.normalize("NFD", key), created))
            row["r2_key"] = unicodedata.normalize("NFC", key)
            documents.append(row)
            jobs.append(job)
            expected["normalization_mismatch"] += 1
            continue
        if fault in (0, 1):  # orphan: no row, job absent / failed
            objects.append((key, created))
            if fault == 1:
                jobs.append({**job, "status": "failed", "error": "timeout", "attempts": 3})
            expected["orphan_object"] += 1
        elif fault == 2:  # orphan: job never started
            objects.append((key, created))
            jobs.append({**job, "status": "not_started", "started_at": None})
            expected["orphan_object"] += 1
        elif fault == 3:  # stuck: job processing for two days
            objects.append((key, created))
            started = now - timedelta(hours=50)
            jobs.append(
                {
                    **job,
                    "status": "processing",
                    "started_at": _ts(started),
                    "updated_at": _ts(started),
                }
            )
            expected["stuck_job"] += 1
        elif fault == 4:  # young upload, no job yet: not an orphan (min_age)
            objects.append((key, now - timedelta(minutes=5)))
        elif fault == 5:  # job processing, started recently: neither stuck nor orphan
            objects.append((key, created))
            started = now - timedelta(minutes=20)
            jobs.append(
                {
                    **job,
                    "status": "processing",
                    "started_at": _ts(started),
                    "updated_at": _ts(started),
                }
            )
        elif fault == 6:  # documents row whose object is gone
            documents.append(row)
            jobs.append(job)
            expected["missing_original"] += 1
        elif fault == 7:  # row already in error, object gone: skipped
            documents.append({**row, "status": "error", "error": "original missing in storage"})
            jobs.append(job)
        else:  # every healthy upload
            objects.append((key, created))
            documents.append(row)
            jobs.append(job)

    # -- images: original (and staged) objects under projects/{project}/images/...
    n_images = int(n * 0.20)
    forms = ("bare", "bare", "bare", "s3", "s3", "virtual", "virtual", "path")
    for i in range(n_images):
        org, project = rng.choice(projects)
        image_id = f"img-{_hex(rng, 24)}"
        base = f"projects/{project}/images/{_hex(rng, 32)}"
        original = f"{base}/original.jpg"
        staged = f"{base}/staged-2048.webp"
        updated = old()
        status = "ready" if i % 20 else rng.choice(("queued", "processing", "error"))
        form = forms[i % len(forms)]
        url = {
            "bare": original,
            "s3": f"s3://{BUCKET}/{original}",
            "virtual": f"https://{BUCKET}.s3.us-east-1.amazonaws.com/{original}",
            "path": f"https://s3.us-east-1.amazonaws.com/{BUCKET}/{original}",
        }[form]
        row = {
            "id": image_id,
            "project_id": project,
            "status": status,
            "original_url": url,
            "staged_url": (f"s3://{BUCKET}/{staged}" if status == "ready" else None),
            "error": None,
            "updated_at": _ts(updated),
        }
        fault = i % 100  # images: one in 100 lacks its original, one in 100 its staged copy
        has_original, has_staged = True, status == "ready"
        if fault == 11 and status != "error":
            has_original = False
            expected["missing_original"] += 1
        elif fault == 12 and status == "ready":
            has_staged = False
            expected["missing_staged"] += 1
        elif fault == 13 and status != "error" and i % 1000 == 13:
            row["original_url"] = (
                f"s3://another-bucket/{original}"  # foreign: reported, never missing
            )
            has_original = False
            expected["foreign_reference"] += 1
        if has_original:
            objects.append((original, updated))
        if has_staged:
            objects.append((staged, updated))
        images.append(row)

    # -- plans: Deep Zoom pyramids, 10 sheets of 1 descriptor + 9 tiles each
    per_sheet_tiles = 9
    sheets_per_plan = 10
    plan_objects = max(0, n - len(objects))
    n_plans = max(1, plan_objects // (sheets_per_plan * (1 + per_sheet_tiles)))
    for p in range(n_plans):
        org, project = rng.choice(projects)
        plan_id = f"pln-{_hex(rng, 12)}"
        when = old()
        prefix = f"organizations/{org}/projects/{project}/plans/{plan_id}/sheets/"
        for s in range(1, sheets_per_plan + 1):
            sheet = f"sheet-{s:03d}"
            objects.append((f"{prefix}{sheet}/tiles/{sheet}.dzi", when))
            for t in range(per_sheet_tiles):
                level, col = divmod(t, 3)
                objects.append(
                    (f"{prefix}{sheet}/tiles/{sheet}_files/{10 + level}/{col}_{t % 3}.jpg", when)
                )
        behind = p % 10 == 3
        expected["progress_behind"] += behind
        plans.append(
            {
                "plan_id": plan_id,
                "organization_id": org,
                "project_id": project,
                "status": "processing" if behind else "complete",
                "completed_pages": sheets_per_plan - 4 if behind else sheets_per_plan,
                "total_pages": sheets_per_plan,
                "started_at": _ts(when),
                "updated_at": _ts(when),
                "completed_at": None if behind else _ts(when),
                "reconciled": False,
                "reconciled_at": None,
            }
        )
    # top up (or trim) to exactly n objects with extra tiles of the last plan
    k = 0
    while len(objects) < n:
        objects.append((f"{prefix}{sheet}/tiles/{sheet}_files/12/x{k}.jpg", when))
        k += 1
    del objects[n:]
    rng.shuffle(objects)  # uploads arrive in no particular key order
    return {
        "objects": objects,
        "documents": documents,
        "processing_jobs": jobs,
        "images": images,
        "plans": plans,
        "expected": expected,
    }


def seed_moto(world: dict, bucket: str) -> float:
    """Write every object straight into moto's in-process backend (visible over HTTP)."""
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    started = time.perf_counter()
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    for i, (key, modified) in enumerate(world["objects"]):
        fake = backend.put_object(bucket, key, b"%d" % (i % 997), disable_notification=True)
        fake.last_modified = modified.astimezone(timezone.utc).replace(tzinfo=None)
    return time.perf_counter() - started


def seed_sqlite(world: dict, path: Path) -> float:
    import sqlalchemy as sa

    from integrity import schema

    started = time.perf_counter()
    engine = sa.create_engine(f"sqlite:///{path}")
    schema.create_reference_schema(engine)
    with engine.begin() as conn:
        for table in (schema.documents, schema.processing_jobs, schema.images, schema.plans):
            rows = world[table.name]
            for i in range(0, len(rows), 20_000):
                conn.execute(table.insert(), rows[i : i + 20_000])
    engine.dispose()
    return time.perf_counter() - started


# --------------------------------------------------------------------------- workers


def _client(endpoint: str):
    from dagster_aws.s3 import S3Resource

    return S3Resource(endpoint_url=endpoint, region_name="us-east-1").get_client()


class RequestCounter:
    """Counts every HTTP request the client sends (retries included)."""

    def __init__(self, client) -> None:
        self.count = 0
        self._lock = threading.Lock()
        client.meta.events.register("before-send.s3", self._hook)

    def _hook(self, **_: object) -> None:
        with self._lock:
            self.count += 1


def run_reconcile(args, client, counter) -> dict:
    import sqlalchemy as sa

    from integrity.diff import DiffOptions
    from integrity.reconcile import reconcile
    from integrity.spec import default_spec
    from integrity.storage.s3 import S3Storage

    engine = sa.create_engine(f"sqlite:///{args.db}")
    store = S3Storage(client, args.bucket)
    spec = default_spec()
    memory = PeakMemory()
    memory.start()
    started = time.perf_counter()
    report = reconcile(store, engine, spec, DiffOptions(), concurrency=args.concurrency)
    wall = time.perf_counter() - started
    peak = memory.peak()
    import pyarrow as pa

    return {
        "wall": wall,
        "requests": counter.count,
        "store_requests": store.requests,
        "findings": len(report.findings),
        "by_kind": report.counts(),
        "complete": report.complete,
        "objects_checked": report.objects_checked,
        "rows_checked": report.rows_checked,
        "timings": report.timings,
        "arrow_allocated_at_end": pa.total_allocated_bytes(),
        "baseline": memory.baseline,
        "peak": peak,
        "memory_method": memory.method,
    }


def run_listing(args, client, counter) -> dict:
    memory = PeakMemory()
    memory.start()
    started = time.perf_counter()
    listed = 0
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=args.bucket, PaginationConfig={"PageSize": 1000}):
        listed += len(page.get("Contents", ()))  # keys discarded
    wall = time.perf_counter() - started
    return {
        "wall": wall,
        "requests": counter.count,
        "findings": None,
        "objects_checked": listed,
        "baseline": memory.baseline,
        "peak": memory.peak(),
        "memory_method": memory.method,
    }


def run_head_per_row(args, client, counter) -> dict:
    import sqlite3

    from botocore.exceptions import ClientError

    from integrity.keys import parse_reference

    memory = PeakMemory()
    memory.start()
    started = time.perf_counter()
    db = sqlite3.connect(args.db)
    refs: list[tuple[str, str]] = []  # (kind, reference)
    refs += [
        ("missing_original", r)
        for (r,) in db.execute("SELECT r2_key FROM documents WHERE status != 'error'")
    ]
    refs += [
        ("missing_original", r)
        for (r,) in db.execute("SELECT original_url FROM images WHERE status != 'error'")
    ]
    refs += [
        ("missing_staged", r)
        for (r,) in db.execute(
            "SELECT staged_url FROM images WHERE status = 'ready' AND staged_url IS NOT NULL"
        )
    ]
    rows = db.execute(
        "SELECT (SELECT count(*) FROM documents) + (SELECT count(*) FROM images)"
    ).fetchone()[0]
    db.close()

    def exists(key: str) -> bool:
        try:
            client.head_object(Bucket=args.bucket, Key=key)
            return True
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return False
            raise

    def check(item: tuple[str, str]) -> str | None:
        kind, value = item
        parsed = parse_reference(value, args.bucket)
        if parsed is None:
            return None
        if parsed.bucket is not None and parsed.bucket != args.bucket:
            return "foreign_reference"
        if exists(parsed.key) or (parsed.alternative is not None and exists(parsed.alternative)):
            return None
        return kind

    by_kind: dict[str, int] = {}
    with ThreadPoolExecutor(max_workers=5) as pool:
        for kind in pool.map(check, refs, chunksize=64):
            if kind is not None:
                by_kind[kind] = by_kind.get(kind, 0) + 1
    wall = time.perf_counter() - started
    return {
        "wall": wall,
        "requests": counter.count,
        "findings": sum(by_kind.values()),
        "by_kind": by_kind,
        "rows_checked": rows,
        "references": len(refs),
        "baseline": memory.baseline,
        "peak": memory.peak(),
        "memory_method": memory.method,
    }


def run_select_per_object(args, client, counter) -> dict:
    import sqlite3

    memory = PeakMemory()
    memory.start()
    started = time.perf_counter()
    db = sqlite3.connect(args.db)
    now = datetime.now(timezone.utc)
    min_age, stuck_after = timedelta(hours=1), timedelta(hours=24)
    queries = listed = 0
    by_kind: dict[str, int] = {}

    def parse(ts: str | None) -> datetime | None:
        return None if ts is None else datetime.fromisoformat(ts).replace(tzinfo=timezone.utc)

    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=args.bucket, PaginationConfig={"PageSize": 1000}):
        for obj in page.get("Contents", ()):
            listed += 1
            key = obj["Key"]
            if not key.startswith("documents/"):
                continue
            queries += 1
            if db.execute("SELECT id FROM documents WHERE r2_key = ?", (key,)).fetchone():
                continue
            queries += 1
            job = db.execute(
                "SELECT status, started_at, updated_at FROM processing_jobs WHERE object_key = ?",
                (key,),
            ).fetchone()
            status, job_started, job_updated = job if job else (None, None, None)
            last_seen = max(obj["LastModified"], parse(job_updated) or obj["LastModified"])
            if status in (None, "not_started", "failed") and now - last_seen > min_age:
                by_kind["orphan_object"] = by_kind.get("orphan_object", 0) + 1
            elif (
                status == "processing"
                and now - (parse(job_started) or parse(job_updated)) > stuck_after
            ):
                by_kind["stuck_job"] = by_kind.get("stuck_job", 0) + 1
    db.close()
    wall = time.perf_counter() - started
    return {
        "wall": wall,
        "requests": counter.count,
        "queries": queries,
        "findings": sum(by_kind.values()),
        "by_kind": by_kind,
        "objects_checked": listed,
        "baseline": memory.baseline,
        "peak": memory.peak(),
        "memory_method": memory.method,
    }


WORKERS = {
    "reconcile": run_reconcile,
    "listing": run_listing,
    "head_per_row": run_head_per_row,
    "select_per_object": run_select_per_object,
}


def worker_main(args) -> None:
    os.environ.update(ENV)
    # imports and set-up happen before the baseline, in every design alike
    import boto3  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow  # noqa: F401
    import sqlalchemy  # noqa: F401

    import integrity.reconcile  # noqa: F401

    client = _client(args.endpoint)
    counter = RequestCounter(client)
    result = WORKERS[args.worker](args, client, counter)
    print("RESULT " + json.dumps(result, default=str), flush=True)


# --------------------------------------------------------------------------- parent


def run_design(design: str, args, endpoint: str, db: Path) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        design,
        "--endpoint",
        endpoint,
        "--bucket",
        BUCKET,
        "--db",
        str(db),
        "--objects",
        str(args.objects),
        "--concurrency",
        str(args.concurrency),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **ENV})
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
            result["design"] = design
            return result
    raise RuntimeError(f"{design} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(results: list[dict], n: int, expected: dict) -> dict:
    print()
    print(
        f"{'design':<19}{'wall s':>9}{'requests':>10}{'findings':>10}{'peak MB':>10}{'bytes/obj':>11}"
    )
    for r in results:
        above = max(0, r["peak"] - r["baseline"])
        r["peak_above_baseline"] = above
        r["bytes_per_object"] = above / n
        print(
            f"{r['design']:<19}{r['wall']:>9.1f}{r['requests']:>10,}{_fmt(r.get('findings'), ','):>10}"
            f"{above / 2**20:>10.1f}{above / n:>11.0f}"
        )
    by = {r["design"]: r for r in results}
    ratios = {}
    if "reconcile" in by and "listing" in by:
        ratios["reconcile_over_listing"] = by["reconcile"]["wall"] / by["listing"]["wall"]
    if "reconcile" in by and "head_per_row" in by:
        ratios["head_per_row_over_reconcile"] = by["head_per_row"]["wall"] / by["reconcile"]["wall"]
    if "reconcile" in by and "select_per_object" in by:
        ratios["select_per_object_over_reconcile"] = (
            by["select_per_object"]["wall"] / by["reconcile"]["wall"]
        )
    print()
    targets = {"reconcile_over_listing": ("<=", 1.3), "head_per_row_over_reconcile": (">=", 5.0)}
    for name, value in ratios.items():
        target = targets.get(name)
        verdict = ""
        if target:
            ok = value <= target[1] if target[0] == "<=" else value >= target[1]
            verdict = f"   target {target[0]} {target[1]}x: {'met' if ok else 'MISSED'}"
        print(f"{name:<34}{value:>7.2f}x{verdict}")
    if "reconcile" in by:
        bpo = by["reconcile"]["bytes_per_object"]
        print(
            f"{'reconcile bytes/object':<34}{bpo:>7.0f}    target < 300: {'met' if bpo < 300 else 'MISSED'}"
        )
    print()
    print("findings by kind (expected from the planted drift):")
    kinds = list(expected)
    print(f"  {'kind':<24}{'expected':>9}" + "".join(f"{r['design'][:17]:>19}" for r in results))
    for kind in kinds:
        cells = "".join(
            f"{_fmt((r.get('by_kind') or {}).get(kind, 0) if r.get('by_kind') is not None else None, ','):>19}"
            for r in results
        )
        print(f"  {kind:<24}{expected[kind]:>9,}{cells}")
    return ratios


def parent_main(args) -> None:
    os.environ.update(ENV)
    designs = [d.strip() for d in args.designs.split(",") if d.strip()]
    for d in designs:
        if d not in DESIGNS:
            raise SystemExit(f"--designs: unknown design {d!r} (choose from {', '.join(DESIGNS)})")
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log line per request
    t0 = time.perf_counter()
    world = build_world(args.objects, args.seed)
    build_s = time.perf_counter() - t0
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = _client(endpoint)
    client.create_bucket(Bucket=BUCKET)
    seed_s = seed_moto(world, BUCKET)
    n_objects = len(world["objects"])
    with tempfile.TemporaryDirectory(prefix="integrity-bench-") as tmp:
        db = Path(tmp) / "bench.sqlite"
        sqlite_s = seed_sqlite(world, db)
        rows = {t: len(world[t]) for t in ("documents", "processing_jobs", "images", "plans")}
        expected = world["expected"]
        key_lengths = [len(k) for k, _ in world["objects"]]
        del world
        print(
            f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, moto at {endpoint}"
        )
        print(
            f"seeded {n_objects:,} objects (keys {min(key_lengths)}-{max(key_lengths)} chars, "
            f"mean {sum(key_lengths) / n_objects:.0f}) in {seed_s:.1f} s and {sum(rows.values()):,} rows "
            f"{rows} in {sqlite_s:.1f} s (data built in {build_s:.1f} s)"
        )
        print(f"planted drift: {sum(expected.values()):,} findings expected {expected}")
        results = []
        for design in designs:
            print(f"running {design} ...", flush=True)
            r = run_design(design, args, endpoint, db)
            print(
                f"  {design}: {r['wall']:.1f} s, {r['requests']:,} requests, findings {r.get('findings')}, "
                f"peak {(r['peak'] - r['baseline']) / 2**20:.1f} MB above baseline",
                flush=True,
            )
            results.append(r)
        ratios = print_table(results, n_objects, expected)
    server.stop()
    if args.json:
        out = {
            "objects": n_objects,
            "rows": rows,
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "seed_seconds": seed_s,
            "expected": expected,
            "results": results,
            "ratios": ratios,
        }
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
        print(f"\nwrote {args.json}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--objects", type=int, default=100_000, help="objects in the bucket (default 100,000)"
    )
    parser.add_argument(
        "--designs", default=",".join(DESIGNS), help=f"comma-separated, from {', '.join(DESIGNS)}"
    )
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument(
        "--concurrency", type=int, default=8, help="reconcile's listing concurrency (default 8)"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--worker", choices=DESIGNS, help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--bucket", default=BUCKET, help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args)
    else:
        parent_main(args)


if __name__ == "__main__":
    main()
