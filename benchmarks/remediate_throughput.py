#!/usr/bin/env python
"""Remediation throughput: reconcile, dry run, apply, a second (idempotent) run and a rollback,
timed on SQLite and PostgreSQL, with every step's effect checked against the planted drift.

    python benchmarks/remediate_throughput.py                         # 20,000 rows, local storage
    python benchmarks/remediate_throughput.py --batch-sizes 100,1000 --json results.json
    python benchmarks/remediate_throughput.py --storage s3 --rows 2000  # HEADs on moto over HTTP

The world: N rows whose objects are missing (half documents, a quarter images without their
original, a quarter ready images without their staged copy), as many healthy rows, orphan
uploads (N/10: a third with no job, a third with a failed job, a third with a not_started job),
jobs stuck in processing (N/20), plans behind their descriptors (N/100) and controls that must
not be touched (rows already in error, jobs processing recently, plans up to date).

Storage is a LocalStorage directory (default) or moto's S3 server over HTTP (`--storage s3`;
objects are written straight into moto's backend, as reconcile_100k.py does). The moto server
lives in this parent process; each database runs in its own worker subprocess, so the server
and the code under test each have a core.

Per database and batch size, the worker seeds the reference schema afresh and then:

  reconcile     integrity.reconcile.reconcile over the whole store, as if 2 h after the seeding
                (so every orphan is old enough); its findings must be exactly the planted ones.
  breaker       remediate without force must refuse (the drift is deliberately above 20%).
  dry run       remediate(dry_run=True, force=True): counts must equal the apply's expected
                counts, and a full dump of the tables must be unchanged, with no ledger created.
  apply         remediate(dry_run=False, force=True, allow_writes=True).
                Counts by outcome must match the plan; the rows that differ in a full table dump
                must be exactly `updated`; audit and queue rows must match.
  second run    reconcile again (2 h later) and remediate without force: nothing may change
                (table dump, audit and queue row counts identical); the re-queued uploads are
                found again and must be counted already_queued, not queued twice.
  rollback      integrity.remediation.rollback.rollback(run id of the apply): the full table dump must equal
                the dump taken before the apply, and the pending queue entries are cancelled.

Storage re-checks (one HEAD per finding, `--concurrency` in flight) are timed apart from the
database work: a wrapper around the store records every HEAD's start and end, and the wall time
during which at least one HEAD was in flight is the re-check time; the rest is database time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

BUCKET = "integrity-bench"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
    "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
}
DATABASES = ("sqlite", "postgres")
RESERVED_DATABASES = ("test", "test_local", "postgres", "template0", "template1")
REFERENCE_TABLES = {
    "documents": "id",
    "processing_jobs": "object_key",
    "images": "id",
    "plans": "plan_id",
}
DB_URL_ENV = "INTEGRITY_BENCH_DB_URL"  # the worker's database URL (kept out of argv)
LATER = timedelta(hours=2)  # reconcile as if this long after seeding, so orphans are old enough

# --------------------------------------------------------------------------- the world


def build_world(n: int, healthy: int, seed: int, base: datetime) -> dict[str, Any]:
    """Rows, objects, and the findings and remediation counts the drift must produce.

    Deterministic in (n, healthy, seed, base): the parent builds it for storage, each worker
    builds it again for its database.
    """
    rng = random.Random(seed)

    def hexs(k: int) -> str:
        return f"{rng.getrandbits(4 * k):0{k}x}"

    def naive(moment: datetime) -> datetime:
        return moment.astimezone(timezone.utc).replace(tzinfo=None)

    def old() -> datetime:
        return base - timedelta(days=rng.randint(2, 400), seconds=rng.randint(0, 86399))

    orgs = [f"org-{hexs(8)}" for _ in range(max(2, (n + healthy) // 1000))]
    projects = [(rng.choice(orgs), f"prj-{hexs(8)}") for _ in range(max(2, (n + healthy) // 500))]
    objects: list[str] = []
    documents: list[dict[str, Any]] = []
    jobs: list[dict[str, Any]] = []
    images: list[dict[str, Any]] = []
    plans: list[dict[str, Any]] = []

    def upload_key(org: str, created: datetime) -> str:
        return f"documents/{org}/{created:%Y/%m}/{hexs(32)}-{rng.choice(NAMES)}"

    def document(*, present: bool, status: str | None = None) -> None:
        org = rng.choice(orgs)
        created = old()
        key = upload_key(org, created)
        documents.append(
            {
                "id": f"doc-{hexs(24)}",
                "organization_id": org,
                "r2_key": key,
                "status": status or ("complete" if rng.random() < 0.9 else "processing"),
                "error": "original missing in storage" if status == "error" else None,
                "created_at": naive(created),
                "updated_at": naive(created + timedelta(minutes=3)),
            }
        )
        jobs.append(
            {
                "object_key": key,
                "status": "complete",
                "attempts": 1,
                "started_at": naive(created),
                "updated_at": naive(created + timedelta(minutes=3)),
                "error": None,
            }
        )
        if present:
            objects.append(key)

    forms = ("bare", "s3", "virtual")

    def image(i: int, *, original: bool, staged: bool, status: str = "ready") -> None:
        _, project = rng.choice(projects)
        prefix = f"projects/{project}/images/{hexs(32)}"
        original_key, staged_key = f"{prefix}/original.jpg", f"{prefix}/staged-2048.webp"
        url = {
            "bare": original_key,
            "s3": f"s3://{BUCKET}/{original_key}",
            "virtual": f"https://{BUCKET}.s3.us-east-1.amazonaws.com/{original_key}",
        }[forms[i % len(forms)]]
        images.append(
            {
                "id": f"img-{hexs(24)}",
                "project_id": project,
                "status": status,
                "original_url": url,
                "staged_url": f"s3://{BUCKET}/{staged_key}" if status == "ready" else None,
                "error": "original missing in storage" if status == "error" else None,
                "updated_at": naive(old()),
            }
        )
        if original:
            objects.append(original_key)
        if staged and status == "ready":
            objects.append(staged_key)

    n_docs = n // 2
    n_img_original = n // 4
    n_img_staged = n - n_docs - n_img_original
    n_orphans = n // 10
    n_stuck = n // 20
    n_plans = max(1, n // 100)
    n_controls = max(1, n // 100)

    # rows whose object is missing: marked error
    for _ in range(n_docs):
        document(present=False)
    for i in range(n_img_original):
        image(i, original=False, staged=True)
    for i in range(n_img_staged):
        image(i, original=True, staged=False)
    # healthy rows: their objects are there
    for _ in range(healthy // 2):
        document(present=True)
    for i in range(healthy - healthy // 2):
        image(i, original=True, staged=True)
    # controls: already in error with the object gone (skipped by status)
    for _ in range(n_controls):
        document(present=False, status="error")
    for i in range(n_controls):
        image(i, original=False, staged=False, status="error")

    # orphan uploads: no documents row; job absent, failed or not_started
    orphan_jobs = Counter()
    for i in range(n_orphans):
        org = rng.choice(orgs)
        created = old()
        key = upload_key(org, created)
        objects.append(key)
        shape = ("absent", "failed", "not_started")[i % 3]
        orphan_jobs[shape] += 1
        if shape == "failed":
            jobs.append(
                {
                    "object_key": key,
                    "status": "failed",
                    "attempts": 3,
                    "started_at": naive(created),
                    "updated_at": naive(created + timedelta(minutes=9)),
                    "error": "timeout",
                }
            )
        elif shape == "not_started":
            jobs.append(
                {
                    "object_key": key,
                    "status": "not_started",
                    "attempts": 0,
                    "started_at": None,
                    "updated_at": naive(created),
                    "error": None,
                }
            )
    # stuck jobs: processing since 50 h before the seeding
    for _ in range(n_stuck):
        key = upload_key(rng.choice(orgs), old())
        objects.append(key)
        started = naive(base - timedelta(hours=50))
        jobs.append(
            {
                "object_key": key,
                "status": "processing",
                "attempts": 1,
                "started_at": started,
                "updated_at": started,
                "error": None,
            }
        )
    # controls: processing, started 20 min before the seeding (neither stuck nor orphan)
    for _ in range(n_controls):
        key = upload_key(rng.choice(orgs), old())
        objects.append(key)
        started = naive(base - timedelta(minutes=20))
        jobs.append(
            {
                "object_key": key,
                "status": "processing",
                "attempts": 1,
                "started_at": started,
                "updated_at": started,
                "error": None,
            }
        )

    # plans with 10 descriptors in storage: behind (half become complete), and up to date
    sheets = 10
    completes = 0
    for p in range(2 * n_plans):
        org, project = rng.choice(projects)
        plan_id = f"pln-{hexs(12)}"
        when = naive(old())
        prefix = f"organizations/{org}/projects/{project}/plans/{plan_id}/sheets/"
        for s in range(1, sheets + 1):
            objects.append(f"{prefix}sheet-{s:03d}/tiles/sheet-{s:03d}.dzi")
        behind = p < n_plans
        total = sheets if (not behind or p % 2 == 0) else sheets + 2
        completes += behind and total == sheets
        plans.append(
            {
                "plan_id": plan_id,
                "organization_id": org,
                "project_id": project,
                "status": "processing" if behind else "complete",
                "completed_pages": (sheets - 4 if p % 2 == 0 else 4) if behind else sheets,
                "total_pages": total,
                "started_at": when,
                "updated_at": when,
                "completed_at": None if behind else when,
                "reconciled": False,
                "reconciled_at": None,
            }
        )

    expected_findings = {
        "orphan_object": n_orphans,
        "stuck_job": n_stuck,
        "missing_original": n_docs + n_img_original,
        "missing_staged": n_img_staged,
        "progress_behind": n_plans,
        "foreign_reference": 0,
        "normalization_mismatch": 0,
        "invalid_reference": 0,
    }
    expected_counts = {
        "marked_error": n,
        "progress_fixed": n_plans,
        "jobs_created": orphan_jobs["absent"],
        "jobs_reset": orphan_jobs["failed"],
        "retried": n_stuck,
        "requeued": n_orphans + n_stuck,
        "already_queued": 0,
        "skipped_changed": 0,
        "skipped_present": 0,
        "skipped_appeared": 0,
        "skipped_gone": 0,
        "skipped_unverified": 0,
        "not_verified": 0,
    }
    return {
        "objects": objects,
        "documents": documents,
        "processing_jobs": jobs,
        "images": images,
        "plans": plans,
        "expected_findings": expected_findings,
        "expected_counts": expected_counts,
        "requeue_only": orphan_jobs["not_started"],
        "plans_completed": completes,
    }


NAMES = [
    "contract.pdf",
    "invoice-2024-Q3.pdf",
    "site-survey.pdf",
    "Lease Agreement.pdf",
    "permit_application.pdf",
    "change order 14.pdf",
    "RFI-0042.pdf",
    "submittal_log.xlsx",
]


def world_sizes(world: dict[str, Any]) -> dict[str, int]:
    return {t: len(world[t]) for t in ("objects", *REFERENCE_TABLES)}


# --------------------------------------------------------------------------- storage (parent)


def seed_local(world: dict[str, Any], root: Path) -> float:
    started = time.perf_counter()
    made: set[Path] = set()
    for key in world["objects"]:
        path = root.joinpath(*key.split("/"))
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        path.write_bytes(b"x")
    return time.perf_counter() - started


def seed_moto(world: dict[str, Any], bucket: str, base: datetime) -> float:
    """Write every object straight into moto's in-process backend (visible over HTTP)."""
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    started = time.perf_counter()
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    modified = base.astimezone(timezone.utc).replace(tzinfo=None)
    for i, key in enumerate(world["objects"]):
        fake = backend.put_object(bucket, key, b"%d" % (i % 997), disable_notification=True)
        fake.last_modified = modified
    return time.perf_counter() - started


# --------------------------------------------------------------------------- worker helpers


class TimedStore:
    """Delegates to a store, recording each HEAD's start and end (the storage re-checks)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self.intervals: list[tuple[float, float]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @property
    def bucket(self) -> str:
        return self._inner.bucket

    @property
    def requests(self) -> int:
        return self._inner.requests

    @property
    def description(self) -> str:
        return self._inner.description

    def check_access(self) -> None:
        self._inner.check_access()

    def list_pages(
        self, prefix: str = "", delimiter: str | None = None, *, start_after: str | None = None
    ):
        return self._inner.list_pages(prefix, delimiter, start_after=start_after)

    def head(self, key: str):
        started = time.perf_counter()
        try:
            return self._inner.head(key)
        finally:
            ended = time.perf_counter()
            with self._lock:
                self.intervals.append((started, ended))

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        self._inner.put_bytes(key, data, content_type)

    def get_bytes(self, key: str) -> bytes:
        return self._inner.get_bytes(key)

    def reset(self) -> None:
        with self._lock:
            self.intervals = []

    def heads(self) -> int:
        return len(self.intervals)

    def busy_seconds(self) -> float:
        """Wall time during which at least one HEAD was in flight."""
        total, end = 0.0, float("-inf")
        for start, stop in sorted(self.intervals):
            if start > end:
                total += stop - start
                end = stop
            elif stop > end:
                total += stop - end
                end = stop
        return total


class Commits:
    """Counts the transactions committed on an engine (batch transactions and bookkeeping)."""

    def __init__(self, engine: Any) -> None:
        import sqlalchemy as sa

        self.count = 0
        sa.event.listen(engine, "commit", self._hook)

    def _hook(self, *_: object) -> None:
        self.count += 1

    def take(self) -> int:
        count, self.count = self.count, 0
        return count


def reset_schema(engine: Any) -> None:
    from integrity import schema
    from integrity.remediation import ledger

    ledger.metadata.drop_all(engine)
    schema.drop_reference_schema(engine)
    schema.create_reference_schema(engine)


def seed_database(engine: Any, world: dict[str, Any]) -> float:
    from integrity import schema

    started = time.perf_counter()
    with engine.begin() as conn:
        for table in (schema.documents, schema.processing_jobs, schema.images, schema.plans):
            rows = world[table.name]
            for i in range(0, len(rows), 10_000):
                conn.execute(table.insert(), rows[i : i + 10_000])
    return time.perf_counter() - started


def dump(engine: Any) -> dict[str, dict[str, Any]]:
    """Every row and column of the reference tables as stored, by key: raw as the driver returns
    them, and on PostgreSQL each row's text form too (what a byte-for-byte comparison needs)."""
    import sqlalchemy as sa

    out: dict[str, dict[str, Any]] = {}
    with engine.connect() as conn:
        for table, key in REFERENCE_TABLES.items():
            text = ", t::text AS row_text" if engine.dialect.name == "postgresql" else ""
            result = conn.execute(sa.text(f"SELECT t.*{text} FROM {table} t ORDER BY {key}"))
            position = list(result.keys()).index(key)
            out[table] = {str(row[position]): tuple(row) for row in result}
    return out


def differing_rows(a: dict, b: dict) -> set[tuple[str, str]]:
    """(table, key) of every row that differs between two dumps (changed, added or removed)."""
    return {
        (table, key)
        for table in REFERENCE_TABLES
        for key in set(a[table]) | set(b[table])
        if a[table].get(key) != b[table].get(key)
    }


def dump_difference(a: dict, b: dict) -> dict[str, int]:
    """Rows per table that differ between two dumps (changed, added or removed)."""
    diff = dict.fromkeys(REFERENCE_TABLES, 0)
    for table, _ in differing_rows(a, b):
        diff[table] += 1
    return diff


def ledger_counts(engine: Any) -> dict[str, int]:
    import sqlalchemy as sa

    from integrity.remediation import ledger

    with engine.connect() as conn:
        present = set(sa.inspect(conn).get_table_names())
        out = {}
        for table in (ledger.audit, ledger.queue):
            if table.name not in present:
                out[table.name] = -1
                continue
            out[table.name] = conn.execute(
                sa.select(sa.func.count()).select_from(table)
            ).scalar_one()
        if ledger.queue.name in present:
            for state, count in conn.execute(
                sa.select(ledger.queue.c.state, sa.func.count()).group_by(ledger.queue.c.state)
            ):
                out[f"queue_{state}"] = count
    return out


def error_rows(engine: Any) -> int:
    """Rows of documents and images in status error."""
    import sqlalchemy as sa

    with engine.connect() as conn:
        return sum(
            conn.execute(
                sa.text(f"SELECT count(*) FROM {table} WHERE status = 'error'")
            ).scalar_one()
            for table in ("documents", "images")
        )


def committed_batches(engine: Any, run_id: str) -> int:
    """Batch transactions that committed: each one bumps its run's `batches` in the ledger."""
    import sqlalchemy as sa

    from integrity.remediation.ledger import remediation_runs

    with engine.connect() as conn:
        return conn.execute(
            sa.select(remediation_runs.c.batches).where(remediation_runs.c.run_id == run_id)
        ).scalar_one()


class Checks:
    """The benchmark's assertions: every one is recorded; any failure fails the run."""

    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []

    def __call__(self, name: str, ok: bool, detail: Any = None) -> bool:
        self.results.append({"check": name, "ok": bool(ok), "detail": None if ok else detail})
        if not ok:
            print(f"  CHECK FAILED: {name}: {detail}", file=sys.stderr, flush=True)
        return ok

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.results if not r["ok"]]


def _phase(store: TimedStore, commits: Commits, seconds: float) -> dict[str, Any]:
    recheck = store.busy_seconds()
    return {
        "seconds": seconds,
        "heads": store.heads(),
        "recheck_seconds": recheck,
        "database_seconds": max(0.0, seconds - recheck),
        "commits": commits.take(),
    }


# --------------------------------------------------------------------------- one measured pass


def measure(args, world: dict[str, Any], engine: Any, store: TimedStore, batch_size: int) -> dict:
    from integrity.diff import DiffOptions
    from integrity.errors import RemediationRefused
    from integrity.reconcile import reconcile
    from integrity.remediation import RemediationOptions, remediate
    from integrity.remediation.rollback import rollback
    from integrity.spec import default_spec

    spec = default_spec()
    check = Checks()
    out: dict[str, Any] = {"batch_size": batch_size}
    expected = world["expected_counts"]

    reset_schema(engine)
    out["seed_seconds"] = seed_database(engine, world)
    commits = Commits(engine)
    before = dump(engine)
    errors_before = error_rows(engine)

    def diff_options() -> DiffOptions:
        return DiffOptions(now=datetime.now(timezone.utc) + LATER)

    # -- reconcile
    store.reset()
    started = time.perf_counter()
    report = reconcile(store, engine, spec, diff_options())
    out["reconcile"] = {
        "seconds": time.perf_counter() - started,
        "timings": report.timings,
        "findings": len(report.findings),
        "by_kind": report.counts(),
        "objects_checked": report.objects_checked,
        "rows_checked": report.rows_checked,
        "storage_requests": store.requests,
    }
    commits.take()
    check("reconcile: report complete", report.complete, report.reasons)
    check(
        "reconcile: findings are exactly the planted drift",
        report.counts() == world["expected_findings"],
        {"found": report.counts(), "expected": world["expected_findings"]},
    )
    findings = sum(v for k, v in report.counts().items() if k in expected_kinds())

    def options(**kw: Any) -> RemediationOptions:
        return RemediationOptions(batch_size=batch_size, concurrency=args.concurrency, **kw)

    # -- the circuit breaker refuses the deliberately large drift without force
    ratios = {
        t: hits / report.table_rows[t]
        for t, hits in report.findings.loc[report.findings["action"] == "mark_error"]
        .groupby("table")["row_id"]
        .nunique()
        .items()
    }
    should_refuse = any(r > 0.2 for r in ratios.values())
    try:
        remediate(report, engine, spec, store, options(dry_run=True))
        refused = False
    except RemediationRefused:
        refused = True
    out["breaker"] = {"mark_error_ratios": ratios, "refused_without_force": refused}
    check("breaker: refuses without force iff a table is above 0.2", refused == should_refuse)

    # -- dry run
    store.reset()
    commits.take()
    started = time.perf_counter()
    dry = remediate(report, engine, spec, store, options(dry_run=True, force=True))
    out["dry_run"] = {
        **_phase(store, commits, time.perf_counter() - started),
        "batches": dry.batches,
        "planned": dry.planned,
        "counts": dict(dry.counts),
        "findings_per_second": findings / dry.seconds,
    }
    check(
        "dry run: counts equal the expected apply counts",
        _counts(dry.counts) == expected,
        {"got": _counts(dry.counts), "expected": expected},
    )
    check("dry run: tables unchanged", dump(engine) == before)
    check("dry run: no ledger tables created", ledger_counts(engine)["integrity_audit"] == -1)

    # -- apply
    store.reset()
    commits.take()
    started = time.perf_counter()
    applied = remediate(
        report, engine, spec, store, options(dry_run=False, force=True), allow_writes=True
    )
    seconds = time.perf_counter() - started
    phase = _phase(store, commits, seconds)
    after = dump(engine)
    changed = dump_difference(before, after)
    ledger_after = ledger_counts(engine)
    transactions = committed_batches(engine, applied.run_id)
    out["apply"] = {
        **phase,
        "run_id": applied.run_id,
        "batches": applied.batches,
        "batch_transactions": transactions,
        "counts": dict(applied.counts),
        "updated": applied.updated,
        "findings_per_second": findings / seconds,
        "rows_changed_per_second": applied.updated / seconds,
        "rows_changed_per_database_second": applied.updated / max(phase["database_seconds"], 1e-9),
        "rows_differing_in_dump": changed,
        "ledger": ledger_after,
    }
    check(
        "apply: counts by outcome as planted",
        _counts(applied.counts) == expected,
        {"got": _counts(applied.counts), "expected": expected},
    )
    check(
        "apply: rows differing in the table dump == updated",
        sum(changed.values()) == applied.updated,
        {"dump": changed, "updated": applied.updated},
    )
    check(
        "apply: one audit record per change (+ requeue-only records)",
        ledger_after["integrity_audit"] == applied.updated + world["requeue_only"],
        ledger_after,
    )
    check(
        "apply: one pending queue entry per requeued object",
        ledger_after.get("queue_pending", 0) == expected["requeued"],
        ledger_after,
    )
    check(
        "apply: every batch with work committed as one transaction",
        transactions == applied.batches,
        {"committed": transactions, "batches": applied.batches},
    )
    check(
        "apply: N more rows in status error",
        error_rows(engine) - errors_before == expected["marked_error"],
        {"before": errors_before, "after": error_rows(engine)},
    )

    # -- second run: reconcile again (later) and remediate without force
    store.reset()
    commits.take()
    started = time.perf_counter()
    report2 = reconcile(store, engine, spec, diff_options())
    reconcile2 = time.perf_counter() - started
    store.reset()
    commits.take()
    started = time.perf_counter()
    second = remediate(report2, engine, spec, store, options(dry_run=False), allow_writes=True)
    seconds2 = time.perf_counter() - started
    again = dump(engine)
    ledger_again = ledger_counts(engine)
    out["second_run"] = {
        "reconcile_seconds": reconcile2,
        "by_kind": report2.counts(),
        **_phase(store, commits, seconds2),
        "batches": second.batches,
        "counts": dict(second.counts),
        "updated": second.updated,
        "ledger": ledger_again,
    }
    waiting = expected["requeued"]
    check(
        "second run: finds only the re-queued uploads (still waiting)",
        {k: v for k, v in report2.counts().items() if v} == {"orphan_object": waiting},
        report2.counts(),
    )
    check(
        "second run: changes nothing, queues nothing",
        second.updated == 0 and second.counts["requeued"] == 0,
        dict(second.counts),
    )
    check(
        "second run: every waiting upload counted already_queued",
        second.counts["already_queued"] == waiting,
        dict(second.counts),
    )
    check("second run: table dump identical", again == after, dump_difference(after, again))
    check(
        "second run: no new audit or queue rows",
        ledger_again == ledger_after,
        {"before": ledger_after, "after": ledger_again},
    )

    # -- rollback of the apply
    commits.take()
    started = time.perf_counter()
    undone = rollback(
        engine, applied.run_id, dry_run=False, batch_size=batch_size, allow_writes=True
    )
    seconds = time.perf_counter() - started
    restored = dump(engine)
    ledger_rb = ledger_counts(engine)
    rows = undone.counts["restored"] + undone.counts["removed"]
    out["rollback"] = {
        "seconds": seconds,
        "commits": commits.take(),
        "batches": undone.batches,
        "batch_transactions": committed_batches(engine, undone.run_id),
        "summary": undone.summary(),
        "rows_per_second": rows / seconds,
        "ledger": ledger_rb,
    }
    check(
        "rollback: restored and removed as applied",
        undone.counts["restored"] == applied.updated - expected["jobs_created"]
        and undone.counts["removed"] == expected["jobs_created"]
        and undone.counts["unchanged"] == world["requeue_only"]
        and undone.counts["skipped_changed"] == 0,
        undone.summary(),
    )
    check(
        "rollback: pending queue entries cancelled",
        undone.counts["queue_cancelled"] == expected["requeued"]
        and ledger_rb.get("queue_pending", 0) == 0,
        {"summary": undone.summary(), "ledger": ledger_rb},
    )
    difference = dump_difference(before, restored)
    check(
        "rollback: full table dump equals the dump before the apply",
        restored == before,
        {"rows differing": difference, "example": _first_difference(before, restored)},
    )
    out["checks"] = check.results
    out["failed_checks"] = check.failed
    return out


def expected_kinds() -> tuple[str, ...]:
    from integrity.diff import ACTION_KINDS

    return ACTION_KINDS


def _counts(counts: Counter) -> dict[str, int]:
    from integrity.remediation import COUNT_NAMES

    return {name: counts[name] for name in COUNT_NAMES}


def _first_difference(a: dict, b: dict) -> Any:
    for table in REFERENCE_TABLES:
        for key in sorted(set(a[table]) | set(b[table])):
            if a[table].get(key) != b[table].get(key):
                return {"table": table, "before": a[table].get(key), "after": b[table].get(key)}
    return None


def worker_main(args) -> None:
    import sqlalchemy as sa

    from integrity.inventory import safe_url

    os.environ.update(AWS_ENV)
    base = datetime.fromisoformat(args.base)
    world = build_world(args.rows, args.healthy, args.seed, base)
    url = os.environ[DB_URL_ENV]
    engine = sa.create_engine(url)
    if args.storage == "s3":
        from dagster_aws.s3 import S3Resource

        from integrity.storage.s3 import S3Storage

        client = S3Resource(endpoint_url=args.endpoint, region_name="us-east-1").get_client()
        inner: Any = S3Storage(client, BUCKET)
    else:
        from integrity.storage.local import LocalStorage

        inner = LocalStorage(args.root, bucket=BUCKET)
    store = TimedStore(inner)
    runs = []
    for size in [int(s) for s in args.batch_sizes.split(",")]:
        print(f"  [{args.worker}] batch size {size} ...", file=sys.stderr, flush=True)
        runs.append(measure(args, world, engine, store, size))
    with engine.connect() as conn:
        server = conn.execute(
            sa.text("SELECT sqlite_version()" if args.worker == "sqlite" else "SHOW server_version")
        ).scalar_one()
    engine.dispose()
    result = {
        "database": args.worker,
        "url": safe_url(url),
        "server_version": server,
        "runs": runs,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print("RESULT " + json.dumps(result, default=str), flush=True)


# --------------------------------------------------------------------------- parent


def _admin_engine(url: str):
    import sqlalchemy as sa

    return sa.create_engine(url, isolation_level="AUTOCOMMIT")


def create_scratch_database(admin_url: str, name: str) -> str:
    import sqlalchemy as sa

    if name in RESERVED_DATABASES:
        raise SystemExit(f"--pg-database: {name!r} is used by others; choose a scratch name")
    if not name.replace("_", "").isalnum():
        raise SystemExit(f"--pg-database: {name!r} is not a plain name")
    engine = _admin_engine(admin_url)
    with engine.connect() as conn:
        exists = conn.execute(
            sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
        ).first()
        if exists:
            raise SystemExit(
                f"--pg-database: database {name!r} already exists; drop it if it is a leftover "
                "of this benchmark (dropdb), or choose another name"
            )
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_scratch_database(admin_url: str, name: str) -> None:
    import sqlalchemy as sa

    engine = _admin_engine(admin_url)
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


def run_worker(
    database: str, args, base: datetime, url: str, endpoint: str | None, root: str | None
) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        database,
        "--rows",
        str(args.rows),
        "--healthy",
        str(args.healthy),
        "--seed",
        str(args.seed),
        "--base",
        base.isoformat(),
        "--batch-sizes",
        args.batch_sizes,
        "--concurrency",
        str(args.concurrency),
        "--storage",
        args.storage,
    ]
    if endpoint:
        cmd += ["--endpoint", endpoint]
    if root:
        cmd += ["--root", root]
    env = {**os.environ, **AWS_ENV, DB_URL_ENV: url, "PGTZ": "UTC"}
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(
        f"the {database} worker failed (exit {proc.returncode}); see its stderr above"
    )


def print_results(results: list[dict]) -> None:
    print()
    header = (
        f"{'db':<9}{'batch':>6}{'reconcile':>10}{'dry run':>9}{'apply':>8}{'recheck':>9}"
        f"{'db part':>9}{'findings/s':>11}{'rows/s':>8}{'txns':>6}{'2nd run':>9}"
        f"{'rollback':>9}{'rb rows/s':>10}{'checks':>8}"
    )
    print(header)
    for r in results:
        for run in r["runs"]:
            a = run["apply"]
            s = run["second_run"]
            rb = run["rollback"]
            ok = "ok" if not run["failed_checks"] else f"{len(run['failed_checks'])} FAIL"
            print(
                f"{r['database']:<9}{run['batch_size']:>6}{run['reconcile']['seconds']:>10.2f}"
                f"{run['dry_run']['seconds']:>9.2f}{a['seconds']:>8.2f}{a['recheck_seconds']:>9.2f}"
                f"{a['database_seconds']:>9.2f}{a['findings_per_second']:>11,.0f}"
                f"{a['rows_changed_per_second']:>8,.0f}{a['batch_transactions']:>6}"
                f"{s['reconcile_seconds'] + s['seconds']:>9.2f}{rb['seconds']:>9.2f}"
                f"{rb['rows_per_second']:>10,.0f}{ok:>8}"
            )
    print(
        "\n(seconds; recheck = wall time with a storage HEAD in flight, db part = apply - recheck;"
        " txns = committed batch transactions; 2nd run = reconcile + remediate)"
    )


def parent_main(args) -> None:
    databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    for d in databases:
        if d not in DATABASES:
            raise SystemExit(f"--databases: unknown database {d!r} (choose from sqlite, postgres)")
    sizes = [s.strip() for s in args.batch_sizes.split(",") if s.strip()]
    if not sizes or not all(s.isdigit() and int(s) > 0 for s in sizes):
        raise SystemExit(f"--batch-sizes: {args.batch_sizes!r} is not a list of positive integers")
    args.batch_sizes = ",".join(sizes)
    if args.healthy is None:
        args.healthy = args.rows
    os.environ.update(AWS_ENV)
    base = datetime.now(timezone.utc).replace(microsecond=0)
    started = time.perf_counter()
    world = build_world(args.rows, args.healthy, args.seed, base)
    build_s = time.perf_counter() - started
    sizes_of = world_sizes(world)
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(
        f"world: {args.rows:,} rows with missing objects, {args.healthy:,} healthy; "
        f"{sizes_of} (built in {build_s:.1f} s)"
    )
    print(f"expected findings: {world['expected_findings']}")
    print(f"expected apply counts: {world['expected_counts']}")

    server = None
    endpoint = root = None
    created_pg = None
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="integrity-remediate-bench-") as tmp:
        try:
            if args.storage == "s3":
                import logging

                from moto.server import ThreadedMotoServer

                logging.getLogger("werkzeug").setLevel(logging.ERROR)
                server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
                server.start()
                host, port = server.get_host_and_port()
                endpoint = f"http://{host}:{port}"
                import boto3

                boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
                    Bucket=BUCKET
                )
                seed_s = seed_moto(world, BUCKET, base)
                where = f"moto S3 at {endpoint}"
            else:
                root = str(Path(tmp) / BUCKET)
                Path(root).mkdir()
                seed_s = seed_local(world, Path(root))
                where = f"LocalStorage {root}"
            print(
                f"storage: {len(world['objects']):,} objects in {where}, seeded in {seed_s:.1f} s"
            )
            del world
            for database in databases:
                if database == "sqlite":
                    url = f"sqlite:///{Path(tmp) / 'bench.sqlite'}"
                else:
                    url = create_scratch_database(args.postgres_url, args.pg_database)
                    created_pg = args.pg_database
                print(f"running {database} (batch sizes {args.batch_sizes}) ...", flush=True)
                results.append(run_worker(database, args, base, url, endpoint, root))
                if database == "postgres":
                    drop_scratch_database(args.postgres_url, args.pg_database)
                    created_pg = None
        finally:
            if created_pg:
                drop_scratch_database(args.postgres_url, created_pg)
            if server is not None:
                server.stop()
    print_results(results)
    failed = [
        (r["database"], run["batch_size"], c["check"])
        for r in results
        for run in r["runs"]
        for c in run["failed_checks"]
    ]
    if args.json:
        out = {
            "rows": args.rows,
            "healthy": args.healthy,
            "storage": args.storage,
            "concurrency": args.concurrency,
            "batch_sizes": [int(s) for s in args.batch_sizes.split(",")],
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "world": sizes_of,
            "storage_seed_seconds": seed_s,
            "results": results,
            "all_checks_passed": not failed,
        }
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))
        print(f"\nwrote {args.json}")
    if failed:
        print(f"\n{len(failed)} check(s) FAILED: {failed}", file=sys.stderr)
        raise SystemExit(1)
    print("\nall checks passed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rows",
        type=int,
        default=20_000,
        help="rows whose object is missing, to be marked error (default 20,000)",
    )
    parser.add_argument(
        "--healthy", type=int, help="healthy rows with their objects (default: as many as --rows)"
    )
    parser.add_argument("--storage", choices=("local", "s3"), default="local")
    parser.add_argument(
        "--databases", default=",".join(DATABASES), help="comma-separated: sqlite,postgres"
    )
    parser.add_argument(
        "--batch-sizes", default="100", help="comma-separated batch sizes to sweep (default 100)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=5, help="storage re-checks in flight (default 5)"
    )
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument(
        "--postgres-url",
        default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        help="a PostgreSQL server URL allowed to create and drop the scratch database",
    )
    parser.add_argument(
        "--pg-database",
        default="bench_remediate",
        help="the scratch database, created here and dropped at the end (default bench_remediate)",
    )
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--worker", choices=DATABASES, help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rows < 1 or args.concurrency < 1:
        raise SystemExit("--rows and --concurrency must be at least 1")
    if args.worker:
        worker_main(args)
    else:
        parent_main(args)


if __name__ == "__main__":
    main()
