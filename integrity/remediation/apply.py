"""Applying remediation: a reconciliation report's findings, as batches of conditional writes.

Per finding kind: rows whose object is missing are marked `error`; unprocessed uploads get a
`not_started` job and a queue entry; stuck jobs go back to `not_started` with one more attempt
and a queue entry; plans behind their storage get their progress counters corrected.

The order of safety, for every batch of at most `batch_size` findings:
1. the plan (plan.py) refuses an incomplete report and a tripped circuit breaker;
2. storage is checked again for the batch's objects (an object may have arrived); a finding
   whose object cannot be checked (a key the store refuses, a path error, a failure that
   outlasted the retries) is left alone as `skipped_unverified`, and the batch goes on;
3. one transaction takes the write lock, re-reads the rows, and changes only those whose status
   and `updated_at` are still what the inventory saw (the others are `skipped_changed`); rows
   about to be marked `error` have their objects looked at once more, under the lock;
4. the same transaction writes the audit records (findings left alone too, as `skipped` with
   their reason) and the queue entries, then commits.
A crash leaves whole batches applied or not at all; a second run finds nothing left to do.
The re-checks of a run share a time budget (`recheck_budget`): once it is spent, the run stops
after the batch at hand with RecheckBudgetExhausted, its committed batches kept and the rest
counted as `not_verified`.
Objects are never deleted. integrity.remediation.rollback undoes a run from its audit records.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
import sqlalchemy as sa

from integrity import identity
from integrity.clock import utcnow
from integrity.database import split_table_name, table_clause
from integrity.diff import ACTION_KINDS, ACTIONS, ReconciliationReport
from integrity.durations import format_duration
from integrity.errors import DatabaseError, IntegrityError, RemediationRefused, SpecError
from integrity.inventory import db_error_reason, is_transient, safe_url
from integrity.keys import resolve_references
from integrity.remediation.ledger import (
    DEFAULT_LEASE_SECONDS,
    SKIPPED,
    audit,
    create_ledger,
    dump_values,
    finish_run,
    start_run,
)
from integrity.remediation.plan import (
    ALLOW_WRITES_ENV,
    RemediationOptions,
    plan_remediation,
    stale_storage,
)
from integrity.remediation.queue import QueueEntry, TableQueue, WorkQueue
from integrity.remediation.rows import (
    BATCH_ATTEMPTS,
    BatchNotApplied,
    RowConflict,
    batch_transaction,
    identity_clause,
    match_rows,
    raw,
    rows_by_identity,
    same_value,
)
from integrity.spec import ReconciliationSpec
from integrity.storage.base import ObjectStore

COUNT_NAMES = (
    "marked_error",
    "progress_fixed",
    "jobs_created",
    "jobs_reset",
    "retried",
    "requeued",
    "already_queued",
    "skipped_changed",
    "skipped_present",
    "skipped_appeared",
    "skipped_gone",
    "skipped_unverified",
    "not_verified",
)
UPDATE_COUNTS = ("marked_error", "progress_fixed", "jobs_created", "jobs_reset", "retried")


@dataclass
class RemediationResult:
    """What a run did (or, in a dry run, would do): counts by outcome, batches, timing."""

    run_id: str
    dry_run: bool
    scope: str
    planned: dict[str, int]
    counts: Counter = field(default_factory=Counter)
    batches: int = 0
    seconds: float = 0.0
    by_action: dict[str, Counter] = field(default_factory=dict)
    """The counts again, per action (mark_error, requeue, retry, fix_progress)."""
    stopped: str | None = None
    """Why the run stopped before its last batch (the re-check budget ran out), else None."""

    @property
    def updated(self) -> int:
        return sum(self.counts[name] for name in UPDATE_COUNTS)

    def summary(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "dry_run": self.dry_run,
            "planned": self.planned,
            "updated": self.updated,
            **{name: self.counts[name] for name in COUNT_NAMES},
            "by_action": {
                action: {name: counts[name] for name in COUNT_NAMES if counts[name]}
                for action, counts in self.by_action.items()
                if any(counts[name] for name in COUNT_NAMES)
            },
            "batches": self.batches,
            "stopped": self.stopped,
        }


class RecheckBudgetExhausted(IntegrityError):
    """The run's storage re-checks used up their time budget: the run stopped after the batch at
    hand. Its committed batches stay (and are audited); `result` counts the rest as not_verified."""

    def __init__(self, message: str, result: RemediationResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class _TableColumns:
    """A table's columns that remediation reads and writes, and whether its timestamps carry a zone."""

    table: str
    keys: tuple[str, ...]
    """The identity columns: one, or several that together pick out a row (integrity.identity)."""
    status: str
    updated_at: str
    other: tuple[str, ...]
    aware: frozenset[str]

    @property
    def key(self) -> str:
        """The identity column of a table identified by one column (the jobs table)."""
        (key,) = self.keys
        return key

    @property
    def read(self) -> list[str]:
        return [*self.keys, self.status, self.updated_at, *self.other]

    def identity(self, row: dict[str, Any]) -> str | None:
        """The row's identity as findings and audit records spell it."""
        return identity.encode([row[c] for c in self.keys])

    def now(self, column: str, now: datetime) -> datetime:
        return now if column in self.aware else now.replace(tzinfo=None)


# --------------------------------------------------------------------------- the run


@dataclass
class _Context:
    engine: sa.Engine
    spec: ReconciliationSpec
    store: ObjectStore
    queue: WorkQueue
    options: RemediationOptions
    run_id: str
    now: Callable[[], datetime]
    columns: dict[str, _TableColumns]
    counts: Counter
    recheck_seconds: float = 0.0  # spent so far on storage re-checks, of options.recheck_budget
    out_of_budget: bool = False  # a re-check found the budget spent: stop after this batch
    marked: list[_Mark] = field(default_factory=list)  # the rows the batch's commit marked
    pool: ThreadPoolExecutor | None = None  # the re-checks' HEADs, `concurrency` at a time
    resolved: dict[Any, list[str]] = field(default_factory=dict)  # the batch's references' keys


@dataclass(frozen=True)
class _Mark:
    """A row a batch marked `error`: what it held (raw) and what the mark wrote."""

    finding: Any
    row_key: str | None  # the identity as the audit records it (integrity.identity)
    identity: dict[str, Any]  # each identity column's raw value
    before: dict[str, Any]
    after: dict[str, Any]


def _inspect_columns(
    engine: sa.Engine,
    table: str,
    keys: Sequence[str],
    status: str,
    updated_at: str,
    other: Iterable[str | None],
    *,
    spec_path: str | None = None,
) -> _TableColumns:
    other = [c for c in other if c]
    wanted = [*keys, status, updated_at, *other]
    schema, name = split_table_name(table)
    try:
        inspector = sa.inspect(engine)
        found = {c["name"]: c["type"] for c in inspector.get_columns(name, schema=schema)}
        if spec_path is not None and set(keys) <= set(found):
            _check_identity(inspector, table, keys, spec_path)
    except sa.exc.NoSuchTableError:
        raise SpecError(f"table {table!r} not found in {safe_url(engine.url)}") from None
    except sa.exc.SQLAlchemyError as exc:
        raise DatabaseError(
            f"cannot read database {safe_url(engine.url)}: {db_error_reason(exc)}"
        ) from None
    missing = [c for c in wanted if c not in found]
    if missing:
        raise SpecError(
            f"column {missing[0]!r} not found in table {table!r}, which remediation writes"
        )
    aware = {
        c
        for c in wanted
        if isinstance(found[c], sa.DateTime) and getattr(found[c], "timezone", False)
    }
    return _TableColumns(table, tuple(keys), status, updated_at, tuple(other), frozenset(aware))


def _check_identity(
    inspector: sa.Inspector, table: str, keys: Sequence[str], spec_path: str
) -> None:
    """Refuse an id that is only part of the table's key (`id` of a primary key (tenant_id, id)):
    one conditional write would change every row sharing it, and the batch could never apply.
    An id no declared key mentions is left to the read before each write (rows.AmbiguousRows)."""
    schema, name = split_table_name(table)
    pk = inspector.get_pk_constraint(name, schema=schema).get("constrained_columns") or []
    declared = [pk] if pk else []
    declared += [u["column_names"] for u in inspector.get_unique_constraints(name, schema=schema)]
    declared += [
        i["column_names"] for i in inspector.get_indexes(name, schema=schema) if i["unique"]
    ]
    declared = [d for d in declared if d and all(isinstance(c, str) for c in d)]
    if any(set(d) <= set(keys) for d in declared):
        return
    wider = next((d for d in declared if set(keys) < set(d)), None)
    if wider is None:
        return
    spelled = keys[0] if len(keys) == 1 else "[" + ", ".join(keys) + "]"
    raise SpecError(
        f"{spec_path}.id: {spelled} does not identify one row of table {table!r}, whose "
        f"{'primary key' if wider == pk else 'unique key'} is ({', '.join(wider)}): rows "
        f"sharing it would be changed together; set id: [{', '.join(wider)}]"
    )


def _columns_for(
    engine: sa.Engine, spec: ReconciliationSpec, plan: pd.DataFrame
) -> dict[str, _TableColumns]:
    """Check that every column the plan writes exists, before anything is written."""
    columns: dict[str, _TableColumns] = {}
    for action, table in plan[["action", "table"]].drop_duplicates().itertuples(index=False):
        if table in columns:
            continue
        if action == "mark_error":
            name, t = _table_spec(spec, table, named=True)
            columns[table] = _inspect_columns(
                engine,
                table,
                t.id_columns,
                t.status,
                t.updated_at,
                [t.error],
                spec_path=f"tables.{name}",
            )
        elif action in ("requeue", "retry"):
            j = spec.jobs
            if j is None:
                raise SpecError("jobs: the spec has no jobs table, so nothing can be re-queued")
            columns[table] = _inspect_columns(
                engine, table, [j.key], j.status, j.updated_at, [j.attempts, j.error]
            )
        elif action == "fix_progress":
            p = spec.plans
            if p is None:
                raise SpecError("plans: the spec has no plans table")
            columns[table] = _inspect_columns(
                engine,
                table,
                [p.id],
                p.status,
                p.updated_at,
                [p.completed, p.total, p.completed_at, p.reconciled, p.reconciled_at],
            )
    return columns


def _table_spec(spec: ReconciliationSpec, table: str, *, named: bool = False):
    for name, t in spec.tables.items():
        if t.table == table:
            return (name, t) if named else t
    raise SpecError(f"table {table!r} of the report is not in the spec")


def remediate(
    report: ReconciliationReport,
    engine: sa.Engine,
    spec: ReconciliationSpec,
    store: ObjectStore,
    options: RemediationOptions | None = None,
    *,
    work_queue: WorkQueue | None = None,
    run_id: str | None = None,
    allow_writes: bool = False,
    lease: float = DEFAULT_LEASE_SECONDS,
    on_batch: Callable[[int, int], None] | None = None,
) -> RemediationResult:
    """Apply (or, by default, dry-run) the report's findings, one transaction per batch.

    `allow_writes` is the database owner's opt-in (INTEGRITY_ALLOW_WRITES=1, read by the caller
    through integrity.settings.Settings) and `lease` the run's lease in seconds."""
    options = options or RemediationOptions()
    if not options.dry_run and not allow_writes:
        raise RemediationRefused(
            f"writes are not enabled for this database: set {ALLOW_WRITES_ENV}=1 in the "
            "environment of the run to apply changes (or leave dry_run on)"
        )
    if not options.dry_run:
        stale = stale_storage(report, options)
        if stale is not None:
            raise RemediationRefused(f"{stale}; nothing was changed")
    started = time.perf_counter()
    plan = plan_remediation(report, options)
    run_id = run_id or uuid.uuid4().hex
    work_queue = work_queue or TableQueue()
    planned = {
        action: int((plan["action"] == action).sum())
        for action in dict.fromkeys(ACTIONS[k] for k in ACTION_KINDS)
    }
    result = RemediationResult(run_id, options.dry_run, report.scope, planned)
    if not options.dry_run:
        work_queue.flush(engine)  # what a crashed run committed but did not send
    if plan.empty:
        result.seconds = time.perf_counter() - started
        return result
    columns = _columns_for(engine, spec, plan)
    if plan["action"].isin(["requeue", "retry"]).any():
        work_queue.check_access()
    ctx = _Context(engine, spec, store, work_queue, options, run_id, utcnow, columns, result.counts)

    if not options.dry_run:
        create_ledger(engine)
        start_run(engine, run_id, "remediate", report.scope, None, lease=lease)
    batches = list(plan_batches(plan, options.batch_size))
    ctx.pool = ThreadPoolExecutor(max_workers=options.concurrency, thread_name_prefix="recheck")
    try:
        for number, batch in enumerate(batches, start=1):
            if number > 1 and options.pause:
                time.sleep(options.pause)
            action = batch["action"].iloc[0]
            before = result.counts.copy()
            _run_batch(ctx, batch, number, len(batches), bucket=report.bucket)
            result.by_action.setdefault(action, Counter()).update(result.counts - before)
            result.batches = number
            if not options.dry_run:
                work_queue.flush(engine)
            if on_batch is not None:
                on_batch(number, len(batches))
            if ctx.out_of_budget:
                _stop(ctx, result, batches, number)
    except BaseException:
        result.seconds = time.perf_counter() - started
        if not options.dry_run:
            finish_run(engine, run_id, "failed", result)
        raise
    finally:
        ctx.pool.shutdown(cancel_futures=True)
    result.seconds = time.perf_counter() - started
    if not options.dry_run:
        finish_run(engine, run_id, "completed", result)
    return result


def _stop(
    ctx: _Context, result: RemediationResult, batches: list[pd.DataFrame], number: int
) -> None:
    """The re-check budget is spent: count what is left as not verified and stop the run."""
    for batch in batches[number:]:
        action = batch["action"].iloc[0]
        result.counts["not_verified"] += len(batch)
        result.by_action.setdefault(action, Counter())["not_verified"] += len(batch)
    batch = batches[number - 1]
    seconds = ctx.options.recheck_budget
    budget = format_duration(timedelta(seconds=seconds)) if seconds >= 1 else f"{seconds:g}s"
    result.stopped = f"storage re-checks ran out of their {budget} time budget"
    raise RecheckBudgetExhausted(
        f"{result.stopped} in batch {number} of {len(batches)} "
        f"({batch['action'].iloc[0]} on {batch['table'].iloc[0]}): "
        f"{result.counts['not_verified']:,} findings were not verified and are left as they are "
        f"({result.counts['skipped_unverified']:,} more could not be checked); the "
        f"{result.updated:,} changes verified before are applied and audited (remediation run "
        f"{ctx.run_id}, recorded as failed). The store answers slowly or not at all: check it, "
        "then run again",
        result,
    )


def plan_batches(plan: pd.DataFrame, size: int) -> Iterable[pd.DataFrame]:
    """Chunks of one action on one table each, in plan order."""
    order = plan.assign(_group=plan["action"] + "\0" + plan["table"].fillna(""))
    for _, group in order.groupby("_group", sort=False):
        group = group.drop(columns="_group")
        for start in range(0, len(group), size):
            yield group.iloc[start : start + size]


def _run_batch(ctx: _Context, batch: pd.DataFrame, number: int, total: int, *, bucket: str) -> None:
    action = batch["action"].iloc[0]
    table = batch["table"].iloc[0]
    ctx.resolved = {}
    verified, skipped = _recheck_storage(ctx, batch, action)
    if verified.empty and (not skipped or ctx.options.dry_run):
        return
    handler = _HANDLERS[action]

    def work(conn: sa.Connection, counts: Counter) -> None:
        if not ctx.options.dry_run:
            _audit(conn, ctx, [_skipped(ctx, action, f, reason) for f, reason in skipped])
        if not verified.empty:
            handler(ctx, conn, verified, counts, bucket)

    try:
        counts = batch_transaction(ctx.engine, ctx.run_id, work, dry_run=ctx.options.dry_run)
    except BatchNotApplied as exc:
        raise DatabaseError(
            f"batch {number} of {total} ({action} on {table}) was not applied: {exc}. "
            f"{number - 1} earlier batches are applied and audited; run again to finish"
        ) from None
    ctx.counts.update(counts)
    if ctx.marked:
        _undo_appeared(ctx, number, total)


# --------------------------------------------------------------------------- storage re-check


def _candidates(ctx: _Context, batch: pd.DataFrame, action: str) -> list[list[str]]:
    """The keys to look at for each finding: a reference in every spelling, or the object."""
    if action == "mark_error":
        return _reference_keys(ctx, list(batch["reference"]))
    return [[k] for k in batch["key"]]


def _reference_keys(ctx: _Context, references: list[Any]) -> list[list[str]]:
    """Each reference's keys (its key and the alternative spelling), parsed once per batch."""
    new = [r for r in dict.fromkeys(references) if r not in ctx.resolved]
    if new:
        parsed = resolve_references(pd.Series(new, dtype=object), ctx.store.bucket)
        for reference, key, alt in zip(new, parsed["key"], parsed["alternative"]):
            ctx.resolved[reference] = [k for k in (key, alt) if isinstance(k, str)]
    return [ctx.resolved[r] for r in references]


PRESENT, ABSENT, UNVERIFIED, LATE = "present", "absent", "unverified", "late"


def _look(ctx: _Context, candidates: list[list[str]]) -> list[tuple[str, str | None]]:
    """HEAD each finding's keys (`concurrency` at a time): (PRESENT | ABSENT | UNVERIFIED | LATE,
    reason). UNVERIFIED: the store refused the key or failed after its retries, or the path
    cannot be read. LATE: the run's re-check budget was spent before the finding's turn came."""
    started = time.monotonic()
    deadline = started + ctx.options.recheck_budget - ctx.recheck_seconds

    def look(keys: list[str]) -> tuple[str, str | None]:
        if time.monotonic() >= deadline:
            return LATE, None
        try:
            return (PRESENT if any(ctx.store.head(k) is not None for k in keys) else ABSENT), None
        except IntegrityError as exc:
            return UNVERIFIED, _clip(str(exc))
        except OSError as exc:  # a local path the system refuses: too long, a loop, denied
            return UNVERIFIED, _clip(f"{exc.strerror or type(exc).__name__}: {exc.filename}")

    try:
        if ctx.pool is None:
            seen = [look(keys) for keys in candidates]
        else:
            seen = list(ctx.pool.map(look, candidates))
    finally:
        ctx.recheck_seconds += time.monotonic() - started
    if any(state == LATE for state, _ in seen):
        ctx.out_of_budget = True
    return seen


def _clip(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _recheck_storage(
    ctx: _Context, batch: pd.DataFrame, action: str
) -> tuple[pd.DataFrame, list[tuple[Any, str]]]:
    """Right before writing, look at the batch's objects again.

    mark_error keeps rows whose object is still absent in every spelling; requeue and retry keep
    objects that still exist. An object whose state cannot be confirmed is left alone: returned
    with its reason, to be audited as skipped. Findings the budget left no time for are counted
    as not_verified (and the run stops after this batch).
    """
    if action == "fix_progress":
        return batch, []
    seen = _look(ctx, _candidates(ctx, batch, action))
    states = pd.Series([state for state, _ in seen], index=batch.index)
    unverified = [
        (finding, reason)
        for finding, (state, reason) in zip(batch.itertuples(index=False), seen)
        if state == UNVERIFIED
    ]
    ctx.counts["skipped_unverified"] += len(unverified)
    ctx.counts["not_verified"] += int((states == LATE).sum())
    if action == "mark_error":
        ctx.counts["skipped_present"] += int((states == PRESENT).sum())
        return batch.loc[states == ABSENT], unverified
    ctx.counts["skipped_gone"] += int((states == ABSENT).sum())
    return batch.loc[states == PRESENT], unverified


# --------------------------------------------------------------------------- per action


def _read_current(
    ctx: _Context, conn: sa.Connection, cols: _TableColumns, keys: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """The batch's rows as they are now, raw, locked for update where the database can; by
    identity, as findings spell it (integrity.identity)."""
    identities = [identity.decode(k, len(cols.keys)) for k in keys]
    query = (
        sa.select(*[sa.column(c) for c in cols.read])
        .select_from(table_clause(cols.table))
        .where(identity_clause(cols.keys, [i for i in identities if i], conn.dialect.name))
    )
    if not ctx.options.dry_run:
        query = query.with_for_update()
    return rows_by_identity(conn.execute(query).mappings(), cols.keys, cols.table)


def _unchanged(cols: _TableColumns, finding: Any, row: dict[str, Any] | None) -> bool:
    """The row still has the status and updated_at the inventory saw."""
    status = finding.status
    if row is None:
        return status is None
    if status is None:
        return False
    return same_value(row[cols.status], status) and same_value(
        row[cols.updated_at],
        None if pd.isna(finding.updated_at) else finding.updated_at,
        timestamp=True,
    )


def _update(
    conn: sa.Connection,
    cols: _TableColumns,
    rows: list[dict[str, Any]],
    values: dict[str, Any],
) -> None:
    """One conditional UPDATE for rows sharing the new values; every row must still match."""
    if not rows:
        return
    condition = match_rows(
        [*cols.keys, cols.status, cols.updated_at],
        [(*[r[k] for k in cols.keys], r[cols.status], r[cols.updated_at]) for r in rows],
    )
    if conn.dialect.name == "sqlite":
        # SQLite scans the whole table for a row-value IN (VALUES ...); the key lists let it use
        # the primary key (PostgreSQL plans the row values well and is slower with both).
        narrow = [sa.column(k).in_([r[k] for r in rows]) for k in cols.keys]
        condition = sa.and_(*narrow, condition)
    statement = sa.update(table_clause(cols.table, values)).where(condition).values(values)
    if conn.execute(statement).rowcount != len(rows):
        raise RowConflict()


def _bound(cols: _TableColumns, values: dict[str, Any]) -> dict[str, Any]:
    """New values as the UPDATE binds them: timestamps and booleans typed (SQLAlchemy then
    writes them as the dialect stores them), everything else as it is."""
    bound: dict[str, Any] = {}
    for column, value in values.items():
        if isinstance(value, datetime):
            value = sa.bindparam(None, value, type_=sa.DateTime(timezone=column in cols.aware))
        elif isinstance(value, bool):
            value = sa.bindparam(None, value, type_=sa.Boolean())
        bound[column] = value
    return bound


def _stored(
    cols: _TableColumns, values: dict[str, Any] | None, dialect: sa.Dialect | None
) -> dict[str, Any] | None:
    """New values as the database stores them, so that an audit record's `before` (read raw) and
    `after` have one form: SQLite's text timestamps and 0/1 booleans, PostgreSQL's own types."""
    if values is None or dialect is None:
        return values
    stored: dict[str, Any] = {}
    for column, value in values.items():
        kind: sa.types.TypeEngine[Any] | None = None
        if isinstance(value, datetime):
            kind = sa.DateTime(timezone=column in cols.aware)
        elif isinstance(value, bool):
            kind = sa.Boolean()
        process = kind.dialect_impl(dialect).bind_processor(dialect) if kind else None
        stored[column] = process(value) if process else value
    return stored


def _change(
    action: str,
    finding: Any,
    cols: _TableColumns,
    row_key: Any,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    dialect: sa.Dialect | None = None,
) -> dict[str, Any]:
    """One audit record: which row of which table, by which action and finding, from what to
    what (the new values as `dialect` stores them, like the old ones read raw)."""
    after = _stored(cols, after, dialect)
    return {
        "action": action,
        "kind": finding.kind,
        "table_name": cols.table,
        "key_column": identity.encode_columns(cols.keys),
        "row_key": str(row_key),
        "object_key": finding.key,
        "before": dump_values(before),
        "after": dump_values(after),
    }


def _skipped(ctx: _Context, action: str, finding: Any, reason: str) -> dict[str, Any]:
    """The audit record of a finding left alone on purpose, with the reason (nothing to undo)."""
    cols = ctx.columns[finding.table]
    row_key = finding.row_id if action in ("mark_error", "fix_progress") else finding.key
    return {**_change(SKIPPED, finding, cols, row_key, None, None), "reason": reason}


def _audit(
    conn: sa.Connection,
    ctx: _Context,
    records: list[dict[str, Any]],
) -> None:
    if records:
        conn.execute(
            audit.insert(),
            [{"run_id": ctx.run_id, "at": ctx.now(), "reason": None, **r} for r in records],
        )


def _mark_error(
    ctx: _Context, conn: sa.Connection, batch: pd.DataFrame, counts: Counter, bucket: str
) -> None:
    table = batch["table"].iloc[0]
    t = _table_spec(ctx.spec, table)
    cols = ctx.columns[table]
    # A row with two missing references is marked once, for the first kind reported.
    batch = batch.drop_duplicates("row_id", keep="first")
    current = _read_current(ctx, conn, cols, list(batch["row_id"]))
    now = ctx.now()
    ctx.marked = []  # of this attempt: a batch retried after a conflict starts afresh
    groups: dict[str, list[tuple[Any, dict[str, Any]]]] = {}
    for finding in batch.itertuples(index=False):
        row = current.get(str(finding.row_id))
        if row is None or not _unchanged(cols, finding, row):
            counts["skipped_changed"] += 1
            continue
        ref = (
            next(r for r in t.references if r.column == finding.column) if finding.column else None
        )
        message = ref.error_message if ref is not None else finding.detail
        groups.setdefault(message, []).append((finding, row))
    if not ctx.options.dry_run:
        groups = _still_missing(ctx, conn, groups, counts)
    for message, items in groups.items():
        counts["marked_error"] += len(items)
        if ctx.options.dry_run:
            continue
        after: dict[str, Any] = {
            cols.status: t.error_status,
            cols.updated_at: cols.now(cols.updated_at, now),
        }
        if t.error:
            after[t.error] = message
        _update(conn, cols, [row for _, row in items], _bound(cols, after))
        _audit(
            conn,
            ctx,
            [
                _change(
                    "mark_error",
                    finding,
                    cols,
                    cols.identity(row),
                    {c: row[c] for c in after},
                    after,
                    conn.dialect,
                )
                for finding, row in items
            ],
        )
        ctx.marked += [
            _Mark(
                finding,
                cols.identity(row),
                {k: row[k] for k in cols.keys},
                {c: row[c] for c in after},
                after,
            )
            for finding, row in items
        ]


def _still_missing(
    ctx: _Context,
    conn: sa.Connection,
    groups: dict[str, list[tuple[Any, dict[str, Any]]]],
    counts: Counter,
) -> dict[str, list[tuple[Any, dict[str, Any]]]]:
    """Look at the objects of the rows about to be marked once more, now that the rows are locked,
    and keep only those still missing; the others are audited as skipped.

    Why no interleaving leaves a wrong mark. Our rows are locked before this look: PostgreSQL's
    FOR UPDATE holds them, and on SQLite the batch's first statement took the write lock. A writer
    stores its object, then writes its row. If the store finished before this look, the look sees
    the object and the row is not marked (`object_appeared`). If it finished after, the writer's
    row write comes later still, so it waits for our lock and lands after our commit, on top of
    the mark: the writer's state is what stays. If its row write came before our lock, the
    conditional UPDATE sees the changed row and leaves it (`skipped_changed`). The first look,
    before the transaction, is not enough on its own: an object stored between it and the lock
    was marked anyway.

    What this look cannot see is a store that completes between it and the COMMIT, from a writer
    that writes no row after it (a direct upload to a presigned URL): `_undo_appeared` looks once
    more after the commit for those.
    """
    items = [item for group in groups.values() for item in group]
    if not items:
        return groups
    seen = _look(ctx, _reference_keys(ctx, [finding.reference for finding, _ in items]))
    records: list[dict[str, Any]] = []
    left: set[int] = set()
    for (finding, _), (state, reason) in zip(items, seen):
        if state == ABSENT:
            continue
        left.add(id(finding))
        if state == PRESENT:
            counts["skipped_appeared"] += 1
            records.append(_skipped(ctx, "mark_error", finding, "object_appeared"))
        elif state == UNVERIFIED:
            counts["skipped_unverified"] += 1
            records.append(_skipped(ctx, "mark_error", finding, reason or "not verified"))
        else:
            counts["not_verified"] += 1
    _audit(conn, ctx, records)
    return {
        message: kept
        for message, group in groups.items()
        if (kept := [item for item in group if id(item[0]) not in left])
    }


def _undo_appeared(ctx: _Context, number: int, total: int) -> None:
    """After a mark_error batch has committed, look at its marked rows' objects a last time and
    undo the marks whose object is there now: stored while the batch committed.

    A store acknowledged before the COMMIT returned is visible to this look, so no row stays
    `error` for an object stored before its mark took effect. The undo is conditional: a row
    that no longer holds exactly the mark (the writer wrote it since) is the writer's and is left
    as it is. The mark's audit record is flagged as undone by this run (rollback then skips it)
    and a `skipped` record says why. It is one UPDATE per row, but only for such rows, which the
    look under the lock has made rare.
    """
    marked, ctx.marked = ctx.marked, []
    seen = _look(ctx, _reference_keys(ctx, [m.finding.reference for m in marked]))
    appeared = [m for m, (state, _) in zip(marked, seen) if state == PRESENT]
    if not appeared:
        return
    cols = ctx.columns[appeared[0].finding.table]

    def matches(column: str, value: Any) -> sa.ColumnElement[bool]:
        if value is None:
            return sa.column(column).is_(None)
        if isinstance(value, datetime):
            typed = sa.DateTime(timezone=column in cols.aware)
            return sa.column(column) == sa.bindparam(None, value, type_=typed)
        return sa.column(column) == value

    for attempt in range(1, BATCH_ATTEMPTS + 1):
        undone: list[_Mark] = []
        try:
            with ctx.engine.begin() as conn:
                for m in appeared:
                    statement = (
                        sa.update(table_clause(cols.table, m.before))
                        .where(
                            *[sa.column(k) == raw(v) for k, v in m.identity.items()],
                            *[matches(c, v) for c, v in m.after.items()],
                        )
                        .values({c: raw(v) for c, v in m.before.items()})
                    )
                    if conn.execute(statement).rowcount == 1:
                        undone.append(m)
                if undone:
                    conn.execute(
                        audit.update()
                        .where(
                            audit.c.run_id == ctx.run_id,
                            audit.c.action == "mark_error",
                            audit.c.table_name == cols.table,
                            audit.c.row_key.in_([m.row_key for m in undone]),
                            audit.c.rolled_back_by.is_(None),
                        )
                        .values(rolled_back_by=ctx.run_id)
                    )
                    _audit(
                        conn,
                        ctx,
                        [
                            _skipped(ctx, "mark_error", m.finding, "object_appeared_at_commit")
                            for m in undone
                        ],
                    )
            break
        except sa.exc.DBAPIError as exc:
            if attempt < BATCH_ATTEMPTS and (exc.connection_invalidated or is_transient(exc)):
                time.sleep(0.2 * 2 ** (attempt - 1))
                continue
            raise DatabaseError(
                f"batch {number} of {total} (mark_error on {cols.table}) is applied, but undoing "
                f"the marks of {len(appeared)} rows whose objects were stored while it committed "
                f"failed: {db_error_reason(exc)} (rows "
                + ", ".join(str(m.row_key) for m in appeared[:5])
                + ("…" if len(appeared) > 5 else "")
                + ")"
            ) from None
    ctx.counts["marked_error"] -= len(undone)
    ctx.counts["skipped_appeared"] += len(undone)


def _requeue_or_retry(
    ctx: _Context, conn: sa.Connection, batch: pd.DataFrame, counts: Counter, bucket: str
) -> None:
    """Orphans get a not_started job (created or reset); stuck jobs go back with one more attempt.
    Either way the object is queued, unless it is already waiting in the queue."""
    j = ctx.spec.jobs
    assert j is not None
    table = batch["table"].iloc[0]
    cols = ctx.columns[table]
    now = ctx.now()
    keys = list(batch["key"])
    current = _read_current(ctx, conn, cols, keys)
    waiting = ctx.queue.waiting(conn, keys)
    creates: list[Any] = []
    resets: list[tuple[Any, dict[str, Any]]] = []
    retries: list[tuple[Any, dict[str, Any]]] = []
    queue_only: list[tuple[Any, dict[str, Any]]] = []
    for finding in batch.itertuples(index=False):
        row = current.get(finding.key)
        if not _unchanged(cols, finding, row):
            counts["skipped_changed"] += 1
        elif finding.action == "retry":
            retries.append((finding, row))
        elif row is None:
            creates.append(finding)
        elif row[cols.status] != j.not_started_status:
            resets.append((finding, row))
        elif finding.key in waiting:
            counts["already_queued"] += 1
        else:
            queue_only.append((finding, row))

    counts["jobs_created"] += len(creates)
    counts["jobs_reset"] += len(resets)
    counts["retried"] += len(retries)
    to_queue = creates + [f for f, _ in resets + retries + queue_only]
    fresh = [f for f in to_queue if f.key not in waiting]
    counts["requeued"] += len(fresh)
    counts["already_queued"] += len(to_queue) - len(fresh)
    if ctx.options.dry_run:
        return

    stamp = cols.now(cols.updated_at, now)
    records: list[dict[str, Any]] = []

    def record(
        finding: Any, action: str, before: dict[str, Any] | None, after: dict[str, Any]
    ) -> None:
        records.append(_change(action, finding, cols, finding.key, before, after, conn.dialect))

    if creates:
        new_table = table_clause(
            table,
            [
                cols.key,
                cols.status,
                j.attempts,
                sa.column(cols.updated_at, sa.DateTime(timezone=cols.updated_at in cols.aware)),
            ],
        )
        conn.execute(
            sa.insert(new_table),
            [
                {
                    cols.key: f.key,
                    cols.status: j.not_started_status,
                    j.attempts: 0,
                    cols.updated_at: stamp,
                }
                for f in creates
            ],
        )
        for f in creates:
            record(
                f,
                "create_job",
                None,
                {cols.status: j.not_started_status, j.attempts: 0, cols.updated_at: stamp},
            )
    if resets:
        after = {cols.status: j.not_started_status, cols.updated_at: stamp, j.error: None}
        _update(conn, cols, [row for _, row in resets], _bound(cols, after))
        for f, row in resets:
            record(f, "reset_job", {c: row[c] for c in after}, after)
    if retries:
        _update(
            conn,
            cols,
            [row for _, row in retries],
            {
                **_bound(cols, {cols.status: j.not_started_status, cols.updated_at: stamp}),
                j.attempts: sa.func.coalesce(sa.column(j.attempts), 0) + 1,
            },
        )
        for f, row in retries:
            before = {c: row[c] for c in (cols.status, j.attempts, cols.updated_at)}
            after = {
                cols.status: j.not_started_status,
                j.attempts: (row[j.attempts] or 0) + 1,
                cols.updated_at: stamp,
            }
            record(f, "retry_job", before, after)
    for f, row in queue_only:
        same = {c: row[c] for c in (cols.status, cols.updated_at)}
        record(f, "requeue", same, same)
    _audit(conn, ctx, records)
    ctx.queue.add(
        conn,
        [QueueEntry(f.key, f.kind) for f in fresh],
        bucket=bucket,
        run_id=ctx.run_id,
        now=now,
    )


def _fix_progress(
    ctx: _Context, conn: sa.Connection, batch: pd.DataFrame, counts: Counter, bucket: str
) -> None:
    """completed = the descriptors found in storage; complete (with completed_at) when all are there."""
    p = ctx.spec.plans
    assert p is not None
    table = batch["table"].iloc[0]
    cols = ctx.columns[table]
    current = _read_current(ctx, conn, cols, list(batch["row_id"]))
    now = ctx.now()
    stamp = cols.now(cols.updated_at, now)
    groups: dict[tuple[int, bool], list[tuple[Any, dict[str, Any]]]] = {}
    for finding in batch.itertuples(index=False):
        row = current.get(str(finding.row_id))
        expected = int(finding.expected)
        if row is None or not _unchanged(cols, finding, row) or (row[p.completed] or 0) >= expected:
            counts["skipped_changed"] += 1
            continue
        done = row[p.total] is not None and expected >= int(row[p.total])
        groups.setdefault((expected, done), []).append((finding, row))
    records: list[dict[str, Any]] = []
    for (expected, done), items in groups.items():
        counts["progress_fixed"] += len(items)
        if ctx.options.dry_run:
            continue
        after: dict[str, Any] = {p.completed: expected, cols.updated_at: stamp}
        if p.reconciled:
            after[p.reconciled] = True
        if p.reconciled_at:
            after[p.reconciled_at] = cols.now(p.reconciled_at, now)
        if done:
            after[cols.status] = p.complete_status
            if p.completed_at:
                after[p.completed_at] = cols.now(p.completed_at, now)
        _update(conn, cols, [row for _, row in items], _bound(cols, after))
        for finding, row in items:
            before = {c: row[c] for c in after}
            records.append(
                _change(
                    "fix_progress", finding, cols, cols.identity(row), before, after, conn.dialect
                )
            )
    _audit(conn, ctx, records)


_HANDLERS = {
    "mark_error": _mark_error,
    "requeue": _requeue_or_retry,
    "retry": _requeue_or_retry,
    "fix_progress": _fix_progress,
}
