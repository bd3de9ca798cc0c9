"""Rollback: undo a remediation run from its audit records.

Each record holds the changed columns' values before and after. A row is restored only if it
still holds the after values (nobody changed it since), conditionally and under lock like the
forward path, one transaction per batch; rows the run created are removed the same way, and
queue entries not yet delivered are cancelled. The rollback audits itself under its own run id
and marks the records it undid, so rolling back twice changes nothing. A run still alive (its
lease is fresh) is not rolled back; an interrupted one (its process died) is, exactly, and one
that ended before it changed anything (killed before its first commit) rolls back as a no-op.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from integrity import identity
from integrity.clock import utcnow
from integrity.database import table_clause
from integrity.errors import DatabaseError, RemediationRefused, SpecError
from integrity.inventory import safe_url
from integrity.remediation.counts import ROLLBACK_COUNTS
from integrity.remediation.ledger import (
    DEFAULT_LEASE_SECONDS,
    SKIPPED,
    audit,
    dump_values,
    fail_interrupted_runs,
    finish_run,
    ledger_exists,
    load_values,
    queue,
    read_runs,
    remediation_runs,
    start_run,
)
from integrity.remediation.plan import ALLOW_WRITES_ENV
from integrity.remediation.rows import (
    BatchNotApplied,
    RowConflict,
    batch_transaction,
    identity_clause,
    raw,
    row_matches,
    rows_by_identity,
    same_value,
)

ROLLBACK_COMPLETED_MSG = "rollback: completed"


# What a rollback counts, in report order, and what each count means (for people reading it).
class TargetStillRunning(RemediationRefused):
    """The run to undo is still alive (its lease is fresh): its next batches would be missed."""


@dataclass
class RollbackResult:
    run_id: str
    target_run_id: str
    dry_run: bool
    counts: Counter = field(default_factory=Counter)
    batches: int = 0
    seconds: float = 0.0
    nothing_to_undo: bool = False
    """The target ended (failed or interrupted) without a single audit record: a no-op."""

    def summary(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "rolled_back_run_id": self.target_run_id,
            "dry_run": self.dry_run,
            **{name: self.counts[name] for name in ROLLBACK_COUNTS},
            "batches": self.batches,
            "nothing_to_undo": self.nothing_to_undo,
        }


def rollback(
    engine: sa.Engine,
    target_run_id: str,
    *,
    dry_run: bool = True,
    run_id: str | None = None,
    batch_size: int = 100,
    allow_writes: bool = False,
    lease: float = DEFAULT_LEASE_SECONDS,
) -> RollbackResult:
    """Restore the before values a remediation run audited, for rows not changed since.

    Rows created by the run are removed if untouched since; queue entries not yet delivered are
    cancelled. Every restore is audited under the rollback's own run id, and the original records
    are marked as rolled back, so a second rollback of the same run changes nothing.
    """
    if not dry_run and not allow_writes:
        raise RemediationRefused(
            f"writes are not enabled for this database: set {ALLOW_WRITES_ENV}=1 in the "
            "environment of the run to roll back (or leave dry_run on)"
        )
    if batch_size < 1:
        raise SpecError(f"batch_size: must be at least 1, not {batch_size}")
    started = time.perf_counter()
    run_id = run_id or uuid.uuid4().hex
    result = RollbackResult(run_id, target_run_id, dry_run)
    if not dry_run:
        # First: a target whose lease ran out is recorded as failed, so it can write no more
        # batches and the records read below are all it will ever have.
        fail_interrupted_runs(engine, by=run_id, lease=lease)
    with engine.connect() as conn:
        if not ledger_exists(conn):
            raise RemediationRefused(
                f"no audit records in {safe_url(engine.url)}: nothing to roll back"
            )
        records = (
            conn.execute(
                # not `reason`: a ledger made before it was added may not have the column yet
                sa.select(*[c for c in audit.c if c.name != "reason"])
                .where(
                    audit.c.run_id == target_run_id,
                    audit.c.rolled_back_by.is_(None),
                    audit.c.action != SKIPPED,  # a finding left alone: nothing to undo
                )
                .order_by(audit.c.id.desc())
            )
            .mappings()
            .all()
        )
        known = conn.execute(
            sa.select(sa.func.count()).select_from(audit).where(audit.c.run_id == target_run_id)
        ).scalar_one()
        target = read_runs(conn, remediation_runs.c.run_id == target_run_id, lease=lease)
    if not dry_run and target and target[0]["state"] == "running":
        raise TargetStillRunning(
            f"run {target_run_id} is still running (its lease runs until "
            f"{target[0]['lease_until']:%Y-%m-%d %H:%M:%S} UTC): roll it back once it has ended; "
            "a run whose process died counts as interrupted once its lease has run out"
        )
    if not known:
        if not (target and target[0]["state"] == "failed"):
            raise RemediationRefused(f"run {target_run_id} has no audit records: check the run id")
        # It ended before its first batch with a change committed (killed before it, say): it
        # changed nothing, and failed runs write no more, so undoing it is done as it stands.
        result.nothing_to_undo = True
    if not dry_run:
        start_run(engine, run_id, "rollback", None, target_run_id, lease=lease)
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault((record["table_name"], record["key_column"]), []).append(dict(record))
    try:
        for (table, key_column), group in groups.items():
            for start in range(0, len(group), batch_size):
                chunk = group[start : start + batch_size]
                _rollback_batch(engine, run_id, table, key_column, chunk, result, dry_run)
                result.batches += 1
        _cancel_queue(engine, target_run_id, result, dry_run)
    except BaseException:
        if not dry_run:
            finish_run(engine, run_id, "failed", result)
        raise
    result.seconds = time.perf_counter() - started
    if not dry_run:
        finish_run(engine, run_id, "completed", result)
    return result


def _rollback_batch(
    engine: sa.Engine,
    run_id: str,
    table: str,
    key_column: str,
    chunk: list[dict[str, Any]],
    result: RollbackResult,
    dry_run: bool,
) -> None:
    try:
        counts = batch_transaction(
            engine,
            run_id,
            lambda conn, counts: _restore(conn, run_id, table, key_column, chunk, counts, dry_run),
            dry_run=dry_run,
        )
    except BatchNotApplied as exc:
        raise DatabaseError(
            f"rollback batch on {table} was not applied: {exc}; "
            "earlier batches are restored and audited; run again to finish"
        ) from None
    result.counts.update(counts)


def _restore(
    conn: sa.Connection,
    run_id: str,
    table: str,
    key_column: str,
    chunk: list[dict[str, Any]],
    counts: Counter,
    dry_run: bool,
) -> None:
    befores = [load_values(r["before"]) for r in chunk]
    afters = [load_values(r["after"]) for r in chunk]
    columns = sorted({c for values in befores + afters if values for c in values})
    key_columns = identity.decode_columns(key_column)
    keys = list(dict.fromkeys(r["row_key"] for r in chunk))
    identities = [identity.decode(k, len(key_columns)) for k in keys]
    query = (
        sa.select(*[sa.column(c) for c in dict.fromkeys([*key_columns, *columns])])
        .select_from(table_clause(table))
        .where(identity_clause(key_columns, [i for i in identities if i], conn.dialect.name))
    )
    if not dry_run:
        query = query.with_for_update()
    current = rows_by_identity(conn.execute(query).mappings(), key_columns, table)
    done_ids: list[int] = []
    records: list[dict[str, Any]] = []
    for record_id, key, before, after in zip(
        [r["id"] for r in chunk], [r["row_key"] for r in chunk], befores, afters
    ):
        row = current.get(str(key))
        if after is None or row is None:
            counts["skipped_changed"] += 1  # the row is gone since: nothing to restore onto
            continue
        if not all(
            same_value(row[c], v, timestamp=isinstance(v, datetime)) for c, v in after.items()
        ):
            counts["skipped_changed"] += 1
            continue
        if before == after:
            counts["unchanged"] += 1
            done_ids.append(int(record_id))
            continue
        raw_now = {c: row[c] for c in after}
        if dry_run:
            counts["removed" if before is None else "restored"] += 1
            continue
        condition = row_matches({**{c: row[c] for c in key_columns}, **raw_now})
        if before is None:
            statement = sa.delete(table_clause(table)).where(condition)
            counts["removed"] += 1
        else:
            statement = (
                sa.update(table_clause(table, before))
                .where(condition)
                .values({c: raw(v) for c, v in before.items()})
            )
            counts["restored"] += 1
        if conn.execute(statement).rowcount != 1:
            raise RowConflict()
        done_ids.append(int(record_id))
        records.append(
            {
                "run_id": run_id,
                "action": "rollback",
                "kind": None,
                "table_name": table,
                "key_column": key_column,
                "row_key": str(key),
                "object_key": None,
                "before": dump_values(raw_now),
                "after": dump_values(before),
                "at": utcnow(),
            }
        )
        current[str(key)] = {**row, **(before or {})}
    if dry_run:
        return
    if records:
        conn.execute(audit.insert(), records)
    if done_ids:
        conn.execute(audit.update().where(audit.c.id.in_(done_ids)).values(rolled_back_by=run_id))


def _cancel_queue(
    engine: sa.Engine, target_run_id: str, result: RollbackResult, dry_run: bool
) -> None:
    """Queue entries of the run not yet delivered are cancelled; delivered ones cannot be."""
    with engine.connect() if dry_run else engine.begin() as conn:
        pending = queue.c.state == "pending"
        mine = queue.c.run_id == target_run_id
        cancellable = conn.execute(
            sa.select(sa.func.count()).select_from(queue).where(mine, pending)
        ).scalar_one()
        delivered = conn.execute(
            sa.select(sa.func.count())
            .select_from(queue)
            .where(mine, queue.c.state.in_(["sent", "taken"]))
        ).scalar_one()
        result.counts["queue_cancelled"] += cancellable
        result.counts["queue_already_delivered"] += delivered
        if not dry_run and cancellable:
            conn.execute(
                queue.update().where(mine, pending).values(state="cancelled", taken_at=utcnow())
            )


def run_history(
    engine: sa.Engine, limit: int = 20, *, lease: float = DEFAULT_LEASE_SECONDS
) -> list[dict[str, Any]]:
    """The latest remediation and rollback runs, newest first (for `integrity rollback --list`).

    A run whose process died shows as `failed` with `interrupted` once its lease has run out.
    """
    with engine.connect() as conn:
        if not ledger_exists(conn):
            return []
        return read_runs(conn, limit=limit, lease=lease)


def rollback_completed_line(result: RollbackResult) -> str:
    """The one structured log line a rollback ends with: `"msg": "rollback: completed"`."""
    record = {
        "time": utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"),
        "level": "INFO",
        "msg": ROLLBACK_COMPLETED_MSG,
        **result.summary(),
        "seconds": round(result.seconds, 3),
    }
    return json.dumps(record, ensure_ascii=False, default=str)
