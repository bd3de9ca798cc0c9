#!/usr/bin/env python
"""Killed remediation runs: SIGKILL a real `integrity reconcile --apply` at random points, then
check that the run is seen as interrupted once its lease runs out, that the next apply records
it as failed and converges, and that rolling it back restores exactly what its batches changed.

    python benchmarks/killed_runs.py                                  # SQLite, 5 kills
    INTEGRITY_BENCH_DB_URL=postgresql+psycopg://postgres@127.0.0.1:5432/bench \\
        python benchmarks/killed_runs.py --kills 5 --json results.json  # and PostgreSQL

The PostgreSQL database named by INTEGRITY_BENCH_DB_URL (or --postgres-url) has its reference
tables and integrity's ledger dropped and created again for every kill: give it a scratch
database. Per database and kill:

  plant     N documents whose objects are missing and N/10 orphan uploads (local storage).
  kill      `integrity reconcile --apply --force --batch-size B` in a process of its own, with
            INTEGRITY_RUN_LEASE_SECONDS=L; once a random number of batches has committed, a
            random 0-50 ms later, SIGKILL.
  observe   `run_history` every 20 ms: how long after the kill the run reads as interrupted
            (the lease it last renewed runs out: at most L).
  next      `integrity reconcile --apply --force --json` in-process: it must name the killed run
            in interrupted_runs, record it as failed (failed_by = its own run id), and change
            exactly what the killed run left undone; a reconcile after it finds no missing
            original.
  rollback  roll back the killed run (its rows must get exactly their planted values back),
            then the next run: the tables must equal the planted ones.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from integrity import cli, schema, settings  # noqa: E402
from integrity.diff import DiffOptions  # noqa: E402
from integrity.reconcile import reconcile  # noqa: E402
from integrity.remediation import ledger  # noqa: E402
from integrity.remediation.rollback import run_history  # noqa: E402
from integrity.spec import default_spec  # noqa: E402
from integrity.storage.local import LocalStorage  # noqa: E402

DB_URL_ENV = "INTEGRITY_BENCH_DB_URL"
RESERVED_DATABASES = ("test", "test_local", "postgres", "template0", "template1")
TABLES = {"documents": "id", "processing_jobs": "object_key"}


def plant(engine: sa.Engine, root: Path, n: int) -> None:
    ledger.metadata.drop_all(engine)
    schema.drop_reference_schema(engine)
    schema.create_reference_schema(engine)
    at = (datetime.now(timezone.utc) - timedelta(days=2)).replace(tzinfo=None)
    with engine.begin() as conn:
        conn.execute(
            schema.documents.insert(),
            [
                dict(
                    id=f"doc-{i:06d}",
                    organization_id="org-1",
                    r2_key=f"documents/org-1/gone-{i:06d}.pdf",
                    status="complete",
                    created_at=at,
                    updated_at=at,
                )
                for i in range(n)
            ],
        )
    store = LocalStorage(root)
    for i in range(n // 10):
        store.put_bytes(f"documents/org-2/orphan-{i:06d}.pdf", b"%PDF-1.4\n")


def dump(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    with engine.connect() as conn:
        return {
            t: [tuple(r) for r in conn.execute(sa.text(f"SELECT * FROM {t} ORDER BY {key}"))]
            for t, key in TABLES.items()
        }


def batches_of(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(ledger.RUNS_TABLE):
            return {}
        found = conn.execute(
            sa.select(ledger.remediation_runs.c.run_id, ledger.remediation_runs.c.batches)
        ).all()
    return dict(found)


def cli_json(*argv: str) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = cli.main(list(argv))
    return code, json.loads(out.getvalue() or "{}")


def one_kill(
    engine: sa.Engine, url: str, workdir: Path, n: int, batch_size: int, lease: float, rng: Any
) -> dict[str, Any]:
    root = workdir / "storage"
    root.mkdir(parents=True, exist_ok=True)
    for path in root.rglob("*"):
        if path.is_file():
            path.unlink()
    plant(engine, root, n)
    original = dump(engine)
    total = -(-n // batch_size) + -(-(n // 10) // batch_size)
    kill_after = rng.randint(1, total - 1)
    base = ["reconcile", "--db-url", url, "--storage-dir", str(root), "--min-age", "0s"]
    base += ["--force", "--batch-size", str(batch_size)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTEGRITY_")}
    env |= {settings.ENV_ALLOW_WRITES: "1", settings.ENV_RUN_LEASE: str(lease), "PGTZ": "UTC"}
    process = subprocess.Popen(
        [sys.executable, "-m", "integrity.cli", *base, "--apply"],
        cwd=workdir,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not any(b >= kill_after for b in batches_of(engine).values()):
            if process.poll() is not None:
                raise RuntimeError(f"the apply ended before the kill: {process.stderr.read()}")
            if time.monotonic() > deadline:
                raise RuntimeError("the apply made no progress")
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.05))
        alive = process.poll() is None
        process.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
    finally:
        process.kill()
        process.communicate(timeout=30)
    [killed] = batches_of(engine)
    committed = batches_of(engine)[killed]

    first_seen = None
    while True:
        [run] = [r for r in run_history(engine) if r["run_id"] == killed]
        if first_seen is None:
            first_seen = run["state"]
        if run["interrupted"]:
            latency = time.monotonic() - killed_at
            break
        if time.monotonic() - killed_at > lease + 30:
            raise RuntimeError("the killed run never read as interrupted")
        time.sleep(0.02)
    with engine.connect() as conn:
        audited = conn.execute(
            sa.select(sa.func.count())
            .select_from(ledger.audit)
            .where(ledger.audit.c.run_id == killed)
        ).scalar_one()

    os.environ[settings.ENV_ALLOW_WRITES] = "1"
    try:
        code, later = cli_json(*base, "--apply", "--json")
        named = [r["run_id"] for r in later.get("interrupted_runs", [])]
        with engine.connect() as conn:
            state, failed_by = conn.execute(
                sa.select(
                    ledger.remediation_runs.c.state, ledger.remediation_runs.c.failed_by
                ).where(ledger.remediation_runs.c.run_id == killed)
            ).one()
        left = reconcile(
            LocalStorage(root), engine, default_spec(), DiffOptions(min_age=timedelta(0))
        ).counts()["missing_original"]
        code_a, undo_killed = cli_json(
            "rollback", "--run-id", killed, "--apply", "--json", "--db-url", url
        )
        after_killed = dump(engine)
        with engine.connect() as conn:
            keys = set(
                conn.execute(
                    sa.select(ledger.audit.c.row_key).where(ledger.audit.c.run_id == killed)
                ).scalars()
            )
        # every row the killed run changed holds its planted values again (the job rows it
        # created are gone: none was planted)
        restored = all(
            row in original[t] for t, rows in after_killed.items() for row in rows if row[0] in keys
        )
        code_b, _ = cli_json(
            "rollback", "--run-id", later["run_id"], "--apply", "--json", "--db-url", url
        )
    finally:
        del os.environ[settings.ENV_ALLOW_WRITES]
    return {
        "batches_total": total,
        "killed_after_batches": committed,
        "alive_at_kill": alive,
        "audit_records_of_killed": audited,
        "whole_batches": audited == committed * batch_size,  # every planted batch is full
        "listed_right_after_kill": first_seen,
        "seconds_until_interrupted": round(latency, 3),
        "next_apply_exit": code,
        "next_apply_named_it": named == [killed],
        "recorded_failed_by_next": (state, failed_by) == ("failed", later.get("run_id")),
        "next_apply_updated": later.get("updated"),
        "converged": later.get("updated", 0) + audited == n + n // 10 and left == 0,
        "rollback_of_killed_exact": code_a == 0
        and restored
        and undo_killed.get("restored", 0) + undo_killed.get("removed", 0) == audited,
        "both_rolled_back_equal_planted": code_b == 0 and dump(engine) == original,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--rows", type=int, default=2000, help="documents with a missing object")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--lease", type=float, default=2.0, help="INTEGRITY_RUN_LEASE_SECONDS")
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--postgres-url", default=os.environ.get(DB_URL_ENV))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if (
        args.batch_size < 1
        or args.rows < 10 * args.batch_size
        or args.rows % (10 * args.batch_size)
    ):
        parser.error("--rows: a multiple of 10 x --batch-size, so that every batch is full")
    rng = random.Random(args.seed)
    results: dict[str, Any] = {
        "rows": args.rows,
        "orphans": args.rows // 10,
        "batch_size": args.batch_size,
        "lease_seconds": args.lease,
        "databases": {},
    }
    with tempfile.TemporaryDirectory(prefix="integrity-killed-") as tmp:
        urls = {"sqlite": f"sqlite:///{Path(tmp) / 'bench.sqlite'}"}
        if args.postgres_url:
            if sa.make_url(args.postgres_url).database in RESERVED_DATABASES:
                parser.error(f"--postgres-url: use a scratch database, not {args.postgres_url}")
            urls["postgres"] = args.postgres_url
        for name, url in urls.items():
            engine = sa.create_engine(url)
            kills = []
            for k in range(args.kills):
                outcome = one_kill(
                    engine, url, Path(tmp) / name, args.rows, args.batch_size, args.lease, rng
                )
                kills.append(outcome)
                print(f"{name} kill {k + 1}: {json.dumps(outcome)}", flush=True)
            engine.dispose()
            latencies = [k["seconds_until_interrupted"] for k in kills]
            checks = [key for key, value in kills[0].items() if isinstance(value, bool)]
            results["databases"][name] = {
                "kills": len(kills),
                "all_checks_passed": {c: sum(bool(k[c]) for k in kills) for c in checks},
                "seconds_until_interrupted": {
                    "median": statistics.median(latencies),
                    "max": max(latencies),
                },
                "runs": kills,
            }
    print(json.dumps({k: v for k, v in results.items() if k != "databases"}))
    for name, figures in results["databases"].items():
        print(name, json.dumps({k: v for k, v in figures.items() if k != "runs"}))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    failed = [
        (name, check)
        for name, figures in results["databases"].items()
        for check, passed in figures["all_checks_passed"].items()
        if check != "alive_at_kill" and passed != figures["kills"]
    ]
    if failed:
        print(f"FAILED: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
