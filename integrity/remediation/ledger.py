"""The tables integrity writes itself: remediation runs, the audit trail and the work queue.

They live in the same database as the rows they describe, so a status change, its audit record
and its queue entry commit in one transaction or not at all. They are created on the first
write (never by a dry run) and never dropped by integrity.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timezone
from typing import Any

import sqlalchemy as sa

metadata = sa.MetaData()

RUNS_TABLE = "integrity_remediation_runs"
AUDIT_TABLE = "integrity_audit"
QUEUE_TABLE = "integrity_queue"

remediation_runs = sa.Table(
    RUNS_TABLE,
    metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),  # remediate | rollback
    sa.Column("target_run_id", sa.String(64)),  # the run a rollback undoes
    sa.Column("scope", sa.Text),
    sa.Column("state", sa.String(16), nullable=False),  # running | completed | failed
    sa.Column("batches", sa.Integer, nullable=False, server_default="0"),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("counts", sa.Text),
)

audit = sa.Table(
    AUDIT_TABLE,
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(64), nullable=False, index=True),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("kind", sa.String(64)),
    sa.Column("table_name", sa.Text, nullable=False),
    sa.Column("key_column", sa.Text, nullable=False),
    sa.Column("row_key", sa.Text, nullable=False),
    sa.Column("object_key", sa.Text),
    sa.Column("before", sa.Text),  # JSON of the changed columns; NULL: the row did not exist
    sa.Column("after", sa.Text),  # JSON of the changed columns; NULL: the row was removed
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("rolled_back_by", sa.String(64)),
    # Why a finding was left alone (action 'skipped'); NULL on the records of changes.
    sa.Column("reason", sa.Text),
)

queue = sa.Table(
    QUEUE_TABLE,
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("object_key", sa.Text, nullable=False),
    sa.Column("bucket", sa.Text, nullable=False),
    sa.Column("reason", sa.String(64), nullable=False),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("backend", sa.String(16), nullable=False),  # table | sqs
    # pending: waiting (table) or not yet sent (sqs); sent: in SQS; taken: picked by a worker
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("sent_at", sa.DateTime(timezone=True)),
    sa.Column("message_id", sa.Text),
    sa.Column("taken_at", sa.DateTime(timezone=True)),
    sa.Index("ix_integrity_queue_key_state", "object_key", "state"),
)

WAITING_STATES = ("pending", "sent")
SKIPPED = "skipped"
"""The audit action of a finding left alone on purpose (its reason says why); nothing to undo."""

# Columns added to a ledger table after its first release: (table, column, SQL type), added to
# a ledger an earlier version created.
_ADDED_COLUMNS = ((AUDIT_TABLE, "reason", "TEXT"),)


def create_ledger(engine: sa.Engine) -> None:
    """Create integrity's own tables if they are missing (only ever on a write path)."""
    metadata.create_all(engine, checkfirst=True)
    for table, column, sql_type in _ADDED_COLUMNS:
        _add_column(engine, table, column, sql_type)


def _add_column(engine: sa.Engine, table: str, column: str, sql_type: str) -> None:
    def present() -> bool:
        with engine.connect() as conn:
            return column in {c["name"] for c in sa.inspect(conn).get_columns(table)}

    if present():
        return
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}"))
    except sa.exc.DBAPIError:
        if not present():  # another run added it at the same moment: fine
            raise


def ledger_exists(conn: sa.Connection) -> bool:
    return sa.inspect(conn).has_table(AUDIT_TABLE)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


# --------------------------------------------------------------------------- runs


def start_run(
    engine: sa.Engine, run_id: str, kind: str, scope: str | None, target: str | None
) -> None:
    """Record a run as running (again, when a failed run id is reused)."""
    now = utcnow()
    with engine.begin() as conn:
        exists = conn.execute(
            sa.select(remediation_runs.c.run_id).where(remediation_runs.c.run_id == run_id)
        ).first()
        values = {"state": "running", "updated_at": now, "finished_at": None}
        if exists:
            conn.execute(
                remediation_runs.update()
                .where(remediation_runs.c.run_id == run_id)
                .values(**values)
            )
        else:
            conn.execute(
                remediation_runs.insert().values(
                    run_id=run_id,
                    kind=kind,
                    scope=scope,
                    target_run_id=target,
                    started_at=now,
                    batches=0,
                    **values,
                )
            )


def finish_run(engine: sa.Engine, run_id: str, state: str, result: Any) -> None:
    """Record how a run ended, with its summary; never raises (the batches are what matter)."""
    try:
        with engine.begin() as conn:
            conn.execute(
                remediation_runs.update()
                .where(remediation_runs.c.run_id == run_id)
                .values(
                    state=state,
                    updated_at=utcnow(),
                    finished_at=utcnow(),
                    counts=json.dumps(result.summary()),
                )
            )
    except sa.exc.SQLAlchemyError:
        pass  # the batches are what matter; a lost connection here must not hide the real error


def lock_batch(conn: sa.Connection, run_id: str) -> None:
    """The batch's first statement is a write, so SQLite takes its write lock before the rows
    are re-read (PostgreSQL locks the rows themselves with FOR UPDATE)."""
    conn.execute(
        remediation_runs.update()
        .where(remediation_runs.c.run_id == run_id)
        .values(batches=remediation_runs.c.batches + 1, updated_at=utcnow())
    )


# --------------------------------------------------------------------------- audit values
#
# Before and after values are stored as JSON. Timestamps keep their type (so a rollback writes
# back a timestamp, not a string), and a value read raw from the driver (SQLite's text
# timestamps) is kept as it was, so restoring it writes back exactly what was there.

_DATETIME = "$datetime"
_DATE = "$date"


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return {_DATETIME: value.isoformat()}
    if isinstance(value, date):
        return {_DATE: value.isoformat()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item"):  # numpy scalars
        return _encode(value.item())
    return str(value)


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if _DATETIME in value:
            return datetime.fromisoformat(value[_DATETIME])
        if _DATE in value:
            return date.fromisoformat(value[_DATE])
    return value


def dump_values(values: dict[str, Any] | None) -> str | None:
    if values is None:
        return None
    return json.dumps({k: _encode(v) for k, v in values.items()}, sort_keys=True)


def load_values(text: str | None) -> dict[str, Any] | None:
    if text is None:
        return None
    return {k: _decode(v) for k, v in json.loads(text).items()}
