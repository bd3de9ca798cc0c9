#!/usr/bin/env python
"""Remediation races: a writer storing objects while `--apply` marks their rows, on SQLite and
PostgreSQL, and two `--apply` processes at once on PostgreSQL. Prints the figures.

    python benchmarks/reliability_races.py                       # >= 1,000 racing stores per database
    python benchmarks/reliability_races.py --stores 5000 --json races.json

1. The writer race (integrity_tests/races.py): rows whose objects are missing are reconciled and
   applied in batches while a writer thread stores objects for the rows of the batch being
   applied at that moment; every other store is followed by the writer's own row write
   (`status = 'complete'`), the others are store-only. Rounds of `--rows` rows run until at least
   `--stores` stores raced the apply. A row is wrongly marked if it is `error` at the end although
   its object's store was acknowledged before the mark was decided (`wrong_before_lock`), before
   the mark's transaction committed (`wrong_before_commit`), or its LastModified is before that
   commit (`wrong_last_modified`). `lost_row_writes`: a row write of the writer not in the table.
   Promise: wrong_before_lock, wrong_before_commit and lost_row_writes are 0, and audit and table
   agree. wrong_last_modified is printed too (an mtime is set when the bytes are written, before
   the rename that makes the object visible, so it is a close but not an exact witness).
2. Two applies at once: the same saved report (missing originals and orphan uploads) is applied
   by two processes (integrity_tests/remediation_worker.py) started together on PostgreSQL.
   Promise: every change is made and audited exactly once across both runs (no double-apply), the
   counts of the two runs add up to the findings, and the tables are what the audit says.
3. A store failing every HEAD: `integrity reconcile --apply` on `--failing-findings` missing
   originals (SQLite) through integrity_tests/flaky_proxy.py in front of moto, which answers 503
   to every object HEAD, with `--recheck-budget` set to `--failing-budget`. Promise: the command
   ends within the budget plus the retries of the HEADs in flight, with exit status 4, one line
   naming the run, no row changed, and the run recorded as failed.

PostgreSQL: a scratch database (`--pg-database`, default bench_races) is created on the server of
`--postgres-url` and dropped at the end; the storage is a local directory per run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import sqlalchemy as sa  # noqa: E402

from integrity import schema  # noqa: E402
from integrity.diff import DiffOptions  # noqa: E402
from integrity.reconcile import reconcile  # noqa: E402
from integrity.remediation import ledger  # noqa: E402
from integrity.schema import create_reference_schema, drop_reference_schema  # noqa: E402
from integrity.spec import default_spec  # noqa: E402
from integrity.storage.local import LocalStorage  # noqa: E402
from integrity_tests.races import writer_race  # noqa: E402

RESERVED_DATABASES = ("test", "test_local", "postgres", "template0", "template1")
ALLOW = {"INTEGRITY_ALLOW_WRITES": "1"}


def insert_missing_documents(engine: sa.Engine, count: int, at: datetime) -> None:
    """`count` complete documents rows of org-1 whose objects were never stored."""
    with engine.begin() as conn:
        conn.execute(
            schema.documents.insert(),
            [
                dict(
                    id=f"gone-{n:05d}",
                    organization_id="org-1",
                    r2_key=f"documents/org-1/gone-{n:05d}.pdf",
                    status="complete",
                    created_at=at,
                    updated_at=at,
                )
                for n in range(count)
            ],
        )


def fresh(engine: sa.Engine) -> None:
    ledger.metadata.drop_all(engine)
    drop_reference_schema(engine)
    create_reference_schema(engine)


# --------------------------------------------------------------------------- 1. the writer race


def race_rounds(url: str, *, stores: int, rows: int, batch_size: int, seed: int) -> dict[str, Any]:
    totals: Counter = Counter()
    rounds = []
    wrong: dict[str, list[str]] = {
        "wrong_before_lock": [],
        "wrong_before_commit": [],
        "wrong_last_modified": [],
        "lost_row_writes": [],
    }
    agrees = True
    details: list[dict[str, Any]] = []
    engine = sa.create_engine(url)
    try:
        while totals["racing_stores"] < stores:
            with tempfile.TemporaryDirectory(prefix="races-") as tmp:
                root = Path(tmp) / "media"
                root.mkdir()
                fresh(engine)
                result = writer_race(
                    engine, root, rows=rows, batch_size=batch_size, seed=seed + len(rounds)
                )
            figures = result.figures()
            rounds.append(figures)
            for key, value in figures.items():
                if isinstance(value, int) and not isinstance(value, bool) and key not in wrong:
                    totals[key] += value
            for key in wrong:
                wrong[key] += getattr(result, key)
            details += result.last_modified_details
            agrees = agrees and result.audit_agrees
            print(
                f"  {engine.dialect.name} round {len(rounds)}: {figures['racing_stores']:,} racing "
                f"stores, appeared under the lock {figures['appeared_under_lock']}, "
                f"at the commit {figures['appeared_at_commit']}, wrong "
                f"{figures['wrong_before_commit']}",
                flush=True,
            )
        fresh(engine)
    finally:
        ledger.metadata.drop_all(engine)
        drop_reference_schema(engine)
        engine.dispose()
    totals.pop("rows", None)
    totals.pop("batch_size", None)
    return {
        "database": rounds[0]["database"],
        "rounds": len(rounds),
        "rows": rows * len(rounds),
        "batch_size": batch_size,
        **dict(totals),
        **{key: len(ids) for key, ids in wrong.items()},
        "wrong_examples": {key: ids[:5] for key, ids in wrong.items() if ids},
        "last_modified_details": details[:20],
        "audit_agrees": agrees,
    }


# --------------------------------------------------------------------------- 2. two applies at once


def two_applies(url: str, *, missing: int, orphans: int, batch_size: int) -> dict[str, Any]:
    engine = sa.create_engine(url)
    try:
        fresh(engine)
        with tempfile.TemporaryDirectory(prefix="two-applies-") as tmp:
            root = Path(tmp) / "media"
            store = LocalStorage(root)
            root.mkdir()
            base = datetime.now(timezone.utc)
            at = base.replace(tzinfo=None)
            uploads = [f"documents/org-2/up-{n:05d}.pdf" for n in range(orphans)]
            for key in uploads:
                store.put_bytes(key, b"upload")
            insert_missing_documents(engine, missing, at)
            report = reconcile(
                store, engine, default_spec(), DiffOptions(now=base + timedelta(hours=2))
            )
            path = report.save(Path(tmp) / "report.parquet")
            started = time.perf_counter()
            processes = [
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "integrity_tests.remediation_worker",
                        url,
                        str(root),
                        str(path),
                        run_id,
                        str(batch_size),
                        "0",
                    ],
                    cwd=REPO,
                    env={**os.environ, **ALLOW},
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for run_id in ("apply-a", "apply-b")
            ]
            outputs = [p.communicate(timeout=600) for p in processes]
            seconds = time.perf_counter() - started
        failures = [
            (p.returncode, err.strip().splitlines()[-1:])
            for p, (_, err) in zip(processes, outputs)
            if p.returncode
        ]
        summaries = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs if out.strip()]
        with engine.connect() as conn:
            records = conn.execute(
                sa.select(ledger.audit.c.run_id, ledger.audit.c.action, ledger.audit.c.row_key)
            ).all()
            errors = set(
                conn.execute(
                    sa.select(schema.documents.c.id).where(schema.documents.c.status == "error")
                ).scalars()
            )
            jobs = set(conn.execute(sa.select(schema.processing_jobs.c.object_key)).scalars())
            queued = Counter(conn.execute(sa.select(ledger.queue.c.object_key)).scalars())
        changes = Counter((r.action, r.row_key) for r in records if r.action != "skipped")
        marked = {key for action, key in changes if action == "mark_error"}
        created = {key for action, key in changes if action == "create_job"}
        total = Counter()
        for summary in summaries:
            total.update({k: v for k, v in summary.items() if isinstance(v, int)})
        return {
            "missing": missing,
            "orphans": orphans,
            "batch_size": batch_size,
            "failed_processes": failures,
            "runs": {
                s["run_id"]: {
                    k: s[k]
                    for k in ("marked_error", "jobs_created", "skipped_changed", "already_queued")
                }
                for s in summaries
            },
            "changes_made_twice": sum(1 for n in changes.values() if n > 1),
            "marked_error_total": total["marked_error"],
            "jobs_created_total": total["jobs_created"],
            "queue_entries_twice": sum(1 for n in queued.values() if n > 1),
            "audit_agrees": errors == marked
            and jobs == created
            and set(queued) == set(uploads)
            and len(marked) == missing
            and len(created) == orphans
            and total["marked_error"] == missing
            and total["jobs_created"] == orphans,
            "seconds": round(seconds, 2),
        }
    finally:
        ledger.metadata.drop_all(engine)
        drop_reference_schema(engine)
        engine.dispose()


# --------------------------------------------------------------------------- 3. a failing store


def failing_store(findings: int, budget: str) -> dict[str, Any]:
    import re
    import uuid

    from moto.server import ThreadedMotoServer

    from integrity_tests.flaky_proxy import FlakyProxy

    aws = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
        "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
    }
    os.environ.update(aws)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    bucket = f"integrity-{uuid.uuid4().hex[:12]}"
    try:
        import boto3

        boto3.client("s3", endpoint_url=f"http://{host}:{port}").create_bucket(Bucket=bucket)
        with (
            tempfile.TemporaryDirectory(prefix="failing-store-") as tmp,
            FlakyProxy(f"http://{host}:{port}") as proxy,
        ):
            url = f"sqlite:///{tmp}/failing.sqlite"
            engine = sa.create_engine(url)
            create_reference_schema(engine)
            at = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(hours=2)
            insert_missing_documents(engine, findings, at)
            with engine.connect() as conn:
                before = conn.execute(sa.select(schema.documents)).all()
            proxy.fail_heads_after = 0
            started = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "integrity.cli", "reconcile", "--apply", "--json"]
                + ["--db-url", url, "--bucket", bucket, "--endpoint-url", proxy.endpoint]
                + ["--force", "--recheck-budget", budget],
                cwd=REPO,
                env={**os.environ, **ALLOW, **aws},
                capture_output=True,
                text=True,
                timeout=3600,
            )
            seconds = time.perf_counter() - started
            lines = done.stderr.strip().splitlines()
            match = re.search(r"remediation run ([0-9a-f]{32})", lines[-1] if lines else "")
            with engine.connect() as conn:
                after = conn.execute(sa.select(schema.documents)).all()
                state = None
                if match:
                    state = conn.execute(
                        sa.select(ledger.remediation_runs.c.state).where(
                            ledger.remediation_runs.c.run_id == match.group(1)
                        )
                    ).scalar_one_or_none()
            engine.dispose()
            summary = json.loads(done.stdout) if done.stdout.strip() else {}
            return {
                "findings": findings,
                "budget": budget,
                "seconds": round(seconds, 1),
                "exit_status": done.returncode,
                "stderr_lines": len(lines),
                "error_line": lines[-1] if lines else None,
                "run_named": bool(match),
                "run_state": state,
                "rows_changed": sum(a != b for a, b in zip(before, after)),
                "skipped_unverified": summary.get("skipped_unverified"),
                "not_verified": summary.get("not_verified"),
                "head_requests_failed": proxy.heads_failed,
            }
    finally:
        server.stop()


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--stores", type=int, default=1000, help="racing stores per database, at least (1,000)"
    )
    parser.add_argument("--rows", type=int, default=3000, help="rows per race round (3,000)")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--databases", default="sqlite,postgres")
    parser.add_argument("--missing", type=int, default=2000, help="two applies: missing originals")
    parser.add_argument("--orphans", type=int, default=500, help="two applies: orphan uploads")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument(
        "--failing-findings", type=int, default=9500, help="failing store: missing originals"
    )
    parser.add_argument(
        "--failing-budget", default="30s", help="failing store: --recheck-budget (30s)"
    )
    parser.add_argument(
        "--postgres-url",
        default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres",
        help="a PostgreSQL server URL allowed to create and drop the scratch database",
    )
    parser.add_argument("--pg-database", default="bench_races")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.pg_database in RESERVED_DATABASES:
        raise SystemExit(f"--pg-database: {args.pg_database!r} is not a scratch database")
    os.environ.setdefault("PGTZ", "UTC")

    databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    server = sa.create_engine(args.postgres_url, isolation_level="AUTOCOMMIT")
    pg_url = sa.make_url(args.postgres_url).set(database=args.pg_database)
    figures: dict[str, Any] = {"races": [], "two_applies": None, "failing_store": None}
    with tempfile.TemporaryDirectory(prefix="races-sqlite-") as tmp:
        try:
            if "postgres" in databases:
                with server.connect() as conn:
                    conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{args.pg_database}"'))
                    conn.execute(sa.text(f'CREATE DATABASE "{args.pg_database}"'))
            urls = {
                "sqlite": f"sqlite:///{tmp}/races.sqlite",
                "postgres": pg_url.render_as_string(hide_password=False),
            }
            for database in databases:
                print(f"writer race on {database}:", flush=True)
                figures["races"].append(
                    race_rounds(
                        urls[database],
                        stores=args.stores,
                        rows=args.rows,
                        batch_size=args.batch_size,
                        seed=args.seed,
                    )
                )
            if "postgres" in databases:
                print("two applies at once on postgres:", flush=True)
                figures["two_applies"] = two_applies(
                    urls["postgres"],
                    missing=args.missing,
                    orphans=args.orphans,
                    batch_size=args.batch_size,
                )
            print("a store failing every HEAD:", flush=True)
            figures["failing_store"] = failing_store(args.failing_findings, args.failing_budget)
        finally:
            if "postgres" in databases:
                with server.connect() as conn:
                    conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{args.pg_database}"'))
            server.dispose()

    print()
    columns = (
        "racing_stores",
        "row_writes",
        "marked_error",
        "skipped_present",
        "appeared_under_lock",
        "appeared_at_commit",
        "skipped_changed",
        "wrong_before_lock",
        "wrong_before_commit",
        "wrong_last_modified",
        "lost_row_writes",
        "audit_agrees",
    )
    print(f"{'writer race':<22}" + "".join(f"{r['database']:>12}" for r in figures["races"]))
    for column in columns:
        print(f"  {column:<20}" + "".join(f"{str(r[column]):>12}" for r in figures["races"]))
    # wrong_last_modified is printed, not promised: an mtime is set when the bytes are written,
    # before the rename makes the object visible, so it can precede a commit the object followed.
    ok = all(
        r[k] == 0
        for r in figures["races"]
        for k in ("wrong_before_lock", "wrong_before_commit", "lost_row_writes")
    ) and all(r["audit_agrees"] for r in figures["races"])
    two = figures["two_applies"]
    if two is not None:
        print("\ntwo applies at once (postgres):")
        for key, value in two.items():
            print(f"  {key:<22} {value}")
        ok = ok and not two["failed_processes"] and two["changes_made_twice"] == 0
        ok = ok and two["queue_entries_twice"] == 0 and two["audit_agrees"]
    failing = figures["failing_store"]
    if failing is not None:
        print("\na store failing every HEAD (sqlite, the CLI):")
        for key, value in failing.items():
            print(f"  {key:<22} {value}")
        ok = ok and failing["exit_status"] == 4 and failing["stderr_lines"] == 1
        ok = ok and failing["run_named"] and failing["run_state"] == "failed"
        ok = ok and failing["rows_changed"] == 0
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str) + "\n")
    print("\nall promises held" if ok else "\nA PROMISE WAS BROKEN (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
