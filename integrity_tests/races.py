"""A writer storing objects while remediation marks their rows `error`: the re-check gap, measured.

`writer_race` plants rows whose objects are missing, reconciles, and applies the report while a
writer thread stores objects for the rows of the batch being applied at that moment (the worst
moment: between its re-check and its commit). Every other stored object is then followed by the
writer's own row write, as an app confirming an upload would (`status = 'complete'`); the others
stay store-only, like a direct upload to a presigned URL. Afterwards each row is judged:

- `wrong_before_lock`: still `error` although its object's store was acknowledged before the
  mark was decided (the mark's `updated_at`, stamped with the rows locked);
- `wrong_before_commit`: still `error` although its object's store was acknowledged before the
  mark's transaction had committed (the connection back in the pool);
- `wrong_last_modified`: still `error` although its object's LastModified is before that commit;
- `lost_row_writes`: a row write of the writer that is not what the row holds at the end.

Used by integrity_tests/test_remediate_rechecks.py (a few hundred stores) and by
benchmarks/reliability_races.py (thousands, with the figures printed).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from integrity import schema
from integrity.diff import DiffOptions
from integrity.reconcile import reconcile
from integrity.remediation import RemediationOptions, plan_remediation, remediate
from integrity.remediation.ledger import audit, load_values
from integrity.spec import default_spec
from integrity.storage.local import LocalStorage

ALLOW = {"INTEGRITY_ALLOW_WRITES": "1"}


def _utc() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)  # naive UTC, as the tables hold it


@dataclass
class RaceResult:
    database: str
    rows: int
    batch_size: int
    racing_stores: int = 0
    row_writes: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    wrong_before_lock: list[str] = field(default_factory=list)
    wrong_before_commit: list[str] = field(default_factory=list)
    wrong_last_modified: list[str] = field(default_factory=list)
    lost_row_writes: list[str] = field(default_factory=list)
    last_modified_details: list[dict[str, Any]] = field(default_factory=list)
    appeared_under_lock: int = 0  # marks not made: the look under the row lock saw the object
    appeared_at_commit: int = 0  # marks undone: the look after the commit saw the object
    audit_agrees: bool = False
    seconds: float = 0.0

    def figures(self) -> dict[str, Any]:
        return {
            "database": self.database,
            "rows": self.rows,
            "batch_size": self.batch_size,
            "racing_stores": self.racing_stores,
            "row_writes": self.row_writes,
            **{k: self.counts.get(k, 0) for k in _REPORTED},
            "appeared_under_lock": self.appeared_under_lock,
            "appeared_at_commit": self.appeared_at_commit,
            "wrong_before_lock": len(self.wrong_before_lock),
            "wrong_before_commit": len(self.wrong_before_commit),
            "wrong_last_modified": len(self.wrong_last_modified),
            "lost_row_writes": len(self.lost_row_writes),
            "audit_agrees": self.audit_agrees,
            "seconds": round(self.seconds, 2),
        }


_REPORTED = ("marked_error", "skipped_present", "skipped_appeared", "skipped_changed")


def writer_race(
    engine: sa.Engine,
    root: Path,
    *,
    rows: int,
    batch_size: int = 50,
    share: float = 0.6,
    seed: int = 0,
) -> RaceResult:
    """Apply a report of `rows` missing objects while the writer stores `share` of each batch's
    objects as that batch is applied; judge every row afterwards (see the module docstring)."""
    rng = random.Random(seed)
    store = LocalStorage(root)
    spec = default_spec()
    base = datetime.now(timezone.utc)
    at = base.replace(tzinfo=None)
    items = [(f"race-{n:05d}", f"documents/org-1/race-{n:05d}.pdf") for n in range(rows)]
    with engine.begin() as conn:
        conn.execute(
            schema.documents.insert(),
            [
                dict(
                    id=i,
                    organization_id="org-1",
                    r2_key=k,
                    status="complete",
                    created_at=at,
                    updated_at=at,
                )
                for i, k in items
            ],
        )
    report = reconcile(store, engine, spec, DiffOptions(now=base + timedelta(hours=2)))
    options = RemediationOptions(dry_run=False, batch_size=batch_size, force=True)
    plan = plan_remediation(report, options)
    keys = dict(items)
    batches = [
        list(plan["row_id"].iloc[start : start + batch_size])
        for start in range(0, len(plan), batch_size)
    ]
    racing = [set(rng.sample(b, int(len(b) * share))) for b in batches]
    healing = {row_id for row_id, _ in items[1::2]}

    acked: dict[str, datetime] = {}
    row_writes: dict[str, datetime] = {}
    done = [0]  # batches committed so far
    running = threading.Event()
    finished = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            running.wait(30)
            d = schema.documents
            while not finished.is_set():
                current = done[0]
                if current >= len(batches):
                    return
                waiting = sorted(racing[current] - acked.keys())
                if not waiting:
                    time.sleep(0.0002)
                    continue
                row_id = rng.choice(waiting)
                store.put_bytes(keys[row_id], b"stored by the writer")
                acked[row_id] = _utc()
                if row_id in healing:
                    stamp = _utc()
                    with engine.begin() as conn:
                        conn.execute(
                            d.update()
                            .where(d.c.id == row_id)
                            .values(status="complete", error=None, updated_at=stamp)
                        )
                    row_writes[row_id] = stamp
                time.sleep(rng.uniform(0, 0.001))
        except BaseException as exc:  # surfaced in the caller's thread
            errors.append(exc)

    # When each transaction of the apply (this thread) is back in the pool: committed.
    apply_thread = threading.get_ident()
    commits: list[datetime] = []

    def checked_in(dbapi_connection: Any, record: Any) -> None:
        if threading.get_ident() == apply_thread:
            commits.append(_utc())

    def on_batch(number: int, total: int) -> None:
        done[0] = number
        running.set()

    sa.event.listen(engine.pool, "checkin", checked_in)
    thread = threading.Thread(target=writer, name="race-writer")
    thread.start()
    started = time.perf_counter()
    running.set()
    try:
        applied = remediate(
            report, engine, spec, store, options, allow_writes=True, on_batch=on_batch
        )
    finally:
        finished.set()
        thread.join(60)
        sa.event.remove(engine.pool, "checkin", checked_in)
    seconds = time.perf_counter() - started
    if errors:
        raise errors[0]

    result = RaceResult(engine.dialect.name, rows, batch_size, seconds=seconds)
    result.racing_stores = len(acked)
    result.row_writes = len(row_writes)
    result.counts = {k: int(v) for k, v in applied.counts.items()}
    d = schema.documents
    with engine.connect() as conn:
        final = {r.id: r for r in conn.execute(sa.select(d.c.id, d.c.status, d.c.updated_at))}
        records = conn.execute(
            sa.select(audit.c.row_key, audit.c.action, audit.c.after, audit.c.reason).where(
                audit.c.run_id == applied.run_id, audit.c.rolled_back_by.is_(None)
            )
        ).all()
        undone = conn.execute(
            sa.select(sa.func.count())
            .select_from(audit)
            .where(audit.c.run_id == applied.run_id, audit.c.rolled_back_by == applied.run_id)
        ).scalar_one()
    marks = {r.row_key: load_values(r.after) for r in records if r.action == "mark_error"}
    reasons = Counter(r.reason for r in records if r.action == "skipped")
    result.appeared_under_lock = reasons["object_appeared"]
    result.appeared_at_commit = reasons["object_appeared_at_commit"]
    commits.sort()
    for row_id, row in final.items():
        if row_id in row_writes and (row.status, row.updated_at) != (
            "complete",
            row_writes[row_id],
        ):
            result.lost_row_writes.append(row_id)
        if row.status != "error":
            continue
        mark = marks[row_id]["updated_at"]
        if isinstance(mark, str):  # SQLite's text timestamp, as the audit records it
            mark = datetime.fromisoformat(mark)
        committed = next(c for c in commits if c >= mark)
        head = store.head(keys[row_id])
        if row_id in acked and acked[row_id] < mark:
            result.wrong_before_lock.append(row_id)
        if row_id in acked and acked[row_id] < committed:
            result.wrong_before_commit.append(row_id)
        if head is not None and head.last_modified.replace(tzinfo=None) < committed:
            result.wrong_last_modified.append(row_id)
            ack = acked.get(row_id)
            result.last_modified_details.append(
                {
                    "row": row_id,
                    "last_modified_before_commit_ms": round(
                        (committed - head.last_modified.replace(tzinfo=None)).total_seconds() * 1e3,
                        3,
                    ),
                    "stored_after_commit_ms": None
                    if ack is None
                    else round((ack - committed).total_seconds() * 1e3, 3),
                }
            )
    # audit and table agree: every mark is in the table, unless the writer's row write came after
    errors_now = {r for r, row in final.items() if row.status == "error"}
    result.audit_agrees = (
        errors_now == set(marks) - set(row_writes)
        and len(marks) == applied.counts["marked_error"]
        and undone == result.appeared_at_commit
        and sum(reasons.values()) == applied.counts["skipped_appeared"]
    )
    return result
