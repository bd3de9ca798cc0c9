"""The tables integrity writes itself: remediation runs, the audit trail and the work queue.

They live in the same database as the rows they describe, so a status change, its audit record
and its queue entry commit in one transaction or not at all. They are created on the first
write (never by a dry run) and never dropped by integrity.

A run holds a lease while its process lives: `lease_until` is pushed forward in every batch's
transaction and, in between, by a timer thread, so a long storage re-check does not let it lapse.
A `running` run whose lease has run out was interrupted (its process was killed or lost): every
reader reports it as failed, and the next run that writes records it as failed, conditionally,
so two of them never both claim it. A run that finds itself recorded as failed stops before its
next batch. Lease times come from the database's clock, so hosts with skewed clocks agree.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from datetime import date, datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from integrity import settings
from integrity.clock import utcnow
from integrity.errors import DatabaseError

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
    # Newer columns: added to an existing table by upgrade_ledger (RUN_COLUMNS_ADDED).
    sa.Column("lease_until", sa.DateTime(timezone=True)),  # renewed while the process lives
    sa.Column("failed_by", sa.String(64)),  # the run that found this one interrupted
)
RUN_COLUMNS_ADDED = ("lease_until", "failed_by")

audit = sa.Table(
    AUDIT_TABLE,
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(64), nullable=False, index=True),
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("kind", sa.String(64)),
    sa.Column("table_name", sa.Text, nullable=False),
    # the identity column, or a JSON array of them, and the row's identity (integrity.identity)
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

# The audit table's newer column: added to an existing table by upgrade_ledger.
AUDIT_COLUMNS_ADDED = ("reason",)


def create_ledger(engine: sa.Engine) -> None:
    """Create integrity's own tables if they are missing (only ever on a write path)."""
    metadata.create_all(engine, checkfirst=True)
    upgrade_ledger(engine)


def upgrade_ledger(engine: sa.Engine) -> None:
    """Add the ledger's newer columns to a ledger an earlier version created (a write path).

    ADD COLUMN of a nullable column: instant on SQLite and PostgreSQL, and safe when two runs
    start at once (PostgreSQL's IF NOT EXISTS; SQLite's duplicate-column error is ignored).
    """
    added = [(remediation_runs, name) for name in RUN_COLUMNS_ADDED]
    added += [(audit, name) for name in AUDIT_COLUMNS_ADDED]
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        present = {
            table.name: {c["name"] for c in inspector.get_columns(table.name)}
            for table in {table for table, _ in added}
            if inspector.has_table(table.name)
        }
    preparer = engine.dialect.identifier_preparer
    for table, name in added:
        if table.name not in present or name in present[table.name]:
            continue
        column = table.c[name]
        guard = " IF NOT EXISTS" if engine.dialect.name == "postgresql" else ""
        statement = (
            f"ALTER TABLE {preparer.quote(table.name)} ADD COLUMN{guard} "
            f"{preparer.quote(name)} {column.type.compile(dialect=engine.dialect)}"
        )
        try:
            with engine.begin() as conn:
                conn.execute(sa.text(statement))
        except sa.exc.DBAPIError as exc:
            if "duplicate column" in str(exc.orig).lower():
                continue  # another run added it a moment ago
            raise DatabaseError(
                f"cannot add column {name!r} to {table.name}: {_reason(exc)}; "
                f"the table's owner can run: {statement}"
            ) from None


def ledger_exists(conn: sa.Connection) -> bool:
    return sa.inspect(conn).has_table(AUDIT_TABLE)


def _reason(exc: sa.exc.DBAPIError) -> str:
    return (str(exc.orig).strip().splitlines() or [type(exc.orig).__name__])[0]


# --------------------------------------------------------------------------- leases

DEFAULT_LEASE_SECONDS = settings.DEFAULT_LEASE_SECONDS
MAX_LEASE_SECONDS = settings.MAX_LEASE_SECONDS
HEARTBEATS_PER_LEASE = 4
"""The timer renews the lease this many times per lease length: a few missed beats (a locked
SQLite file, a slow connection) do not let it lapse."""
# The lease length is INTEGRITY_RUN_LEASE_SECONDS, read by integrity.settings.Settings
# (lease_seconds) and passed in by the CLI and the Dagster jobs; every reader of the ledger
# should use the same length as the writers.


def db_now(conn: sa.Connection) -> datetime:
    """The database's time, in UTC: the clock every lease is written and judged by.

    SQLite runs inside this process, so its clock is this machine's.
    """
    if conn.dialect.name == "sqlite":
        return utcnow()
    return _utc(conn.execute(sa.select(sa.func.now())).scalar_one())


def _utc(value: Any) -> datetime | None:
    """A stored timestamp as an aware UTC datetime (SQLite returns naive UTC)."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return (
        value.replace(tzinfo=timezone.utc)
        if value.tzinfo is None
        else value.astimezone(timezone.utc)
    )


class LeaseLost(DatabaseError):
    """This run was recorded as interrupted (its lease ran out) and must not write any more."""


def _expired(now: datetime, lease: float) -> sa.ColumnElement[bool]:
    """Runs still `running` whose lease has run out. A row from before leases (no lease_until)
    counts as alive for one lease length after its last batch."""
    runs = remediation_runs.c
    return sa.and_(
        runs.state == "running",
        sa.or_(
            runs.lease_until < now,
            sa.and_(runs.lease_until.is_(None), runs.updated_at < now - timedelta(seconds=lease)),
        ),
    )


def renew_lease(engine: sa.Engine, run_id: str, lease: float) -> bool:
    """Push a running run's lease forward; False once the run is no longer `running`."""
    with engine.begin() as conn:
        renewed = conn.execute(
            remediation_runs.update()
            .where(remediation_runs.c.run_id == run_id, remediation_runs.c.state == "running")
            .values(lease_until=db_now(conn) + timedelta(seconds=lease))
        ).rowcount
    return renewed == 1


class _Heartbeat(threading.Thread):
    """Renews one run's lease every lease / HEARTBEATS_PER_LEASE seconds until stopped, or until
    the run is no longer `running` (finished, or recorded as interrupted)."""

    def __init__(self, engine: sa.Engine, run_id: str, lease: float) -> None:
        super().__init__(name=f"integrity-lease-{run_id[:16]}", daemon=True)
        self.engine = engine
        self.run_id = run_id
        self.lease = lease
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.lease / HEARTBEATS_PER_LEASE):
            try:
                if not renew_lease(self.engine, self.run_id, self.lease):
                    return
            except sa.exc.SQLAlchemyError:
                continue  # a locked database or a lost connection: the next beat tries again

    def stop(self) -> None:
        self.stopped.set()
        if self is not threading.current_thread():
            self.join(timeout=2)


_heartbeats: dict[str, _Heartbeat] = {}
_heartbeats_lock = threading.Lock()


def _start_heartbeat(engine: sa.Engine, run_id: str, lease: float) -> None:
    beat = _Heartbeat(engine, run_id, lease)
    with _heartbeats_lock:
        previous = _heartbeats.pop(run_id, None)
        _heartbeats[run_id] = beat
    if previous is not None:
        previous.stop()
    beat.start()


def _stop_heartbeat(run_id: str) -> None:
    with _heartbeats_lock:
        beat = _heartbeats.pop(run_id, None)
    if beat is not None:
        beat.stop()


def _lease_of(run_id: str) -> float:
    with _heartbeats_lock:
        beat = _heartbeats.get(run_id)
    return beat.lease if beat is not None else DEFAULT_LEASE_SECONDS


# --------------------------------------------------------------------------- runs


def start_run(
    engine: sa.Engine,
    run_id: str,
    kind: str,
    scope: str | None,
    target: str | None,
    *,
    lease: float = DEFAULT_LEASE_SECONDS,
) -> None:
    """Record a run as running (again, when a failed run id is reused), with a fresh lease that
    a timer renews until finish_run; runs found interrupted are recorded as failed first."""
    upgrade_ledger(engine)
    _claim_expired(engine, run_id, lease)
    now = utcnow()
    with engine.begin() as conn:
        exists = conn.execute(
            sa.select(remediation_runs.c.run_id).where(remediation_runs.c.run_id == run_id)
        ).first()
        values = {
            "state": "running",
            "updated_at": now,
            "finished_at": None,
            "lease_until": db_now(conn) + timedelta(seconds=lease),
            "failed_by": None,
        }
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
    _start_heartbeat(engine, run_id, lease)


def finish_run(engine: sa.Engine, run_id: str, state: str, result: Any) -> None:
    """Record how a run ended, with its summary; never raises (the batches are what matter)."""
    _stop_heartbeat(run_id)
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
    are re-read (PostgreSQL locks the rows themselves with FOR UPDATE).

    It also renews the run's lease, committed with the batch. A run no longer `running` (another
    run found its lease expired and recorded it as failed) raises LeaseLost: the batch is rolled
    back and the run stops, so nothing is written behind that record.
    """
    lease = _lease_of(run_id)
    renewed = conn.execute(
        remediation_runs.update()
        .where(remediation_runs.c.run_id == run_id, remediation_runs.c.state == "running")
        .values(
            batches=remediation_runs.c.batches + 1,
            updated_at=utcnow(),
            lease_until=db_now(conn) + timedelta(seconds=lease),
        )
    ).rowcount
    if renewed != 1:
        by = conn.execute(
            sa.select(remediation_runs.c.failed_by).where(remediation_runs.c.run_id == run_id)
        ).scalar()
        raise LeaseLost(
            f"run {run_id} was recorded as interrupted"
            + (f" by run {by}" if by else "")
            + " because its lease ran out (no sign of life for longer than the lease); it stops "
            "here, and its earlier batches stay applied"
        )


def fail_interrupted_runs(
    engine: sa.Engine, *, by: str | None, lease: float = DEFAULT_LEASE_SECONDS
) -> list[dict[str, Any]]:
    """Record every run whose lease has run out as failed, with `failed_by`; return those this
    call recorded (another caller racing for the same run gets it only once).

    A write, on a ledger that exists (never creates it). Runs are claimed one conditional UPDATE
    each, in run id order, in one transaction: there are seldom more than one, and the order
    keeps two callers from deadlocking.
    """
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(RUNS_TABLE):
            return []
    upgrade_ledger(engine)
    return _claim_expired(engine, by, lease)


def _claim_expired(engine: sa.Engine, by: str | None, lease: float) -> list[dict[str, Any]]:
    recorded: list[dict[str, Any]] = []
    with engine.begin() as conn:
        now = db_now(conn)
        candidates = conn.execute(
            sa.select(remediation_runs)
            .where(_expired(now, lease))
            .order_by(remediation_runs.c.run_id)
        ).mappings()
        for run in list(candidates):
            claimed = conn.execute(
                remediation_runs.update()
                .where(remediation_runs.c.run_id == run["run_id"], _expired(now, lease))
                .values(state="failed", failed_by=by, updated_at=utcnow())
            ).rowcount
            if claimed == 1:
                recorded.append(_as_read({**run, "state": "failed", "failed_by": by}, now, lease))
    return recorded


def read_runs(
    conn: sa.Connection,
    *where: sa.ColumnElement[bool],
    limit: int | None = None,
    lease: float = DEFAULT_LEASE_SECONDS,
) -> list[dict[str, Any]]:
    """Runs as every reader should see them, newest first: a `running` run whose lease has run
    out is `failed`, and `interrupted` says whether a run ended that way.

    Read-only (an expired run is recorded as failed by the next run that writes), and it works on
    a ledger from before leases, whose runs table lacks the newer columns.
    """
    if not sa.inspect(conn).has_table(RUNS_TABLE):
        return []
    present = {c["name"] for c in sa.inspect(conn).get_columns(RUNS_TABLE)}
    query = (
        sa.select(*[c for c in remediation_runs.c if c.name in present])
        .where(*where)
        .order_by(remediation_runs.c.started_at.desc())
    )
    if limit is not None:
        query = query.limit(limit)
    rows = [dict(r) for r in conn.execute(query).mappings()]
    now = db_now(conn)
    return [_as_read(row, now, lease) for row in rows]


def _as_read(run: Mapping[str, Any], now: datetime, lease: float) -> dict[str, Any]:
    run = {"lease_until": None, "failed_by": None, **run}
    lease_until = _utc(run["lease_until"])
    if lease_until is None and run.get("updated_at") is not None:
        lease_until = _utc(run["updated_at"]) + timedelta(seconds=lease)
    expired = run["state"] == "running" and lease_until is not None and lease_until < now
    run["interrupted"] = expired or (run["state"] == "failed" and run["failed_by"] is not None)
    if expired:
        run["state"] = "failed"
    run["lease_until"] = lease_until
    return run


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
