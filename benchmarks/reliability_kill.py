#!/usr/bin/env python
"""SIGKILL `integrity reconcile --apply` at random points on PostgreSQL, and check what is left.

    python benchmarks/reliability_kill.py --db-url postgresql+psycopg://postgres@127.0.0.1:5432/NAME
    python benchmarks/reliability_kill.py --kills 8 --rows 4000 --seed 7 --json results.json

The database (also read from INTEGRITY_BENCH_DB_URL) is emptied first: its reference tables and
integrity's ledger are dropped and the world of benchmarks/remediate_throughput.py is seeded
(rows whose objects are missing, orphan uploads, stuck jobs, plans behind, controls), with its
objects in a local storage directory. Then:

  uninterrupted  one `integrity reconcile --apply` on a fresh seed: its batches, audit records
                 and changed rows are the reference, and its duration sets the kill windows.
  kills          the world is seeded again; K times, `integrity reconcile --apply` is started
                 in a subprocess and SIGKILLed a random number of ms after its run appears in
                 the ledger (uniform in a window that leaves work for the kills to come). Just
                 before the kill, pg_stat_activity says whether its connection was inside a
                 transaction. After each kill:
                   - every audit record's transaction (PostgreSQL's xmin) is one batch: one
                     action on one table, at most --batch-size records;
                   - every row that differs from the seed has an audit record, its values are
                     the record's `after`, and it was written by the same transaction as the
                     record (row xmin == audit xmin); every audit record's change is in the
                     table; every queue entry was committed with its audit record: so a
                     committed batch is fully audited and no partial batch is visible;
                   - the killed run's state and `batches` are read from the ledger as they are.
  final apply    one more apply, not killed: it must finish; then a further apply must change
                 nothing (rows byte for byte, audit and queue counts), and the runs together
                 must have written what the uninterrupted run wrote (audit records by action,
                 changed rows).
  rollback       `integrity rollback --run-id R --apply` for every run, newest first: every
                 row must equal the seed byte for byte (PostgreSQL's text form of each row).

Figures are printed as a table (and written with --json); the exit status is 1 if any check
failed. Each command runs as `python -m integrity.cli` with INTEGRITY_ALLOW_WRITES=1 and the
database URL in INTEGRITY_DB_URL (kept out of argv).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import remediate_throughput as world_kit  # noqa: E402  (the world, seeding, schema reset)

REPO = Path(__file__).resolve().parent.parent
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


# --------------------------------------------------------------------------- the commands


def child_env(db_url: str, application_name: str) -> dict[str, str]:
    import sqlalchemy as sa

    url = sa.make_url(db_url).update_query_dict({"application_name": application_name})
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("INTEGRITY_", "AWS_"))}
    return {
        **clean,
        "INTEGRITY_DB_URL": url.render_as_string(hide_password=False),
        "INTEGRITY_ALLOW_WRITES": "1",
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


def run_command(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv[2:5])} exited {done.returncode}: {done.stderr[-2000:]}")
    return json.loads(done.stdout)


# --------------------------------------------------------------------------- the database


def text_dump(engine: Any) -> dict[str, dict[str, str]]:
    """Every row of the reference tables in PostgreSQL's text form, by key: bytes to compare."""
    import sqlalchemy as sa

    with engine.connect() as conn:
        return {
            table: dict(
                conn.execute(sa.text(f"SELECT t.{key}::text, t::text FROM {table} t")).all()
            )
            for table, key in REFERENCE_TABLES.items()
        }


def differing(a: dict[str, dict[str, str]], b: dict[str, dict[str, str]]) -> set[tuple[str, str]]:
    out = set()
    for table in REFERENCE_TABLES:
        for key in set(a[table]) | set(b[table]):
            if a[table].get(key) != b[table].get(key):
                out.add((table, key))
    return out


def runs(engine: Any) -> list[dict[str, Any]]:
    import sqlalchemy as sa

    from integrity.remediation.ledger import remediation_runs

    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(remediation_runs.name):
            return []
        query = sa.select(remediation_runs).order_by(remediation_runs.c.started_at)
        return [dict(r) for r in conn.execute(query).mappings()]


def ledger_counts(engine: Any) -> dict[str, int]:
    import sqlalchemy as sa

    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("integrity_audit"):
            return {"audit": 0, "queue": 0}
        return {
            "audit": conn.execute(sa.text("SELECT count(*) FROM integrity_audit")).scalar_one(),
            "queue": conn.execute(sa.text("SELECT count(*) FROM integrity_queue")).scalar_one(),
        }


def audit_by_action(engine: Any) -> dict[str, int]:
    import sqlalchemy as sa

    with engine.connect() as conn:
        query = sa.text(
            "SELECT action, count(*) FROM integrity_audit WHERE rolled_back_by IS NULL "
            "AND action <> 'rollback' GROUP BY action"
        )
        return dict(sorted(conn.execute(query).all()))


def audited_runs(engine: Any) -> set[str]:
    import sqlalchemy as sa

    with engine.connect() as conn:
        return set(conn.execute(sa.text("SELECT DISTINCT run_id FROM integrity_audit")).scalars())


def check_ledger(
    engine: Any, seed: dict[str, dict[str, str]], batch_size: int
) -> tuple[list[str], dict[str, Any]]:
    """Audit and tables agree batch for batch: (problems, figures)."""
    import sqlalchemy as sa

    from integrity.remediation.ledger import load_values

    problems: list[str] = []
    now = text_dump(engine)
    changed = differing(seed, now)
    with engine.connect() as conn:
        records = [
            dict(r)
            for r in conn.execute(
                sa.text(
                    "SELECT id, run_id, xmin::text AS tx, action, table_name, key_column, "
                    "row_key, object_key, before, after FROM integrity_audit "
                    "WHERE rolled_back_by IS NULL AND action <> 'rollback' ORDER BY id"
                )
            ).mappings()
        ]
        row_tx: dict[tuple[str, str], str] = {}
        current: dict[tuple[str, str], dict[str, Any]] = {}
        for table, key in REFERENCE_TABLES.items():
            for r in conn.execute(sa.text(f"SELECT xmin::text AS tx, * FROM {table}")).mappings():
                row = dict(r)
                row_tx[(table, str(row[key]))] = row.pop("tx")
                current[(table, str(row[key]))] = row
        queued = list(
            conn.execute(
                sa.text("SELECT xmin::text, run_id, object_key FROM integrity_queue")
            ).all()
        )

    # one transaction = one batch: one action on one table, at most batch_size records
    by_tx: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_tx.setdefault(record["tx"], []).append(record)
    for tx, group in by_tx.items():
        shape = {(PLAN_ACTION[r["action"]], r["table_name"]) for r in group}
        if len(shape) != 1 or len({r["run_id"] for r in group}) != 1:
            problems.append(f"transaction {tx} mixes batches: {sorted(shape)}")
        if len(group) > batch_size:
            problems.append(f"transaction {tx} holds {len(group)} records > {batch_size}")

    # every change is in the table, written by the same transaction as its audit record
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        if record["before"] != record["after"]:
            latest[(record["table_name"], record["row_key"])] = record
    for where, record in latest.items():
        row = current.get(where)
        after = load_values(record["after"])
        if row is None:
            problems.append(f"{where}: audited ({record['action']}) but the row is missing")
            continue
        if row_tx[where] != record["tx"]:
            problems.append(f"{where}: row written by tx {row_tx[where]}, audit by {record['tx']}")
        for column, value in (after or {}).items():
            have = row[column]
            if isinstance(value, datetime) and isinstance(have, datetime):
                same = value.replace(tzinfo=None) == have.replace(tzinfo=None)
            else:
                same = have == value
            if not same:
                problems.append(f"{where}.{column}: {have!r} in the table, {value!r} audited")
    unaudited = changed - set(latest)
    if unaudited:
        problems.append(
            f"{len(unaudited)} rows changed without an audit record: {sorted(unaudited)[:3]}"
        )

    # every queue entry was committed with the audit record of its object
    queue_records = {
        (r["tx"], r["run_id"], r["object_key"]) for r in records if r["action"] in QUEUE_ACTIONS
    }
    strays = [q for q in queued if q not in queue_records]
    if strays:
        problems.append(f"{len(strays)} queue entries without their audit record: {strays[:3]}")
    if len(queued) != len(queue_records):
        problems.append(f"{len(queued)} queue entries for {len(queue_records)} queueing records")

    changes = sum(1 for r in records if r["before"] != r["after"])
    figures = {
        "audit_records": len(records),
        "audit_changes": changes,
        "requeue_only_records": len(records) - changes,
        "changed_rows": len(changed),
        "audited_transactions": len(by_tx),
        "queue_entries": len(queued),
        "transactions_by_run": _count_by(by_tx, lambda group: group[0]["run_id"]),
        "full_transactions": sum(1 for group in by_tx.values() if len(group) == batch_size),
    }
    if changes != len(changed):
        problems.append(f"{changes} audited changes but {len(changed)} rows differ from the seed")
    return problems, figures


def _count_by(groups: dict[str, list[dict[str, Any]]], key: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for group in groups.values():
        out[key(group)] = out.get(key(group), 0) + 1
    return out


def backend_state(engine: Any, application_name: str) -> str | None:
    """The child's connection as PostgreSQL sees it: active, idle in transaction, idle..."""
    import sqlalchemy as sa

    with engine.connect() as conn:
        states = [
            state
            for (state,) in conn.execute(
                sa.text("SELECT state FROM pg_stat_activity WHERE application_name = :name"),
                {"name": application_name},
            )
        ]
    if any(s in ("active", "idle in transaction", "idle in transaction (aborted)") for s in states):
        return next(s for s in states if s != "idle")
    return states[0] if states else None


def wait_gone(engine: Any, application_name: str, timeout: float = 30.0) -> None:
    """PostgreSQL ends (and rolls back) a killed client's backend once it sees the socket close."""
    import sqlalchemy as sa

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            left = conn.execute(
                sa.text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"),
                {"name": application_name},
            ).scalar_one()
        if not left:
            return
        time.sleep(0.02)
    raise SystemExit(f"the backend of {application_name} is still there after {timeout:.0f}s")


# --------------------------------------------------------------------------- one kill


def kill_once(
    engine: Any,
    args: argparse.Namespace,
    storage_dir: Path,
    number: int,
    window_ms: float,
    rng: random.Random,
) -> dict[str, Any]:
    import sqlalchemy as sa

    from integrity.remediation.ledger import remediation_runs

    name = f"integrity-kill-{number}"
    known = {r["run_id"] for r in runs(engine)}
    offset_ms = rng.uniform(0, window_ms)
    started = time.monotonic()
    process = subprocess.Popen(
        apply_argv(storage_dir, args.batch_size),
        cwd=REPO,
        env=child_env(args.db_url, name),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run_id = None
    applying_at = first_write_at = None
    state_at_kill = None
    try:
        while process.poll() is None and run_id is None:
            with engine.connect() as conn:
                if sa.inspect(conn).has_table(remediation_runs.name):
                    ids = conn.execute(sa.select(remediation_runs.c.run_id)).scalars().all()
                    fresh = set(ids) - known
                    run_id = next(iter(fresh)) if fresh else None
            if run_id is None:
                time.sleep(0.003)
        applying_at = time.monotonic()
        first_write = sa.text("SELECT 1 FROM integrity_audit WHERE run_id = :run LIMIT 1")
        while process.poll() is None and time.monotonic() < applying_at + offset_ms / 1000:
            if first_write_at is None:
                with engine.connect() as conn:
                    if conn.execute(first_write, {"run": run_id}).first():
                        first_write_at = time.monotonic()
            time.sleep(min(0.002, max(0.0, applying_at + offset_ms / 1000 - time.monotonic())))
        if process.poll() is None:
            state_at_kill = backend_state(engine, name)
            process.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
    finally:
        if process.poll() is None and run_id is None:
            process.kill()
        out, err = process.communicate(timeout=60)
    killed = process.returncode == -signal.SIGKILL
    if not killed and process.returncode != 0:
        raise SystemExit(f"apply {number} exited {process.returncode}: {err[-2000:]}")
    wait_gone(engine, name)
    [run] = [r for r in runs(engine) if r["run_id"] == run_id] if run_id else [None]
    return {
        "kill": number,
        "killed": killed,
        "window_ms": round(window_ms, 1),
        "first_write_ms": (
            round((first_write_at - applying_at) * 1000, 1) if first_write_at else None
        ),
        "at_ms_after_apply_start": round((killed_at - applying_at) * 1000, 1) if killed else None,
        "at_ms_after_process_start": round((killed_at - started) * 1000, 1) if killed else None,
        "connection_at_kill": state_at_kill,
        "run_id": run_id,
        "ledger_state": run["state"] if run else None,
        "batches_committed": run["batches"] if run else 0,
    }


# --------------------------------------------------------------------------- the whole run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db-url", default=os.environ.get(DB_URL_ENV), help=f"(env {DB_URL_ENV})")
    parser.add_argument("--rows", type=int, default=4000, help="rows whose objects are missing")
    parser.add_argument("--healthy", type=int, default=2000, help="rows that are fine")
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--keep", action="store_true", help="leave the tables in the database")
    args = parser.parse_args(argv)
    if not args.db_url or not args.db_url.startswith("postgresql"):
        parser.error(f"--db-url (or {DB_URL_ENV}): a PostgreSQL URL is needed")

    import sqlalchemy as sa

    url = sa.make_url(args.db_url)
    if url.database in world_kit.RESERVED_DATABASES:
        parser.error(f"--db-url: refusing to empty database {url.database!r}; name a scratch one")
    engine = sa.create_engine(url, connect_args={"options": "-c TimeZone=UTC"})
    rng = random.Random(args.seed)
    base = datetime.now(timezone.utc)
    world = world_kit.build_world(args.rows, args.healthy, args.seed, base)
    failures: list[str] = []
    out: dict[str, Any] = {
        "rows": args.rows,
        "healthy": args.healthy,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "world": world_kit.world_sizes(world),
        "server_version": None,
    }
    with engine.connect() as conn:
        out["server_version"] = conn.execute(sa.text("SHOW server_version")).scalar_one()

    with tempfile.TemporaryDirectory(prefix="integrity-kill-") as scratch:
        storage_dir = Path(scratch) / world_kit.BUCKET  # a directory's name is its bucket
        storage_dir.mkdir()
        world_kit.seed_local(world, storage_dir)

        # -- the uninterrupted reference
        world_kit.reset_schema(engine)
        world_kit.seed_database(engine, world)
        seed = text_dump(engine)
        started = time.monotonic()
        summary = run_command(
            apply_argv(storage_dir, args.batch_size), child_env(args.db_url, "integrity-ref")
        )
        seconds = time.monotonic() - started
        [ref_run] = runs(engine)
        ref_apply_seconds = (ref_run["finished_at"] - ref_run["started_at"]).total_seconds()
        problems, ref_figures = check_ledger(engine, seed, args.batch_size)
        failures += [f"uninterrupted: {p}" for p in problems]
        expected = world["expected_counts"]
        got = {name: summary[name] for name in expected}
        if got != expected:
            failures.append(f"uninterrupted: counts {got}, the planted drift implies {expected}")
        reference = {
            "seconds": round(seconds, 2),
            "apply_seconds": round(ref_apply_seconds, 2),
            "batches": ref_run["batches"],
            "audit_by_action": audit_by_action(engine),
            "changed_rows": ref_figures["changed_rows"],
            "audit_records": ref_figures["audit_records"],
            "updated": summary["updated"],
        }
        out["uninterrupted"] = reference
        per_batch_ms = ref_apply_seconds * 1000 / max(1, ref_run["batches"])
        print(
            f"uninterrupted apply: {ref_run['batches']} batches in {ref_apply_seconds:.2f}s "
            f"({per_batch_ms:.1f} ms a batch), {ref_figures['audit_records']} audit records, "
            f"{ref_figures['changed_rows']} rows changed",
            flush=True,
        )

        # -- the kills, on a fresh seed
        world_kit.reset_schema(engine)
        world_kit.seed_database(engine, world)
        if text_dump(engine) != seed:
            failures.append("the second seed differs from the first")
        kills = []
        # A run first re-queues nothing for the uploads earlier runs queued (batches with no
        # write), then writes: the window is that prefix (as the last run took it) plus a share
        # of the writes left that leaves work for the kills to come.
        prefix_ms = 0.0
        for number in range(1, args.kills + 1):
            left = reference["audit_records"] - ledger_counts(engine)["audit"]
            remaining = max(1, -(-left // args.batch_size))
            share = remaining * per_batch_ms * 2 / (args.kills - number + 2)
            result = kill_once(engine, args, storage_dir, number, prefix_ms + share, rng)
            prefix_ms = result["first_write_ms"] or prefix_ms
            problems, figures = check_ledger(engine, seed, args.batch_size)
            failures += [f"kill {number}: {p}" for p in problems]
            run_tx = figures["transactions_by_run"].get(result["run_id"], 0)
            if run_tx > result["batches_committed"]:
                failures.append(
                    f"kill {number}: {run_tx} audited transactions > "
                    f"{result['batches_committed']} committed batches"
                )
            result.update(
                audited_transactions=run_tx,
                audit_records=figures["audit_records"],
                audit_changes=figures["audit_changes"],
                changed_rows=figures["changed_rows"],
                agree=not problems,
            )
            kills.append(result)
            print(_kill_line(result), flush=True)
        out["kills"] = kills
        if sum(k["killed"] for k in kills) < min(5, args.kills):
            failures.append(f"only {sum(k['killed'] for k in kills)} runs were killed mid-apply")

        # -- a final apply converges; a further one changes nothing
        final = run_command(
            apply_argv(storage_dir, args.batch_size), child_env(args.db_url, "integrity-final")
        )
        problems, after_final = check_ledger(engine, seed, args.batch_size)
        failures += [f"final apply: {p}" for p in problems]
        settled, settled_ledger = text_dump(engine), ledger_counts(engine)
        by_action = audit_by_action(engine)
        further = run_command(
            apply_argv(storage_dir, args.batch_size), child_env(args.db_url, "integrity-further")
        )
        converged = {
            "final_batches": final["batches"],
            "final_updated": final["updated"],
            "further_rows_differing": len(differing(settled, text_dump(engine))),
            "further_ledger_before": settled_ledger,
            "further_ledger_after": ledger_counts(engine),
            "further_updated": further["updated"],
            "further_already_queued": further["already_queued"],
            "audit_by_action": by_action,
            "changed_rows": after_final["changed_rows"],
            "same_as_uninterrupted": by_action == reference["audit_by_action"]
            and after_final["changed_rows"] == reference["changed_rows"],
        }
        out["convergence"] = converged
        if (
            converged["further_rows_differing"]
            or further["updated"]
            or settled_ledger != ledger_counts(engine)
        ):
            failures.append(f"a further apply changed something: {converged}")
        if not converged["same_as_uninterrupted"]:
            failures.append(
                f"killed runs + final apply wrote {by_action} / {after_final['changed_rows']} "
                f"rows; the uninterrupted run {reference['audit_by_action']} / "
                f"{reference['changed_rows']}"
            )

        # -- roll back every run, newest first
        audited = audited_runs(engine)
        remediations = [r for r in runs(engine) if r["kind"] == "remediate"]
        rolled, nothing = [], []
        for run in reversed(remediations):
            if run["run_id"] not in audited:  # killed before its first commit, or no change
                nothing.append(run["run_id"])
                continue
            argv = [sys.executable, "-m", "integrity.cli", "rollback", "--run-id", run["run_id"]]
            rolled.append(run_command([*argv, "--apply", "--json"], child_env(args.db_url, "rb")))
        restored = text_dump(engine)
        diff = differing(seed, restored)
        out["rollback"] = {
            "runs_rolled_back": len(rolled),
            "runs_without_audit_records": len(nothing),
            "restored": sum(r["restored"] for r in rolled),
            "removed": sum(r["removed"] for r in rolled),
            "queue_cancelled": sum(r.get("queue_cancelled", 0) for r in rolled),
            "rows_differing_from_seed": len(diff),
            "runs": rolled,
        }
        if any(r["skipped_changed"] for r in rolled):
            failures.append("rollback skipped rows as changed since their run")
        if diff:
            failures.append(f"rollback left {len(diff)} rows unlike the seed: {sorted(diff)[:3]}")
        out["ledger_states"] = {r["run_id"]: r["state"] for r in runs(engine)}
        if not args.keep:
            from integrity import schema
            from integrity.remediation import ledger

            ledger.metadata.drop_all(engine)
            schema.drop_reference_schema(engine)
    engine.dispose()

    out["failures"] = failures
    out["all_checks_passed"] = not failures
    print()
    print(_table(out))
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
        f"({k['connection_at_kill']}), {k['batches_committed']} batches committed, "
        f"run {k['ledger_state']}; audit and tables {'agree' if k['agree'] else 'DISAGREE'}"
    )


def _table(out: dict[str, Any]) -> str:
    header = (
        "kill",
        "ms into apply",
        "ms from start",
        "connection at kill",
        "batches committed",
        "audited tx",
        "audit rows",
        "audit changes",
        "changed rows",
        "agree",
        "ledger says",
    )
    lines = [header]
    for k in out["kills"]:
        lines.append(
            (
                str(k["kill"]),
                f"{k['at_ms_after_apply_start']:.0f}" if k["killed"] else "finished",
                f"{k['at_ms_after_process_start']:.0f}" if k["killed"] else "-",
                str(k["connection_at_kill"] or "-"),
                str(k["batches_committed"]),
                str(k["audited_transactions"]),
                str(k["audit_records"]),
                str(k["audit_changes"]),
                str(k["changed_rows"]),
                "yes" if k["agree"] else "NO",
                str(k["ledger_state"]),
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    text = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in lines]
    c, r = out["convergence"], out["rollback"]
    ref = out["uninterrupted"]
    text += [
        "(batches committed: the run's own count in the ledger; audited tx: its transactions with"
        " audit records, fewer when batches only found uploads already queued; audit rows, audit"
        " changes and changed rows: totals so far, changes being records whose before differs"
        " from after, and changed rows the rows that differ from the seed)",
        "",
        f"uninterrupted apply: {ref['batches']} batches, {ref['audit_records']} audit records, "
        f"{ref['changed_rows']} rows changed",
        f"final apply: {c['final_batches']} batches; then a further apply: "
        f"{c['further_rows_differing']} rows differ, ledger {c['further_ledger_before']} -> "
        f"{c['further_ledger_after']}; same writes as the uninterrupted run: "
        f"{'yes' if c['same_as_uninterrupted'] else 'NO'}",
        f"rollback of {r['runs_rolled_back']} runs ({r['runs_without_audit_records']} more had "
        f"no audit records): {r['restored']} restored, {r['removed']} removed; "
        f"{r['rows_differing_from_seed']} rows differ from the seed",
        f"all checks passed: {'yes' if out['all_checks_passed'] else 'NO'}",
    ]
    return "\n".join(text)


if __name__ == "__main__":
    sys.exit(main())
