"""The rows the processor reads and writes, through the spec's table and column names.

Every write that decides who does the work is conditional (claim a job only from a claimable
status; never lower a plan's progress), so two runs for one key cannot both process it, and a
late or duplicated run cannot undo what an earlier one finished.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from integrity import identity
from integrity.clock import naive_utcnow
from integrity.database import split_table_name, table_clause
from integrity.keys import like_escape, parse_reference
from integrity.kinds import KINDS
from integrity.spec import JobsSpec, PlansSpec, ReconciliationSpec, TableSpec

COMPLETE = "complete"
PROCESSING_DEFAULT = "processing"
FAILED = "failed"
DOCUMENT_COMPLETE = "complete"
IMAGE_READY_DEFAULT = "ready"
ERROR_LIMIT = 500


def one_line(text: str) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= ERROR_LIMIT else line[: ERROR_LIMIT - 1] + "…"


# --------------------------------------------------------------------------- processing jobs


@dataclass(frozen=True)
class ProcessingJobState:
    """One processing job: a row of the spec's `jobs` table (`processing_jobs`), not a Dagster job."""

    status: str
    attempts: int
    started_at: datetime | None
    updated_at: datetime | None


def _stamp(name: str) -> sa.ColumnClause[datetime]:
    """A timestamp column, typed so SQLite stores and compares it like the reference schema."""
    return sa.column(name, sa.DateTime)


def _typed(values: dict[str, Any]) -> list[str | sa.ColumnClause[Any]]:
    """Columns for the values about to be written, the timestamps typed (see _stamp)."""
    return [_stamp(k) if isinstance(v, datetime) else k for k, v in values.items()]


def _processing_jobs_table(jobs: JobsSpec) -> sa.TableClause:
    return table_clause(
        jobs.table,
        [
            jobs.key,
            jobs.status,
            jobs.attempts,
            _stamp(jobs.started_at),
            _stamp(jobs.updated_at),
            jobs.error,
        ],
    )


def read_processing_job(conn: sa.Connection, jobs: JobsSpec, key: str) -> ProcessingJobState | None:
    t = _processing_jobs_table(jobs)
    row = conn.execute(
        sa.select(
            t.c[jobs.status], t.c[jobs.attempts], t.c[jobs.started_at], t.c[jobs.updated_at]
        ).where(t.c[jobs.key] == key)
    ).first()
    return None if row is None else ProcessingJobState(row[0], row[1] or 0, row[2], row[3])


def processing_status(jobs: JobsSpec) -> str:
    return jobs.processing_statuses[0] if jobs.processing_statuses else PROCESSING_DEFAULT


def claim_processing_job(
    engine: sa.Engine, jobs: JobsSpec, key: str, *, stale_after: timedelta, now: datetime
) -> bool:
    """Take the processing job for this run: insert it as processing, or move it there from a claimable status.

    Claimable: not started or failed (the spec's requeue statuses), complete (reprocessing an
    upload whose documents row is missing), or processing but started longer ago than
    stale_after (its worker died). Exactly one of several concurrent runs gets True.
    """
    t = _processing_jobs_table(jobs)
    processing = processing_status(jobs)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.insert(t).values(
                    {
                        jobs.key: key,
                        jobs.status: processing,
                        jobs.attempts: 1,
                        jobs.started_at: now,
                        jobs.updated_at: now,
                        jobs.error: None,
                    }
                )
            )
        return True
    except sa.exc.IntegrityError:
        pass  # the row exists: claim it conditionally below
    cutoff = now - stale_after
    started = sa.func.coalesce(t.c[jobs.started_at], t.c[jobs.updated_at])
    claimable = sa.or_(
        t.c[jobs.status].in_([*jobs.requeue_statuses, jobs.not_started_status, COMPLETE]),
        sa.and_(t.c[jobs.status].in_(jobs.processing_statuses), started < cutoff),
    )
    with engine.begin() as conn:
        result = conn.execute(
            sa.update(t)
            .where(t.c[jobs.key] == key, claimable)
            .values(
                {
                    jobs.status: processing,
                    jobs.attempts: sa.func.coalesce(t.c[jobs.attempts], 0) + 1,
                    jobs.started_at: now,
                    jobs.updated_at: now,
                    jobs.error: None,
                }
            )
        )
    return result.rowcount == 1


def fail_processing_job(engine: sa.Engine, jobs: JobsSpec, key: str, error: str) -> None:
    """Record the failure on the processing job this run holds (one taken over since is left alone)."""
    t = _processing_jobs_table(jobs)
    with engine.begin() as conn:
        conn.execute(
            sa.update(t)
            .where(t.c[jobs.key] == key, t.c[jobs.status].in_(jobs.processing_statuses))
            .values(
                {jobs.status: FAILED, jobs.error: one_line(error), jobs.updated_at: naive_utcnow()}
            )
        )


def _complete_processing_job(conn: sa.Connection, jobs: JobsSpec, key: str, now: datetime) -> None:
    t = _processing_jobs_table(jobs)
    conn.execute(
        sa.update(t)
        .where(t.c[jobs.key] == key)
        .values({jobs.status: COMPLETE, jobs.error: None, jobs.updated_at: now})
    )


# --------------------------------------------------------------------------- documents


def document_id(key: str) -> str:
    """A stable id for the documents row of an upload: the same key always gives the same id."""
    return "doc-" + hashlib.sha256(key.encode()).hexdigest()[:20]


def _documents_table(spec: ReconciliationSpec) -> tuple[TableSpec, str]:
    assert spec.uploads is not None
    return spec.tables[spec.uploads.processed_table], spec.uploads.processed_column


def read_document_status(conn: sa.Connection, spec: ReconciliationSpec, key: str) -> str | None:
    """The status of the processed-table row naming this key; None when there is none."""
    if spec.uploads is None:
        return None
    table, column = _documents_table(spec)
    t = table_clause(table.table, [column, table.status])
    row = conn.execute(sa.select(t.c[table.status]).where(t.c[column] == key).limit(1)).first()
    return None if row is None else row[0]


def _reflected_columns(conn: sa.Connection, name: str) -> set[str]:
    schema, table = split_table_name(name)
    return {c["name"] for c in sa.inspect(conn).get_columns(table, schema=schema)}


def _write_document(
    conn: sa.Connection, spec: ReconciliationSpec, key: str, tenant: str, now: datetime
) -> None:
    """Insert the processed-table row of this upload, or mark the existing one complete."""
    table, column = _documents_table(spec)
    present = _reflected_columns(conn, table.table)
    values: dict[str, Any] = {table.status: DOCUMENT_COMPLETE, table.updated_at: now}
    if table.error and table.error in present:
        values[table.error] = None
    t = table_clause(table.table, [column, *_typed(values)])
    updated = conn.execute(sa.update(t).where(t.c[column] == key).values(values)).rowcount
    if updated:
        return
    # A composite id is the tenant and one other column (the spec checks it): that one gets the id.
    values.update({c: document_id(key) for c in table.id_columns})
    values.update({table.tenant: tenant, column: key})
    if "created_at" in present:
        values["created_at"] = now
    conn.execute(sa.insert(table_clause(table.table, _typed(values))).values(values))


# --------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class PlanRef:
    plan_id: str
    tenant: str
    project: str
    existed: bool


_SLUG = re.compile(r"[^A-Za-z0-9._-]+")


def plan_id_for(key: str) -> str:
    """The plan id of an upload with no plans row yet: its file stem, made unique by the key."""
    name = key.rsplit("/", 1)[-1]
    stem = name.rsplit(".", 1)[0] if "." in name else name
    slug = _SLUG.sub("-", stem).strip("-.")[:60] or "plan"
    return f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def _plans_table(plans: PlansSpec) -> sa.TableClause:
    columns = [
        plans.id,
        plans.tenant,
        plans.project,
        plans.status,
        plans.completed,
        plans.total,
        _stamp(plans.updated_at),
    ]
    columns += [_stamp(c) for c in (plans.completed_at,) if c]
    return table_clause(plans.table, columns)


def find_plan(
    conn: sa.Connection, plans: PlansSpec, key: str, tenant: str, default_project: str
) -> PlanRef:
    """Which plan an upload fills: an existing row of this tenant named like the file, else a new id.

    1. a plans row of the tenant whose id is the upload's file stem (the layout the demo and
       most applications use: documents/{tenant}/plans/{plan}.pdf) gives plan and project;
    2. else the row a previous run created for this key ({stem}-{hash of the key}), if any;
    3. else that id with `default_project`.
    """
    t = _plans_table(plans)
    name = key.rsplit("/", 1)[-1]
    stem = name.rsplit(".", 1)[0] if "." in name else name
    derived = plan_id_for(key)
    rows = conn.execute(
        sa.select(t.c[plans.id], t.c[plans.project]).where(
            t.c[plans.tenant] == tenant, t.c[plans.id].in_([stem, derived])
        )
    ).all()
    found = {row[0]: row[1] for row in rows}
    for plan_id in (stem, derived):
        if plan_id in found:
            return PlanRef(plan_id, tenant, found[plan_id], existed=True)
    return PlanRef(derived, tenant, default_project, existed=False)


def start_plan(
    engine: sa.Engine, plans: PlansSpec, plan: PlanRef, total: int, now: datetime
) -> None:
    """Create the plan row (processing, 0 of total) or mark an existing one processing again."""
    t = _plans_table(plans)
    with engine.begin() as conn:
        updated = conn.execute(
            sa.update(t)
            .where(t.c[plans.id] == plan.plan_id, t.c[plans.tenant] == plan.tenant)
            .values({plans.status: PROCESSING_DEFAULT, plans.total: total, plans.updated_at: now})
        ).rowcount
        if updated:
            return
        present = _reflected_columns(conn, plans.table)
        values: dict[str, Any] = {
            plans.id: plan.plan_id,
            plans.tenant: plan.tenant,
            plans.project: plan.project,
            plans.status: PROCESSING_DEFAULT,
            plans.completed: 0,
            plans.total: total,
            plans.updated_at: now,
        }
        if "started_at" in present:
            values["started_at"] = now
        if plans.reconciled and plans.reconciled in present:
            values[plans.reconciled] = False
        conn.execute(sa.insert(table_clause(plans.table, _typed(values))).values(values))


def record_progress(engine: sa.Engine, plans: PlansSpec, plan: PlanRef, completed: int) -> None:
    """Raise completed pages to `completed`; a lower value never overwrites a higher one."""
    t = _plans_table(plans)
    with engine.begin() as conn:
        conn.execute(
            sa.update(t)
            .where(
                t.c[plans.id] == plan.plan_id,
                t.c[plans.tenant] == plan.tenant,
                t.c[plans.completed] < completed,
            )
            .values({plans.completed: completed, plans.updated_at: naive_utcnow()})
        )


def finish_upload(
    engine: sa.Engine,
    spec: ReconciliationSpec,
    key: str,
    tenant: str,
    plan: PlanRef | None,
    pages: int,
    now: datetime,
) -> None:
    """One transaction: plan complete, documents row complete, job complete."""
    with engine.begin() as conn:
        if plan is not None and spec.plans is not None:
            plans = spec.plans
            t = _plans_table(plans)
            values: dict[str, Any] = {
                plans.status: plans.complete_status,
                plans.completed: pages,
                plans.updated_at: now,
            }
            if plans.completed_at:
                values[plans.completed_at] = now
            conn.execute(
                sa.update(t)
                .where(t.c[plans.id] == plan.plan_id, t.c[plans.tenant] == plan.tenant)
                .values(values)
            )
        if spec.uploads is not None:
            _write_document(conn, spec, key, tenant, now)
        if spec.jobs is not None:
            _complete_processing_job(conn, spec.jobs, key, now)


def finish_processing_job(
    engine: sa.Engine, jobs: JobsSpec | None, key: str, now: datetime
) -> None:
    if jobs is None:
        return
    with engine.begin() as conn:
        _complete_processing_job(conn, jobs, key, now)


# --------------------------------------------------------------------------- images


@dataclass(frozen=True)
class DerivativeTable:
    """A table with an original and a staged reference (the reference schema's images)."""

    name: str
    table: TableSpec
    original: str
    staged: str
    ready_status: str


# The kinds a reference column names when it holds the original, or the staged copy.
_ORIGINAL = KINDS.for_reference("original").name
_STAGED = KINDS.for_reference("staged").name


def derivative_tables(spec: ReconciliationSpec) -> list[DerivativeTable]:
    out = []
    for name, table in spec.tables.items():
        originals = [r for r in table.references if r.kind == _ORIGINAL]
        staged = [r for r in table.references if r.kind == _STAGED]
        if originals and staged:
            ready = staged[0].when_status[0] if staged[0].when_status else IMAGE_READY_DEFAULT
            out.append(DerivativeTable(name, table, originals[0].column, staged[0].column, ready))
    return out


@dataclass(frozen=True)
class ImageRow:
    table: DerivativeTable
    key: dict[str, Any]
    """The identity columns' values, raw: all of them pick out the row."""
    status: str
    staged: str | None

    @property
    def id(self) -> str | None:
        """The row's identity as reports spell it (integrity.identity)."""
        return identity.encode(list(self.key.values()))


def find_image_rows(
    conn: sa.Connection, spec: ReconciliationSpec, key: str, bucket: str
) -> list[ImageRow]:
    """Rows whose original reference names this key, in any spelling (bare, s3://, URL, encoded).

    One query per table narrows by the file name (plain and percent-encoded); the key
    resolution of integrity.keys decides.
    """
    from urllib.parse import quote

    name = key.rsplit("/", 1)[-1]
    patterns = {"%" + like_escape(name), "%" + like_escape(quote(name))}
    found: list[ImageRow] = []
    for d in derivative_tables(spec):
        tbl = d.table
        ids = list(tbl.id_columns)
        t = table_clause(tbl.table, list(dict.fromkeys([*ids, tbl.status, d.original, d.staged])))
        rows = conn.execute(
            sa.select(
                *[t.c[c] for c in ids], t.c[tbl.status], t.c[d.original], t.c[d.staged]
            ).where(sa.or_(*[t.c[d.original].like(p, escape="\\") for p in sorted(patterns)]))
        ).all()
        for row in rows:
            status, original, staged = row[len(ids) :]
            parsed = parse_reference(original, bucket)
            if parsed is None or (parsed.bucket not in (None, bucket)):
                continue
            if key in (parsed.key, parsed.alternative):
                found.append(ImageRow(d, dict(zip(ids, row[: len(ids)])), status, staged))
    return found


def staged_key_for(key: str, max_side: int) -> str:
    """Where the staged derivative of an original goes: {dir}/staged/{stem}-{max_side}.jpg."""
    directory, _, name = key.rpartition("/")
    stem = name.rsplit(".", 1)[0] if "." in name else name
    return (f"{directory}/" if directory else "") + f"staged/{stem}-{max_side}.jpg"


def set_staged(engine: sa.Engine, row: ImageRow, staged_key: str, now: datetime) -> bool:
    """Point the row at its staged derivative and mark it ready (rows in a skip status are left)."""
    tbl = row.table.table
    values: dict[str, Any] = {
        row.table.staged: staged_key,
        tbl.status: row.table.ready_status,
        tbl.updated_at: now,
    }
    if tbl.error:
        values[tbl.error] = None
    t = table_clause(tbl.table, [*row.key, *_typed(values)])
    same_row = [t.c[c] == v for c, v in row.key.items()]
    with engine.begin() as conn:
        result = conn.execute(
            sa.update(t).where(*same_row, t.c[tbl.status].not_in(tbl.skip_statuses)).values(values)
        )
    return result.rowcount == 1
