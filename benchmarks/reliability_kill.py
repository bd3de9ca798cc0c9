#!/usr/bin/env python
"""SIGKILL `integrity reconcile --apply` at random points on SQLite and PostgreSQL, and check what
is left: whole batches, audit and tables agreeing, the killed run read as interrupted once its
lease runs out and recorded as failed by the next apply, convergence and an exact rollback.

    python benchmarks/reliability_kill.py                                   # SQLite, 8 kills
    INTEGRITY_BENCH_DB_URL=postgresql+psycopg://postgres@127.0.0.1:5432/scratch \\
        python benchmarks/reliability_kill.py --json benchmarks/results-reliability-kill.json

SQLite runs in a temporary file. PostgreSQL (--db-url, or INTEGRITY_BENCH_DB_URL) is emptied
first, its reference tables and integrity's ledger dropped: name a scratch database. --databases
chooses (default: sqlite, and postgres when a URL is given). Per database, the world of
benchmarks/remediate_throughput.py is seeded (rows whose objects are missing, orphan uploads,
stuck jobs, plans behind, controls), its objects in a local storage directory, and every command
runs with a lease of --lease seconds (INTEGRITY_RUN_LEASE_SECONDS). Then:

  uninterrupted  one `integrity reconcile --apply` on a fresh seed: its batches, audit records
                 and changed rows are the reference, and its duration sets the kill windows.
  kills          the world is seeded again; K times, the batches the next apply will make are
                 worked out from a reconcile of the state it starts from (planned and batched by
                 the code the CLI runs: one action on one table, at most --batch-size, less the
                 uploads already waiting in the queue, which are counted, not audited). Then
                 `integrity reconcile --apply` is started in a subprocess and SIGKILLed a random
                 number of ms after its run appears in the ledger (uniform in a window that
                 leaves work for the kills to come). Just before the kill, whether a write
                 transaction was open: PostgreSQL's pg_stat_activity, SQLite's rollback journal.
                 After each kill:
                   - whole batches: the run's audit records, in order, are exactly those of its
                     first B planned batches, B being the batches the ledger says it committed,
                     and nothing of batch B + 1; on PostgreSQL each batch's records are one
                     transaction (xmin) of their own;
                   - audit and tables agree: every row that differs from the seed holds the
                     `after` of its latest audit record (on PostgreSQL: written by that record's
                     transaction), every audited change is in its table, and every queue entry
                     has the queueing audit record of its run and object (on PostgreSQL: from
                     the same transaction);
                   - the lease: right after the kill the run reads `running`; once its lease has
                     run out (the database's clock past lease_until) it reads `failed`,
                     interrupted, while the ledger still stores `running` (reading records
                     nothing); the next apply records it as failed, failed_by its own run id
                     (the final apply also names it in interrupted_runs).
  final apply    one more apply, not killed: it must finish; then a further apply must change
                 nothing (rows byte for byte, audit and queue counts), and the runs together
                 must have had the effect of the uninterrupted run (the same rows changed, the
                 same audit records by action and the same audited values but timestamps).
  rollback       `integrity rollback --run-id R --apply` for every remediation run, newest
                 first: each undoes exactly its run's audited changes (none skipped), a run with
                 no audit records (killed before its first commit) is a no-op that exits 0; then
                 every row must equal the seed byte for byte (on PostgreSQL, in its text form).

Figures are printed as a table per database (and written with --json); the exit status is 1 if
any check failed. Each command runs as `python -m integrity.cli` with INTEGRITY_ALLOW_WRITES=1
and the database URL in INTEGRITY_DB_URL (kept out of argv).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(Path(__file__).resolve().parent), str(REPO)]

import remediate_throughput as world_kit  # noqa: E402  (the world, seeding, schema reset, dumps)

from integrity import schema, settings  # noqa: E402
from integrity.diff import DiffOptions  # noqa: E402
from integrity.reconcile import reconcile  # noqa: E402
from integrity.remediation import RemediationOptions, ledger, plan_remediation  # noqa: E402
from integrity.remediation.apply import plan_batches  # noqa: E402
from integrity.remediation.rows import same_value  # noqa: E402
from integrity.spec import load_spec  # noqa: E402
from integrity.storage.local import LocalStorage  # noqa: E402
from integrity_tests.remediation_worker import wait_for_lease_to_run_out  # noqa: E402

DB_URL_ENV = world_kit.DB_URL_ENV
REFERENCE_TABLES = world_kit.REFERENCE_TABLES
PLAN_ACTION = {  # audit action -> the plan action of its batch
    "mark_error": "mark_error",
    "create_job": "requeue",
    "reset_job": "requeue",
    "requeue": "requeue",
    "retry_job": "retry",
    "fix_progress": "fix_progress",
}
QUEUE_ACTIONS = {"create_job", "reset_job", "requeue", "retry_job"}
LEASE_SLACK = 0.5  # seconds past the lease within which a killed run must read as interrupted


@dataclass
class Database:
    name: str  # sqlite | postgres
    url: str
    engine: sa.Engine
    journal: Path | None = None  # SQLite's rollback journal: present while a write is open

    @property
    def postgres(self) -> bool:
        return self.name == "postgres"


# --------------------------------------------------------------------------- the commands


def child_env(db: Database, application_name: str, lease: float) -> dict[str, str]:
    url = sa.make_url(db.url)
    if db.postgres:  # so that pg_stat_activity tells its connection apart
        url = url.update_query_dict({"application_name": application_name})
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("INTEGRITY_", "AWS_"))}
    return {
        **clean,
        settings.ENV_DB_URL: url.render_as_string(hide_password=False),
        settings.ENV_ALLOW_WRITES: "1",
        settings.ENV_RUN_LEASE: f"{lease:g}",
        "PGTZ": "UTC",
    }


def apply_argv(storage_dir: Path, batch_size: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "integrity.cli",
        "reconcile",
        "--apply",
        "--json",
        "--storage-dir",
        str(storage_dir),
        "--batch-size",
        str(batch_size),
        "--force",  # the planted drift is far above the circuit breaker's 20% on purpose
        "--min-age",
        "0s",  # the orphans were uploaded seconds ago
    ]


def run_command(argv: list[str], env: dict[str, str]) -> tuple[int, dict[str, Any], str]:
    """(exit status, the --json summary, stderr)."""
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    try:
        summary = json.loads(done.stdout)
    except ValueError:
        summary = {}
    return done.returncode, summary, done.stderr


def apply_once(db: Database, storage_dir: Path, args: argparse.Namespace, name: str) -> dict:
    code, summary, err = run_command(
        apply_argv(storage_dir, args.batch_size), child_env(db, name, args.lease)
    )
    if code != 0:
        raise SystemExit(f"{db.name}: the {name} apply exited {code}: {err[-2000:]}")
    return summary


# --------------------------------------------------------------------------- the ledger


def stored_runs(engine: sa.Engine) -> dict[str, dict[str, Any]]:
    """The runs table as stored (not as read: a dead run's row still says `running`)."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(ledger.RUNS_TABLE):
            return {}
        query = sa.select(ledger.remediation_runs).order_by(ledger.remediation_runs.c.started_at)
        return {r["run_id"]: dict(r) for r in conn.execute(query).mappings()}


def read_run(engine: sa.Engine, run_id: str) -> dict[str, Any]:
    """The run as every reader sees it (`integrity rollback --list`, the remediate job)."""
    with engine.connect() as conn:
        [run] = ledger.read_runs(conn, ledger.remediation_runs.c.run_id == run_id)
        run["lease_left"] = (run["lease_until"] - ledger.db_now(conn)).total_seconds()
    return run


def live_records(db: Database) -> list[dict[str, Any]]:
    """Audit records of remediation runs not rolled back, in id order; tx: PostgreSQL's xmin."""
    tx = "xmin::text" if db.postgres else "NULL"
    with db.engine.connect() as conn:
        if not sa.inspect(conn).has_table(ledger.AUDIT_TABLE):
            return []
        return [
            dict(r)
            for r in conn.execute(
                sa.text(
                    f"SELECT id, run_id, {tx} AS tx, action, table_name, row_key, object_key, "
                    "before, after FROM integrity_audit "
                    "WHERE rolled_back_by IS NULL AND action <> 'rollback' ORDER BY id"
                )
            ).mappings()
        ]


def audit_by_action(records: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for record in records:
        out[record["action"]] = out.get(record["action"], 0) + 1
    return dict(sorted(out.items()))


def effect(records: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """What the records did, timestamps aside: (action, table, row) -> the values written."""
    return {
        (r["action"], r["table_name"], r["row_key"]): {
            column: value
            for column, value in (ledger.load_values(r["after"]) or {}).items()
            if not isinstance(value, datetime)
        }
        for r in records
    }


def planned_batches(db: Database, storage_dir: Path, batch_size: int) -> list[set[tuple]]:
    """The (table, row) of the audit records each batch of the next apply will write, in order.

    A reconcile of the state the apply starts from, planned and cut into batches by the code the
    CLI runs; an upload already waiting in the queue is counted already_queued, not audited.
    """
    report = reconcile(
        LocalStorage(storage_dir), db.engine, load_spec(None), DiffOptions(min_age=timedelta(0))
    )
    options = RemediationOptions(dry_run=False, force=True, batch_size=batch_size)
    plan = plan_remediation(report, options)
    with db.engine.connect() as conn:
        waiting: set[str] = set()
        if sa.inspect(conn).has_table(ledger.QUEUE_TABLE):
            query = sa.select(ledger.queue.c.object_key).where(
                ledger.queue.c.state.in_(ledger.WAITING_STATES)
            )
            waiting = set(conn.execute(query).scalars())
    return [
        {
            (table, str(row))
            for table, row, action, key in zip(
                batch["table"], batch["row_id"], batch["action"], batch["key"]
            )
            if not (action in ("requeue", "retry") and key in waiting)
        }
        for batch in plan_batches(plan, batch_size)
    ]


def check_batches(
    db: Database,
    records: list[dict[str, Any]],
    planned: dict[str, list[set[tuple]]],
    committed: dict[str, int],
) -> tuple[list[str], dict[str, int]]:
    """Every run wrote whole batches only, in plan order: (problems, whole batches by run)."""
    problems: list[str] = []
    whole: dict[str, int] = {}
    by_run: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_run.setdefault(record["run_id"], []).append(record)
    for run_id in set(by_run) - set(planned):
        problems.append(f"run {run_id}: audit records of a run no apply was started for")
    for run_id, batches in planned.items():
        mine, done = by_run.get(run_id, []), committed.get(run_id, 0)
        if done > len(batches):
            problems.append(f"run {run_id}: {done} batches committed, {len(batches)} planned")
        position, seen_tx, good = 0, set(), 0
        for number, want in enumerate(batches[:done], start=1):
            got = mine[position : position + len(want)]
            position += len(want)
            keys = {(r["table_name"], r["row_key"]) for r in got}
            if keys != want:
                problems.append(
                    f"run {run_id} batch {number}: {len(keys & want)} of its {len(want)} planned "
                    f"records, {len(keys - want)} others"
                )
                continue
            if db.postgres and got:
                txs = {r["tx"] for r in got}
                if len(txs) != 1 or txs & seen_tx:
                    problems.append(f"run {run_id} batch {number}: transactions {sorted(txs)}")
                    continue
                seen_tx |= txs
            good += 1
        if position != len(mine):
            problems.append(
                f"run {run_id}: {len(mine) - position} audit records beyond its {done} "
                "committed batches (part of a batch is visible)"
            )
        whole[run_id] = good
    return problems, whole


def check_tables(
    db: Database, seed: dict[str, dict[str, Any]], records: list[dict[str, Any]]
) -> tuple[list[str], dict[str, int]]:
    """Audit and tables agree row for row, and queue entries with their records: (problems,
    figures)."""
    problems: list[str] = []
    changed = world_kit.differing_rows(seed, world_kit.dump(db.engine))
    tx = "xmin::text" if db.postgres else "NULL"
    current: dict[tuple[str, str], dict[str, Any]] = {}
    with db.engine.connect() as conn:
        for table, key in REFERENCE_TABLES.items():
            for row in conn.execute(sa.text(f"SELECT {tx} AS tx, * FROM {table}")).mappings():
                current[(table, str(row[key]))] = dict(row)
        queued = set()
        if sa.inspect(conn).has_table(ledger.QUEUE_TABLE):
            queued = {
                tuple(q)
                for q in conn.execute(
                    sa.text(f"SELECT {tx}, run_id, object_key FROM integrity_queue")
                )
            }
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        if record["before"] != record["after"]:
            latest[(record["table_name"], record["row_key"])] = record
    for where, record in latest.items():
        row = current.get(where)
        if row is None:
            problems.append(f"{where}: audited ({record['action']}) but the row is missing")
            continue
        if db.postgres and row["tx"] != record["tx"]:
            problems.append(f"{where}: row written by tx {row['tx']}, audit by {record['tx']}")
        for column, value in (ledger.load_values(record["after"]) or {}).items():
            if not same_value(row[column], value, timestamp=isinstance(value, datetime)):
                problems.append(
                    f"{where}.{column}: {row[column]!r} in the table, {value!r} audited"
                )
    unaudited = changed - set(latest)
    if unaudited:
        problems.append(
            f"{len(unaudited)} rows changed without an audit record: {sorted(unaudited)[:3]}"
        )
    if len(latest) != len(changed):
        problems.append(f"{len(latest)} rows audited as changed, {len(changed)} differ")
    queueing = {
        (r["tx"], r["run_id"], r["object_key"]) for r in records if r["action"] in QUEUE_ACTIONS
    }
    strays = queued - queueing
    if strays:
        problems.append(
            f"{len(strays)} queue entries without their audit record: {sorted(strays)[:3]}"
        )
    if len(queued) != len(queueing):
        problems.append(f"{len(queued)} queue entries for {len(queueing)} queueing records")
    return problems, {
        "audit_records": len(records),
        "audit_changes": sum(1 for r in records if r["before"] != r["after"]),
        "changed_rows": len(changed),
        "queue_entries": len(queued),
    }


# --------------------------------------------------------------------------- one kill


def transaction_open(db: Database, application_name: str) -> str:
    """Whether the child was inside a write transaction, as the database shows it."""
    if not db.postgres:
        assert db.journal is not None
        return "write open (journal)" if db.journal.exists() else "no write open"
    with db.engine.connect() as conn:
        states = conn.execute(
            sa.text("SELECT state FROM pg_stat_activity WHERE application_name = :name"),
            {"name": application_name},
        ).scalars()
        busy = [s for s in states if s != "idle"]
    return busy[0] if busy else "idle"


def wait_gone(db: Database, application_name: str, timeout: float = 30.0) -> None:
    """PostgreSQL ends (and rolls back) a killed client's backend once it sees the socket close.
    (SQLite's next reader rolls the hot journal back.)"""
    if not db.postgres:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db.engine.connect() as conn:
            left = conn.execute(
                sa.text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"),
                {"name": application_name},
            ).scalar_one()
        if not left:
            return
        time.sleep(0.02)
    raise SystemExit(f"the backend of {application_name} is still there after {timeout:.0f}s")


def kill_once(
    db: Database,
    args: argparse.Namespace,
    storage_dir: Path,
    number: int,
    window_ms: float,
    rng: random.Random,
) -> dict[str, Any]:
    name = f"integrity-kill-{number}"
    known = set(stored_runs(db.engine))
    offset_ms = rng.uniform(0, window_ms)
    started = time.monotonic()
    process = subprocess.Popen(
        apply_argv(storage_dir, args.batch_size),
        cwd=REPO,
        env=child_env(db, name, args.lease),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run_id = None
    applying_at = first_write_at = None
    at_kill = None
    first_write = sa.text("SELECT 1 FROM integrity_audit WHERE run_id = :run LIMIT 1")
    try:
        while process.poll() is None and run_id is None:
            fresh = set(stored_runs(db.engine)) - known
            run_id = next(iter(fresh)) if fresh else None
            if run_id is None:
                time.sleep(0.003)
        applying_at = time.monotonic()
        while process.poll() is None and time.monotonic() < applying_at + offset_ms / 1000:
            if first_write_at is None:
                with db.engine.connect() as conn:
                    if conn.execute(first_write, {"run": run_id}).first():
                        first_write_at = time.monotonic()
            time.sleep(min(0.002, max(0.0, applying_at + offset_ms / 1000 - time.monotonic())))
        if process.poll() is None:
            at_kill = transaction_open(db, name)
            process.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
    finally:
        if process.poll() is None and run_id is None:
            process.kill()
        _, err = process.communicate(timeout=60)
    killed = process.returncode == -signal.SIGKILL
    if not killed and process.returncode != 0:
        raise SystemExit(f"{db.name}: apply {number} exited {process.returncode}: {err[-2000:]}")
    wait_gone(db, name)
    result: dict[str, Any] = {
        "kill": number,
        "killed": killed,
        "window_ms": round(window_ms, 1),
        "first_write_ms": (
            round((first_write_at - applying_at) * 1000, 1) if first_write_at else None
        ),
        "at_ms_after_apply_start": round((killed_at - applying_at) * 1000, 1) if killed else None,
        "at_ms_after_process_start": round((killed_at - started) * 1000, 1) if killed else None,
        "transaction_at_kill": at_kill,
        "run_id": run_id,
        "batches_committed": stored_runs(db.engine)[run_id]["batches"] if run_id else 0,
    }
    if killed and run_id:
        right_after = read_run(db.engine, run_id)
        result["read_right_after_kill"] = right_after["state"]
        result["lease_left_at_kill_s"] = round(right_after["lease_left"], 3)
    return result


def watch_lease(db: Database, result: dict[str, Any], killed_at: float, lease: float) -> list[str]:
    """Wait for the killed run's lease to run out: within the lease of the kill, it must read
    failed and interrupted."""
    run_id = result["run_id"]
    wait_for_lease_to_run_out(db.engine, run_id)
    seen = read_run(db.engine, run_id)
    result["seconds_until_failed"] = round(time.monotonic() - killed_at, 3)
    result["read_after_lease"] = "failed, interrupted" if seen["interrupted"] else seen["state"]
    result["stored_after_lease"] = stored_runs(db.engine)[run_id]["state"]
    problems = []
    if result["seconds_until_failed"] > lease + LEASE_SLACK:
        problems.append(f"read as failed only {result['seconds_until_failed']}s after the kill")
    if result["read_right_after_kill"] != "running":
        problems.append(f"read {result['read_right_after_kill']!r} right after the kill")
    if (seen["state"], seen["interrupted"]) != ("failed", True):
        problems.append(
            f"read {seen['state']!r} (interrupted {seen['interrupted']}) past its lease"
        )
    if result["stored_after_lease"] != "running":
        problems.append(f"stored as {result['stored_after_lease']!r} before any apply recorded it")
    return problems


# --------------------------------------------------------------------------- one database


def run_database(
    db: Database, args: argparse.Namespace, world: dict[str, Any], storage_dir: Path
) -> dict[str, Any]:
    rng = random.Random(args.seed)
    engine = db.engine
    failures: list[str] = []
    planned: dict[str, list[set[tuple]]] = {}

    def check(stage: str, problems: list[str]) -> bool:
        failures.extend(f"{db.name} {stage}: {p}" for p in problems)
        return not problems

    def new_run(before: set[str]) -> str:
        [run_id] = set(stored_runs(engine)) - before
        return run_id

    def verify(stage: str) -> tuple[bool, dict[str, Any]]:
        records = live_records(db)
        committed = {r: run["batches"] for r, run in stored_runs(engine).items()}
        batch_problems, whole = check_batches(db, records, planned, committed)
        table_problems, figures = check_tables(db, seed, records)
        ok = check(stage, batch_problems + table_problems)
        return ok, {**figures, "whole_batches": whole, "records": records}

    out: dict[str, Any] = {"database": db.name}
    with engine.connect() as conn:
        out["server_version"] = (
            conn.execute(sa.text("SHOW server_version")).scalar_one()
            if db.postgres
            else conn.execute(sa.text("SELECT sqlite_version()")).scalar_one()
        )

    # -- the uninterrupted reference
    world_kit.reset_schema(engine)
    world_kit.seed_database(engine, world)
    seed = world_kit.dump(engine)
    before = set(stored_runs(engine))
    batches = planned_batches(db, storage_dir, args.batch_size)
    started = time.monotonic()
    summary = apply_once(db, storage_dir, args, "reference")
    seconds = time.monotonic() - started
    ref_id = new_run(before)
    planned[ref_id] = batches
    ref_run = stored_runs(engine)[ref_id]
    ref_apply_seconds = (ref_run["finished_at"] - ref_run["started_at"]).total_seconds()
    _, ref = verify("uninterrupted")
    expected = world["expected_counts"]
    got = {name: summary[name] for name in expected}
    check("uninterrupted", [] if got == expected else [f"counts {got}, planted {expected}"])
    reference = {
        "seconds": round(seconds, 2),
        "apply_seconds": round(ref_apply_seconds, 2),
        "batches": ref_run["batches"],
        "batches_planned": len(batches),
        "audit_by_action": audit_by_action(ref["records"]),
        "changed_rows": ref["changed_rows"],
        "audit_records": ref["audit_records"],
        "updated": summary["updated"],
    }
    ref_effect = effect(ref["records"])
    out["uninterrupted"] = reference
    per_batch_ms = ref_apply_seconds * 1000 / max(1, ref_run["batches"])
    print(
        f"{db.name}: uninterrupted apply: {ref_run['batches']} batches in "
        f"{ref_apply_seconds:.2f}s ({per_batch_ms:.1f} ms a batch), "
        f"{ref['audit_records']} audit records, {ref['changed_rows']} rows changed",
        flush=True,
    )
    planned.clear()

    # -- the kills, on a fresh seed
    world_kit.reset_schema(engine)
    world_kit.seed_database(engine, world)
    check("seed", [] if world_kit.dump(engine) == seed else ["the second seed differs"])
    kills: list[dict[str, Any]] = []
    # A run first re-queues nothing for the uploads earlier runs queued (batches with no
    # audit record), then writes: the window is that prefix (as the last run took it) plus a
    # share of the writes left that leaves work for the kills to come.
    prefix_ms = 0.0
    previous: dict[str, Any] | None = None
    for number in range(1, args.kills + 1):
        left = reference["audit_records"] - len(live_records(db))
        remaining = max(1, -(-left // args.batch_size))
        share = remaining * per_batch_ms * 2 / (args.kills - number + 2)
        batches = planned_batches(db, storage_dir, args.batch_size)
        result = kill_once(db, args, storage_dir, number, prefix_ms + share, rng)
        killed_at = time.monotonic()
        prefix_ms = result["first_write_ms"] or prefix_ms
        if result["run_id"]:
            planned[result["run_id"]] = batches
        result["batches_planned"] = len(batches)
        if previous is not None:
            _recorded_by(engine, previous, result["run_id"], check, f"kill {previous['kill']}")
        agree, figures = verify(f"kill {number}")
        lease_ok = True
        if result["killed"]:
            lease_ok = check(f"kill {number}", watch_lease(db, result, killed_at, args.lease))
        result.update(
            audit_records_of_run=sum(
                1 for r in figures["records"] if r["run_id"] == result["run_id"]
            ),
            whole_batches=figures["whole_batches"].get(result["run_id"], 0),
            audit_records=figures["audit_records"],
            changed_rows=figures["changed_rows"],
            agree=agree,
            lease_ok=lease_ok,
        )
        kills.append(result)
        previous = result if result["killed"] else None
        print(f"{db.name} {_kill_line(result)}", flush=True)
    out["kills"] = kills
    killed = sum(k["killed"] for k in kills)
    if killed < min(5, args.kills):
        check("kills", [f"only {killed} runs were killed mid-apply"])

    # -- a final apply converges; a further one changes nothing
    before = set(stored_runs(engine))
    batches = planned_batches(db, storage_dir, args.batch_size)
    final = apply_once(db, storage_dir, args, "final")
    planned[new_run(before)] = batches
    named = [r["run_id"] for r in final["interrupted_runs"]]
    if previous is not None:
        _recorded_by(engine, previous, final["run_id"], check, f"kill {previous['kill']}")
        check("final apply", [] if named == [previous["run_id"]] else [f"named {named}"])
    _, after_final = verify("final apply")
    settled, settled_ledger = world_kit.dump(engine), world_kit.ledger_counts(engine)
    before = set(stored_runs(engine))
    batches = planned_batches(db, storage_dir, args.batch_size)
    further = apply_once(db, storage_dir, args, "further")
    planned[new_run(before)] = batches
    records = live_records(db)
    converged = {
        "final_batches": final["batches"],
        "final_updated": final["updated"],
        "final_named_interrupted": named,
        "further_rows_differing": len(world_kit.differing_rows(settled, world_kit.dump(engine))),
        "further_ledger_before": settled_ledger,
        "further_ledger_after": world_kit.ledger_counts(engine),
        "further_updated": further["updated"],
        "further_already_queued": further["already_queued"],
        "audit_by_action": audit_by_action(records),
        "changed_rows": after_final["changed_rows"],
        "same_as_uninterrupted": effect(records) == ref_effect
        and after_final["changed_rows"] == reference["changed_rows"],
    }
    out["convergence"] = converged
    if (
        converged["further_rows_differing"]
        or further["updated"]
        or settled_ledger != converged["further_ledger_after"]
    ):
        check("further apply", [f"it changed something: {converged}"])
    if not converged["same_as_uninterrupted"]:
        check(
            "convergence",
            [
                f"killed runs + final apply wrote {converged['audit_by_action']} / "
                f"{after_final['changed_rows']} rows; the uninterrupted run "
                f"{reference['audit_by_action']} / {reference['changed_rows']}"
            ],
        )

    # -- roll back every remediation run, newest first
    runs = stored_runs(engine)
    out["rollback"] = rollback_all(db, args, runs, records, check)
    diff = world_kit.differing_rows(seed, world_kit.dump(engine))
    out["rollback"]["rows_differing_from_seed"] = len(diff)
    check("rollback", [f"{len(diff)} rows unlike the seed: {sorted(diff)[:3]}"] if diff else [])
    out["ledger_states"] = {
        r: (run["state"], run["failed_by"]) for r, run in stored_runs(engine).items()
    }
    latencies = [k["seconds_until_failed"] for k in kills if k["killed"]]
    out["seconds_until_failed"] = {
        "lease": args.lease,
        "median": round(statistics.median(latencies), 3) if latencies else None,
        "max": max(latencies) if latencies else None,
    }
    if not args.keep:
        ledger.metadata.drop_all(engine)
        schema.drop_reference_schema(engine)
    out["failures"] = failures
    out["all_checks_passed"] = not failures
    return out


def _recorded_by(engine: sa.Engine, killed: dict[str, Any], by: str | None, check, stage) -> None:
    """The apply after a kill records the killed run as failed, with failed_by its own run id."""
    run = stored_runs(engine)[killed["run_id"]]
    killed["recorded_by_next"] = (run["state"], run["failed_by"]) == ("failed", by)
    if not killed["recorded_by_next"]:
        check(stage, [f"stored {run['state']!r} failed_by {run['failed_by']!r}, not by {by}"])


def rollback_all(
    db: Database,
    args: argparse.Namespace,
    runs: dict[str, dict[str, Any]],
    records: list[dict[str, Any]],
    check,
) -> dict[str, Any]:
    """`integrity rollback --run-id R --apply` for every remediation run, newest first: each
    undoes exactly what its run audited; one with no audit records is a no-op that exits 0."""
    audited = {r["run_id"] for r in records}
    remediations = [r for r, run in runs.items() if run["kind"] == "remediate"]
    # A run that completed without a change said so ("nothing to undo"); rolling it back is an
    # error (check the run id). A killed one is rolled back whatever it did: a no-op if nothing.
    idle = [r for r in remediations if runs[r]["state"] == "completed" and r not in audited]
    remediations = [r for r in remediations if r not in idle]
    with db.engine.connect() as conn:
        queued = dict(
            conn.execute(
                sa.text("SELECT run_id, count(*) FROM integrity_queue GROUP BY run_id")
            ).all()
        )
    totals = dict.fromkeys(("restored", "removed", "unchanged", "queue_cancelled"), 0)
    no_ops = 0
    for run_id in reversed(remediations):
        mine = [r for r in records if r["run_id"] == run_id]
        changes = sum(1 for r in mine if r["before"] != r["after"])
        argv = [sys.executable, "-m", "integrity.cli", "rollback", "--run-id", run_id]
        code, done, err = run_command(
            [*argv, "--apply", "--json"], child_env(db, "integrity-rollback", args.lease)
        )
        if code != 0:
            check("rollback", [f"run {run_id} ({len(mine)} records): exit {code}: {err[-300:]}"])
            continue
        no_ops += bool(done["nothing_to_undo"])
        for name in totals:
            totals[name] += done[name]
        want = {
            "nothing_to_undo": not mine,
            "undone": changes,
            "unchanged": len(mine) - changes,
            "skipped_changed": 0,
            "queue_cancelled": queued.get(run_id, 0),
        }
        have = {
            "nothing_to_undo": done["nothing_to_undo"],
            "undone": done["restored"] + done["removed"],
            **{k: done[k] for k in ("unchanged", "skipped_changed", "queue_cancelled")},
        }
        if have != want:
            check("rollback", [f"run {run_id}: {have}, its records say {want}"])
    return {
        "runs_rolled_back": len(remediations),
        "of_which_no_ops": no_ops,
        "completed_runs_without_changes": len(idle),
        **totals,
    }


# --------------------------------------------------------------------------- the whole run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db-url", default=os.environ.get(DB_URL_ENV), help=f"(env {DB_URL_ENV})")
    parser.add_argument("--databases", help="comma list of sqlite, postgres")
    parser.add_argument("--rows", type=int, default=4000, help="rows whose objects are missing")
    parser.add_argument("--healthy", type=int, default=2000, help="rows that are fine")
    parser.add_argument("--kills", type=int, default=8, help="per database")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--lease", type=float, default=2.0, help="INTEGRITY_RUN_LEASE_SECONDS")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--keep", action="store_true", help="leave the tables in the database")
    args = parser.parse_args(argv)
    names = (args.databases or ("sqlite,postgres" if args.db_url else "sqlite")).split(",")
    if set(names) - {"sqlite", "postgres"} or not names:
        parser.error(f"--databases: a comma list of sqlite and postgres, not {args.databases!r}")
    if "postgres" in names:
        if not args.db_url or not args.db_url.startswith("postgresql"):
            parser.error(f"--db-url (or {DB_URL_ENV}): a PostgreSQL URL is needed for postgres")
        if sa.make_url(args.db_url).database in world_kit.RESERVED_DATABASES:
            parser.error("--db-url: refusing to empty a shared database; name a scratch one")
    if args.kills < 1 or args.lease <= 0:
        parser.error("--kills: at least 1; --lease: above 0")

    world = world_kit.build_world(args.rows, args.healthy, args.seed, datetime.now(timezone.utc))
    out: dict[str, Any] = {
        "rows": args.rows,
        "healthy": args.healthy,
        "batch_size": args.batch_size,
        "kills_per_database": args.kills,
        "lease_seconds": args.lease,
        "seed": args.seed,
        "world": world_kit.world_sizes(world),
        "databases": {},
    }
    with tempfile.TemporaryDirectory(prefix="integrity-kill-") as scratch:
        storage_dir = Path(scratch) / world_kit.BUCKET  # a directory's name is its bucket
        storage_dir.mkdir()
        world_kit.seed_local(world, storage_dir)
        for name in names:
            if name == "sqlite":
                path = Path(scratch) / "kill.sqlite"
                url = f"sqlite:///{path}"
                db = Database(name, url, sa.create_engine(url), Path(f"{path}-journal"))
            else:
                engine = sa.create_engine(args.db_url, connect_args={"options": "-c TimeZone=UTC"})
                db = Database(name, args.db_url, engine)
            try:
                out["databases"][name] = run_database(db, args, world, storage_dir)
            finally:
                db.engine.dispose()
    failures = [f for figures in out["databases"].values() for f in figures["failures"]]
    out["all_checks_passed"] = not failures
    for figures in out["databases"].values():
        print()
        print(_table(figures))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")
    for failure in failures:
        print(f"CHECK FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


def _kill_line(k: dict[str, Any]) -> str:
    if not k["killed"]:
        return f"kill {k['kill']}: the run finished before its kill point"
    return (
        f"kill {k['kill']}: at {k['at_ms_after_apply_start']:.0f} ms into the apply "
        f"({k['transaction_at_kill']}), {k['batches_committed']} of {k['batches_planned']} "
        f"batches committed, {k['whole_batches']} whole; read {k['read_right_after_kill']}, then "
        f"{k['read_after_lease']} after {k['seconds_until_failed']:.2f}s; audit and tables "
        f"{'agree' if k['agree'] else 'DISAGREE'}"
    )


def _table(out: dict[str, Any]) -> str:
    header = (
        "kill",
        "ms into apply",
        "transaction at kill",
        "batches committed",
        "whole",
        "its audit rows",
        "audit rows",
        "changed rows",
        "agree",
        "read after kill",
        "s until failed",
        "recorded by next",
    )
    lines = [header]
    for k in out["kills"]:
        lines.append(
            (
                str(k["kill"]),
                f"{k['at_ms_after_apply_start']:.0f}" if k["killed"] else "finished",
                str(k["transaction_at_kill"] or "-"),
                f"{k['batches_committed']}/{k['batches_planned']}",
                str(k["whole_batches"]),
                str(k["audit_records_of_run"]),
                str(k["audit_records"]),
                str(k["changed_rows"]),
                "yes" if k["agree"] else "NO",
                str(k.get("read_right_after_kill", "-")),
                f"{k['seconds_until_failed']:.2f}" if k["killed"] else "-",
                {True: "yes", False: "NO", None: "-"}[k.get("recorded_by_next")],
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    text = [f"{out['database']} ({out['server_version']})"]
    text += ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in lines]
    c, r, ref = out["convergence"], out["rollback"], out["uninterrupted"]
    lease = out["seconds_until_failed"]
    text += [
        "(batches committed: the run's own count in the ledger, of those planned for it; whole:"
        " those whose audit records are exactly the planned ones; its audit rows: the run's"
        " records; audit rows and changed rows: totals so far, changed rows being the rows that"
        " differ from the seed; read after kill: the run as read right after the kill, then"
        " failed and interrupted once its lease ran out, that many seconds after the kill;"
        " recorded by next: the next apply stored it as failed, by its own run id)",
        "",
        f"uninterrupted apply: {ref['batches']} batches, {ref['audit_records']} audit records, "
        f"{ref['changed_rows']} rows changed",
        f"lease {lease['lease']:g} s: a killed run read as failed after {lease['median']} s "
        f"(median), {lease['max']} s at most",
        f"final apply: {c['final_batches']} batches, named {c['final_named_interrupted']} as "
        f"interrupted; then a further apply: {c['further_rows_differing']} rows differ, ledger "
        f"{c['further_ledger_before']} -> {c['further_ledger_after']}; same effect as the "
        f"uninterrupted run: {'yes' if c['same_as_uninterrupted'] else 'NO'}",
        f"rollback of {r['runs_rolled_back']} runs ({r['of_which_no_ops']} killed before any "
        f"audit record: no-ops; {r['completed_runs_without_changes']} more completed without a "
        f"change): {r['restored']} restored, {r['removed']} removed, {r['queue_cancelled']} "
        f"queue entries cancelled; {r['rows_differing_from_seed']} rows differ from the seed",
        f"all checks passed: {'yes' if out['all_checks_passed'] else 'NO'}",
    ]
    return "\n".join(text)


if __name__ == "__main__":
    sys.exit(main())
