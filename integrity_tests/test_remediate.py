"""Remediation against real parts: SQLite files and PostgreSQL, a directory or moto's S3, moto's SQS.

Every safety property of the issue has a test here: per-kind effects, dry run, re-checks before
writing, a concurrent writer, SIGKILL mid-run, rollback, idempotence, the circuit breaker, refusals
of incomplete reports and of writes without the opt-in, and SQS re-queueing.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from integrity import schema, settings
from integrity.diff import ReconciliationReport
from integrity.errors import DatabaseError, QueueError, RemediationRefused, SpecError
from integrity.inventory import list_storage
from integrity.remediation import (
    RemediationOptions,
    plan_remediation,
    remediate,
)
from integrity.remediation.ledger import (
    AUDIT_TABLE,
    QUEUE_TABLE,
    RUNS_TABLE,
    audit,
    fail_interrupted_runs,
    queue,
    remediation_runs,
)
from integrity.remediation.queue import SqsQueue, make_queue
from integrity.remediation.rollback import TargetStillRunning, rollback, run_history
from integrity.settings import Settings
from integrity.storage import LocalStorage, S3Storage
from integrity_tests.flaky_proxy import FlakyProxy
from integrity_tests.remediation_worker import kill_mid_batch, wait_for_lease_to_run_out
from integrity_tests.world import HOUR, World, found, kinds

ALLOW = {"INTEGRITY_ALLOW_WRITES": "1"}
LEDGER = {RUNS_TABLE, AUDIT_TABLE, QUEUE_TABLE}
REFERENCE_TABLES = {
    "documents": "id",
    "images": "id",
    "processing_jobs": "object_key",
    "plans": "plan_id",
}
REPO = Path(__file__).resolve().parent.parent

ORPHAN_NEW = "documents/org-1/new.pdf"
ORPHAN_FAILED = "documents/org-1/failed.pdf"
ORPHAN_WAITING = "documents/org-1/waiting.pdf"
STUCK = "documents/org-1/stuck.pdf"
ORPHANS = (ORPHAN_NEW, ORPHAN_FAILED, ORPHAN_WAITING)


# ------------------------------------------------------------------ fixtures and helpers


@pytest.fixture
def local_store(tmp_path) -> LocalStorage:
    root = tmp_path / "media"
    root.mkdir()
    return LocalStorage(root)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return request.getfixturevalue("local_store")
    return S3Storage(request.getfixturevalue("s3_client"), request.getfixturevalue("bucket"))


@pytest.fixture
def world(engine, local_store) -> World:
    return World(engine, local_store)


def naive(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc).replace(tzinfo=None)


def apply(world: World, report: ReconciliationReport, **kwargs: Any):
    """A write run with the opt-in; RemediationOptions fields and remediate's keywords mixed."""
    keywords = {
        k: kwargs.pop(k) for k in ("work_queue", "run_id", "on_batch", "lease") if k in kwargs
    }
    return remediate(
        report,
        world.engine,
        world.spec,
        world.store,
        RemediationOptions(dry_run=False, **kwargs),
        allow_writes=True,
        **keywords,
    )


def snapshot(engine: sa.Engine) -> dict[str, list[tuple]]:
    """Every row and column of the reference tables, raw as the driver returns them."""
    with engine.connect() as conn:
        return {
            table: [
                tuple(r) for r in conn.execute(sa.text(f"SELECT * FROM {table} ORDER BY {key}"))
            ]
            for table, key in REFERENCE_TABLES.items()
        }


def ledger_tables(engine: sa.Engine) -> set[str]:
    return LEDGER & set(sa.inspect(engine).get_table_names())


def rows(engine: sa.Engine, table: sa.Table) -> dict[str, dict[str, Any]]:
    """A reference table's rows by primary key, typed."""
    key = next(iter(table.primary_key.columns)).name
    with engine.connect() as conn:
        return {r[key]: dict(r) for r in conn.execute(sa.select(table)).mappings()}


def ledger_rows(engine: sa.Engine, table: sa.Table, **where: Any) -> list[dict[str, Any]]:
    if table.name not in ledger_tables(engine):
        return []
    query = sa.select(table).order_by(table.c.id if "id" in table.c else table.c.run_id)
    for column, value in where.items():
        query = query.where(table.c[column] == value)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def listing(store) -> list[str]:
    return sorted(list_storage(store).objects["key"])


def plant_every_kind(world: World) -> None:
    """Two rows of each finding kind that acts, next to rows that are fine."""
    w = world
    w.document("d-ok", w.obj("documents/org-1/kept.pdf"))
    w.document("d-gone", "documents/org-1/gone.pdf")
    w.obj("images/p1/a.jpg")
    w.obj("images/p1/a-staged.jpg")
    w.image("i-ok", "images/p1/a.jpg", "images/p1/a-staged.jpg")
    w.image("i-no-original", "images/p1/gone.jpg", "images/p1/a-staged.jpg")
    w.image("i-no-staged", "images/p1/a.jpg", "images/p1/gone-staged.jpg")
    for key in (*ORPHANS, STUCK):
        w.obj(key)
    w.job(ORPHAN_FAILED, "failed")
    w.job(ORPHAN_WAITING, "not_started")
    w.job(STUCK, "processing", started_ago=30 * HOUR)
    w.plan("p-full", 0, 2)
    w.plan("p-part", 1, 3)
    w.plan("p-ok", 1, 1)
    for plan, sheets in (("p-full", 2), ("p-part", 2), ("p-ok", 1)):
        for n in range(sheets):
            w.sheet(plan, f"s{n}")


EVERY_KIND = {
    "orphan_object": 3,
    "stuck_job": 1,
    "missing_original": 2,
    "missing_staged": 1,
    "progress_behind": 2,
}


# ------------------------------------------------------------------ 1. per-kind effects


def test_every_kind_has_its_effect_and_no_object_is_deleted(engine, store) -> None:
    world = World(engine, store)
    plant_every_kind(world)
    report = world.reconcile()
    assert kinds(report) == EVERY_KIND
    objects = listing(store)
    docs0, images0 = rows(engine, schema.documents), rows(engine, schema.images)
    jobs0 = rows(engine, schema.processing_jobs)
    started = naive(datetime.now(timezone.utc))

    result = apply(world, report, max_change_ratio=1.0, batch_size=2)

    assert result.counts["marked_error"] == 3
    assert (result.counts["jobs_created"], result.counts["jobs_reset"]) == (1, 1)
    assert result.counts["retried"] == 1
    assert result.counts["progress_fixed"] == 2
    assert result.counts["requeued"] == 4
    assert result.updated == 8
    finished = naive(datetime.now(timezone.utc))

    # missing_original / missing_staged: error, the kind's message, updated_at now
    docs, images = rows(engine, schema.documents), rows(engine, schema.images)
    for row, message in (
        (docs["d-gone"], "original missing in storage"),
        (images["i-no-original"], "original missing in storage"),
        (images["i-no-staged"], "staged missing in storage"),
    ):
        assert (row["status"], row["error"]) == ("error", message)
        assert started <= row["updated_at"] <= finished
    assert docs["d-ok"] == docs0["d-ok"] and images["i-ok"] == images0["i-ok"]
    assert docs["d-gone"]["created_at"] == docs0["d-gone"]["created_at"]

    # orphan_object: created, reset from failed, or left as it is (already not_started); stuck_job
    jobs = rows(engine, schema.processing_jobs)
    assert jobs[ORPHAN_NEW]["status"] == "not_started" and jobs[ORPHAN_NEW]["attempts"] == 0
    assert started <= jobs[ORPHAN_NEW]["updated_at"] <= finished
    assert jobs[ORPHAN_FAILED]["status"] == "not_started"
    assert jobs[ORPHAN_FAILED]["attempts"] == 0
    assert started <= jobs[ORPHAN_FAILED]["updated_at"] <= finished
    assert jobs[ORPHAN_WAITING] == jobs0[ORPHAN_WAITING]  # already not_started: only queued
    assert (jobs[STUCK]["status"], jobs[STUCK]["attempts"]) == ("not_started", 1)
    assert started <= jobs[STUCK]["updated_at"] <= finished

    entries = ledger_rows(engine, queue)
    assert sorted(e["object_key"] for e in entries) == sorted([*ORPHANS, STUCK])
    assert {(e["state"], e["backend"], e["run_id"], e["bucket"]) for e in entries} == {
        ("pending", "table", result.run_id, store.bucket)
    }
    reasons = {e["object_key"]: e["reason"] for e in entries}
    assert reasons[STUCK] == "stuck_job" and reasons[ORPHAN_NEW] == "orphan_object"

    # progress_behind: counters from storage; complete only when every page is there
    plans = rows(engine, schema.plans)
    full, part, ok = plans["p-full"], plans["p-part"], plans["p-ok"]
    assert (full["completed_pages"], full["status"], full["reconciled"]) == (2, "complete", True)
    assert started <= full["completed_at"] <= finished
    assert started <= full["reconciled_at"] <= finished
    assert (part["completed_pages"], part["status"], part["reconciled"]) == (2, "processing", True)
    assert part["completed_at"] is None and started <= part["reconciled_at"] <= finished
    assert (ok["completed_pages"], ok["reconciled"], ok["reconciled_at"]) == (1, False, None)

    # every change audited, and objects are never deleted
    records = ledger_rows(engine, audit, run_id=result.run_id)
    assert sorted(r["action"] for r in records) == sorted(
        ["mark_error"] * 3
        + ["create_job", "reset_job", "retry_job", "requeue"]
        + ["fix_progress"] * 2
    )
    assert listing(store) == objects


def test_the_waiting_orphan_keeps_its_row_and_is_only_queued(world: World) -> None:
    plant_every_kind(world)
    before = rows(world.engine, schema.processing_jobs)[ORPHAN_WAITING]
    result = apply(world, world.reconcile(), max_change_ratio=1.0, kinds=("orphan_object",))
    assert rows(world.engine, schema.processing_jobs)[ORPHAN_WAITING] == before
    assert result.counts["requeued"] == 3 and result.updated == 2
    record = ledger_rows(world.engine, audit, row_key=ORPHAN_WAITING)
    assert [(r["action"], r["before"] == r["after"]) for r in record] == [("requeue", True)]


# ------------------------------------------------------------------ 2. dry run


def test_dry_run_writes_nothing_and_counts_what_the_apply_does(world: World) -> None:
    plant_every_kind(world)
    report = world.reconcile()
    before = snapshot(world.engine)

    dry = remediate(
        report,
        world.engine,
        world.spec,
        world.store,
        RemediationOptions(max_change_ratio=1.0, batch_size=2),
        allow_writes=False,
    )

    assert dry.dry_run and dry.updated == 8
    assert snapshot(world.engine) == before
    assert ledger_tables(world.engine) == set()

    applied = apply(world, report, max_change_ratio=1.0, batch_size=2)
    assert dict(applied.counts) == dict(dry.counts)
    assert applied.planned == dry.planned and applied.batches == dry.batches
    assert snapshot(world.engine) != before


# ------------------------------------------------------------------ 3. re-check before writing


def test_rows_are_rechecked_before_writing(world: World) -> None:
    engine = world.engine
    for n in range(10):
        world.document(f"d{n}", world.obj(f"documents/org-1/ok{n}.pdf"))
    world.document("arrived", "documents/org-1/arrived.pdf")
    world.document("status-changed", "documents/org-1/s.pdf")
    world.document("touched", "documents/org-1/t.pdf")
    world.document("still-gone", "documents/org-1/g.pdf")
    world.obj(ORPHAN_FAILED)
    world.job(ORPHAN_FAILED, "failed")
    world.plan("p", 0, 1)
    world.sheet("p", "s0")
    report = world.reconcile()
    assert kinds(report) == {"missing_original": 4, "orphan_object": 1, "progress_behind": 1}

    # after the inventory: an object arrives, rows change (status, or only updated_at)
    world.obj("documents/org-1/arrived.pdf")
    later = naive(world.base + timedelta(minutes=5))
    with engine.begin() as conn:
        d = schema.documents
        conn.execute(
            d.update()
            .where(d.c.id == "status-changed")
            .values(status="processing", updated_at=later)
        )
        conn.execute(d.update().where(d.c.id == "touched").values(updated_at=later))
        j = schema.processing_jobs
        conn.execute(
            j.update()
            .where(j.c.object_key == ORPHAN_FAILED)
            .values(status="processing", updated_at=later)
        )
        p = schema.plans
        conn.execute(p.update().where(p.c.plan_id == "p").values(status="paused", updated_at=later))
    changed = snapshot(engine)

    result = apply(world, report, max_change_ratio=1.0)

    assert result.counts["skipped_present"] == 1
    assert result.counts["skipped_changed"] == 4
    assert result.counts["marked_error"] == 1 and result.updated == 1
    docs = rows(engine, schema.documents)
    assert docs["arrived"]["status"] == "complete"
    assert (docs["status-changed"]["status"], docs["status-changed"]["updated_at"]) == (
        "processing",
        later,
    )
    assert (docs["touched"]["status"], docs["touched"]["updated_at"]) == ("complete", later)
    assert docs["still-gone"]["status"] == "error"
    after = snapshot(engine)
    assert after["processing_jobs"] == changed["processing_jobs"]
    assert after["plans"] == changed["plans"]
    assert ledger_rows(engine, queue) == []
    assert [r["row_key"] for r in ledger_rows(engine, audit)] == ["still-gone"]


# ------------------------------------------------------------------ 4. a concurrent writer


def _insert_documents(world: World, items: list[tuple[str, str]], status: str = "complete") -> None:
    at = naive(world.base)
    with world.engine.begin() as conn:
        conn.execute(
            schema.documents.insert(),
            [
                dict(
                    id=i,
                    organization_id="org-1",
                    r2_key=k,
                    status=status,
                    created_at=at,
                    updated_at=at,
                )
                for i, k in items
            ],
        )


def test_a_writer_fixing_rows_during_the_run_never_loses_a_fix(world: World) -> None:
    """The app fixes rows (uploads the object, and/or sets status and updated_at) while
    remediation runs in small batches: no row it fixed ends up `error`, and every fix shows."""
    engine, store = world.engine, world.store
    size, batch_size = 300, 10
    items = [(f"r{n:03d}", f"documents/org-1/late-{n:03d}.pdf") for n in range(size)]
    _insert_documents(world, items)
    report = world.reconcile()
    assert len(found(report, "missing_original")) == size
    options = RemediationOptions(dry_run=False, batch_size=batch_size, force=True, pause=0.01)
    plan = plan_remediation(report, options)
    batch_of = {row_id: i // batch_size for i, row_id in enumerate(plan["row_id"])}

    rng = random.Random(7)
    picks = rng.sample(items, size // 2)
    modes = {row_id: ("both", "row", "upload")[n % 3] for n, (row_id, _) in enumerate(picks)}
    stamps: dict[str, datetime] = {}
    uploaded_at: dict[str, float] = {}
    batch_done: dict[int, float] = {}
    first_batch = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            first_batch.wait(10)
            d = schema.documents
            for row_id, key in picks:
                if modes[row_id] in ("both", "upload"):
                    store.put_bytes(key, b"late")
                    uploaded_at[row_id] = time.monotonic()
                if modes[row_id] in ("both", "row"):
                    stamp = naive(datetime.now(timezone.utc))
                    with engine.begin() as conn:
                        conn.execute(
                            d.update()
                            .where(d.c.id == row_id)
                            .values(status="complete", error=None, updated_at=stamp)
                        )
                    stamps[row_id] = stamp
                time.sleep(0.002)
        except BaseException as exc:  # surfaced in the test's thread
            errors.append(exc)

    def on_batch(number: int, total: int) -> None:
        batch_done[number - 1] = time.monotonic()
        first_batch.set()

    thread = threading.Thread(target=writer)
    thread.start()
    start = time.monotonic()
    try:
        result = remediate(
            report, engine, world.spec, store, options, allow_writes=True, on_batch=on_batch
        )
    finally:
        first_batch.set()
        thread.join(30)
    assert not errors, errors
    assert len(stamps) == 100 and len(uploaded_at) == 100

    docs = rows(engine, schema.documents)
    # every row fix is visible: nothing remediation wrote overwrote it
    for row_id, stamp in stamps.items():
        assert (docs[row_id]["status"], docs[row_id]["updated_at"], docs[row_id]["error"]) == (
            "complete",
            stamp,
            None,
        ), row_id
    # an object uploaded before its batch's re-check began: the row is never marked error
    for row_id, at in uploaded_at.items():
        batch = batch_of[row_id]
        recheck_began = start if batch == 0 else batch_done[batch - 1]
        if at < recheck_began:
            assert docs[row_id]["status"] == "complete", row_id
    # rows nobody fixed are marked; audit and table agree exactly
    fixed = set(modes)
    assert all(docs[r]["status"] == "error" for r, _ in items if r not in fixed)
    marked = {  # marks undone after the commit (their object appeared) are flagged as undone
        r["row_key"]
        for r in ledger_rows(engine, audit, run_id=result.run_id, action="mark_error")
        if r["rolled_back_by"] is None
    }
    assert result.counts["marked_error"] == len(marked)
    assert {r for r, row in docs.items() if row["status"] == "error"} == marked - set(stamps)
    # the race was real: some fixes came before their batch, some after it was marked
    assert result.counts["skipped_changed"] + result.counts["skipped_present"] > 0
    assert marked & set(stamps)


# ------------------------------------------------------------------ 5. SIGKILL mid-run


def _count_audit(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(AUDIT_TABLE):
            return 0
        return conn.execute(sa.select(sa.func.count()).select_from(audit)).scalar_one()


@pytest.mark.e2e
@pytest.mark.parametrize(
    "hang_after", [3, 6], ids=["killed-in-a-create_job-batch", "killed-in-a-mark_error-batch"]
)
def test_sigkill_mid_run_leaves_whole_batches_and_a_second_run_converges(
    world: World, tmp_path, hang_after: int
) -> None:
    """The worker commits `hang_after` batches, then stops inside the next batch's transaction
    right after its first write, and is killed there: that batch must leave no trace."""
    engine, store = world.engine, world.store
    orphans, missing, batch_size = 40, 160, 10
    for n in range(orphans):
        world.obj(f"documents/org-2/up-{n:03d}.pdf")
    _insert_documents(
        world, [(f"r{n:03d}", f"documents/org-1/gone-{n:03d}.pdf") for n in range(missing)]
    )
    report = world.reconcile()
    assert kinds(report) == {"orphan_object": orphans, "missing_original": missing}
    path = report.save(tmp_path / "report.parquet")
    url = engine.url.render_as_string(hide_password=False)
    run_id = "killed-" + uuid.uuid4().hex[:8]
    argv = [url, str(store.root), str(path), run_id, str(batch_size), "0.01", str(hang_after)]

    process = subprocess.Popen(
        [sys.executable, "-m", "integrity_tests.remediation_worker", *argv],
        cwd=REPO,
        env={**os.environ, **ALLOW},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    try:
        while _count_audit(engine) < hang_after * batch_size:
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the worker made no progress"
            time.sleep(0.005)
        ready, _, _ = select.select([process.stdout], [], [], 20)
        assert ready and process.stdout.readline().strip() == "in-transaction"
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.communicate(timeout=10)
    assert process.returncode == -signal.SIGKILL

    # whole batches only: every audited change is in the table and nothing else changed
    records = ledger_rows(engine, audit, run_id=run_id)
    assert len(records) == hang_after * batch_size
    [run] = ledger_rows(engine, remediation_runs, run_id=run_id)
    assert run["state"] == "running" and run["batches"] == hang_after
    by_action = {
        a: {r["row_key"] for r in records if r["action"] == a} for a in ("create_job", "mark_error")
    }
    assert sum(map(len, by_action.values())) == len(records)
    assert all(len(keys) % batch_size == 0 for keys in by_action.values())
    assert set(rows(engine, schema.processing_jobs)) == by_action["create_job"]
    assert {e["object_key"] for e in ledger_rows(engine, queue)} == by_action["create_job"]
    assert len(ledger_rows(engine, queue)) == len(by_action["create_job"])
    docs = rows(engine, schema.documents)
    assert {r for r, row in docs.items() if row["status"] == "error"} == by_action["mark_error"]

    # run again: it finishes the rest and converges
    again = apply(world, world.reconcile(), force=True, batch_size=50)
    assert again.counts["marked_error"] == missing - len(by_action["mark_error"])
    assert again.counts["jobs_created"] == orphans - len(by_action["create_job"])
    assert again.counts["already_queued"] == len(by_action["create_job"])
    final = world.reconcile(min_age=timedelta(0))
    assert set(kinds(final)) <= {"orphan_object"}
    assert all(row["status"] == "error" for row in rows(engine, schema.documents).values())
    assert len(rows(engine, schema.processing_jobs)) == orphans
    everything = ledger_rows(engine, audit)
    assert len(everything) == orphans + missing
    assert len({(r["table_name"], r["row_key"]) for r in everything}) == orphans + missing
    assert sorted(e["object_key"] for e in ledger_rows(engine, queue)) == sorted(
        f"documents/org-2/up-{n:03d}.pdf" for n in range(orphans)
    )


# ------------------------------------------------------------------ 5b. killed runs: the lease


def test_a_live_run_keeps_its_lease_through_a_long_gap_between_batches(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing commits for two lease lengths (the pause stands for a long storage re-check): the
    timer keeps the run's lease, so it reads as running, no other run records it as failed, and
    rolling it back is refused while it lives."""
    engine = world.engine
    lease = 1.0
    _insert_documents(world, [(f"r{n}", f"documents/org-1/gone-{n}.pdf") for n in range(2)])
    seen: dict[str, Any] = {}

    def look(run_id: str) -> None:
        time.sleep(2.0)  # two lease lengths after batch 1 committed, one before batch 2
        [seen["run"]] = [r for r in run_history(engine, lease=lease) if r["run_id"] == run_id]
        seen["claimed"] = fail_interrupted_runs(engine, by="another-run", lease=lease)
        try:
            rollback(engine, run_id, dry_run=False, allow_writes=True, lease=lease)
        except TargetStillRunning as exc:
            seen["refused"] = str(exc)

    run_id = "live-" + uuid.uuid4().hex[:8]
    watcher = threading.Thread(target=look, args=(run_id,))

    def after(number: int, total: int) -> None:
        if number == 1:
            watcher.start()

    result = apply(
        world,
        world.reconcile(),
        force=True,
        batch_size=1,
        pause=3.0,
        run_id=run_id,
        on_batch=after,
        lease=lease,
    )
    watcher.join()

    assert seen["run"]["state"] == "running" and seen["run"]["interrupted"] is False
    assert seen["claimed"] == []
    assert seen["refused"].startswith(f"run {run_id} is still running (its lease runs until ")
    assert result.counts["marked_error"] == 2 and result.batches == 2
    [run] = ledger_rows(engine, remediation_runs, run_id=run_id)
    assert (run["state"], run["batches"], run["failed_by"]) == ("completed", 2, None)
    assert len(ledger_rows(engine, audit, run_id=run_id)) == 2  # nothing rolled back meanwhile


def test_a_killed_run_reads_as_interrupted_once_its_lease_runs_out_and_rolls_back_exactly(
    world: World, tmp_path: Path
) -> None:
    """SIGKILL inside batch 4: the run stays `running` in the ledger, every reader sees it as
    failed once its lease has run out, one of two runs finding it records it, and its three
    committed batches roll back to exactly what was there."""
    engine, store = world.engine, world.store
    for n in range(4):
        world.obj(f"documents/org-2/up-{n}.pdf")
    _insert_documents(world, [(f"r{n}", f"documents/org-1/gone-{n}.pdf") for n in range(4)])
    original = snapshot(engine)
    path = world.reconcile().save(tmp_path / "report.parquet")
    run_id = "killed-" + uuid.uuid4().hex[:8]

    kill_mid_batch(engine, store.root, path, run_id, batch_size=2, hang_after=3, lease=1.0)

    [run] = ledger_rows(engine, remediation_runs, run_id=run_id)
    assert (run["state"], run["batches"]) == ("running", 3)  # nothing recorded its end
    wait_for_lease_to_run_out(engine, run_id)
    [seen] = [r for r in run_history(engine) if r["run_id"] == run_id]
    assert (seen["state"], seen["interrupted"], seen["failed_by"]) == ("failed", True, None)
    [run] = ledger_rows(engine, remediation_runs, run_id=run_id)
    assert run["state"] == "running"  # reading records nothing

    with ThreadPoolExecutor(max_workers=2) as pool:
        claims = list(pool.map(lambda by: fail_interrupted_runs(engine, by=by), ["a", "b"]))
    assert sorted(len(c) for c in claims) == [0, 1]
    winner = "a" if claims[0] else "b"
    [claimed] = claims[0] or claims[1]
    assert (claimed["run_id"], claimed["state"], claimed["batches"]) == (run_id, "failed", 3)
    [run] = ledger_rows(engine, remediation_runs, run_id=run_id)
    assert (run["state"], run["failed_by"]) == ("failed", winner)
    [seen] = [r for r in run_history(engine) if r["run_id"] == run_id]
    assert (seen["state"], seen["interrupted"]) == ("failed", True)
    assert fail_interrupted_runs(engine, by="c") == []

    undone = rollback(engine, run_id, dry_run=False, allow_writes=True)
    assert (undone.counts["removed"], undone.counts["restored"]) == (4, 2)
    assert undone.counts["queue_cancelled"] == 4
    assert snapshot(engine) == original
    [run] = ledger_rows(engine, remediation_runs, run_id=undone.run_id)
    assert run["state"] == "completed"


def test_a_run_recorded_as_failed_while_alive_stops_before_its_next_batch(world: World) -> None:
    """Another run judged this one dead (an overlong stall, say) and recorded it as failed: its
    next batch writes nothing, the run stops with one line naming that run, and the record
    stays failed (a rollback of what it did cannot miss a later batch)."""
    engine = world.engine
    _insert_documents(world, [(f"r{n}", f"documents/org-1/gone-{n}.pdf") for n in range(3)])
    run_id = "stalled-" + uuid.uuid4().hex[:8]

    def recorded_elsewhere(number: int, total: int) -> None:
        if number == 1:  # as fail_interrupted_runs does, on a run it judged expired
            with engine.begin() as conn:
                conn.execute(
                    remediation_runs.update()
                    .where(remediation_runs.c.run_id == run_id)
                    .values(state="failed", failed_by="the-other-run")
                )

    with pytest.raises(DatabaseError) as raised:
        apply(
            world,
            world.reconcile(),
            force=True,
            batch_size=1,
            run_id=run_id,
            on_batch=recorded_elsewhere,
        )
    assert str(raised.value) == (
        f"run {run_id} was recorded as interrupted by run the-other-run because its lease ran "
        "out (no sign of life for longer than the lease); it stops here, and its earlier "
        "batches stay applied"
    )
    [run] = ledger_rows(engine, remediation_runs, run_id=run_id)
    assert (run["state"], run["failed_by"], run["batches"]) == ("failed", "the-other-run", 1)
    assert len(ledger_rows(engine, audit, run_id=run_id)) == 1
    statuses = [r["status"] for r in rows(engine, schema.documents).values()]
    assert sorted(statuses) == ["complete", "complete", "error"]


@pytest.mark.parametrize(
    ("value", "seconds"), [(None, 180.0), ("", 180.0), ("2.5", 2.5), (" 60 ", 60.0)]
)
def test_the_lease_length_comes_from_the_environment(value: str | None, seconds: float) -> None:
    environ = {} if value is None else {settings.ENV_RUN_LEASE: value}
    assert Settings.from_env(environ).lease_seconds() == seconds


@pytest.mark.parametrize("value", ["0", "-5", "soon", "nan", "inf", "100000"])
def test_a_bad_lease_length_is_one_line_naming_the_variable(value: str) -> None:
    with pytest.raises(SpecError) as raised:
        Settings.from_env({settings.ENV_RUN_LEASE: value}).lease_seconds()
    assert str(raised.value) == (
        "INTEGRITY_RUN_LEASE_SECONDS: must be a number of seconds above 0 and at most 86,400, "
        f"not {value!r}"
    )


# ------------------------------------------------------------------ 6. rollback


def test_rollback_restores_exactly_what_was_there(world: World) -> None:
    engine = world.engine
    plant_every_kind(world)
    objects = listing(world.store)
    before = snapshot(engine)
    applied = apply(world, world.reconcile(), max_change_ratio=1.0)
    after_apply = snapshot(engine)
    assert after_apply != before

    preview = rollback(engine, applied.run_id)  # dry run by default
    assert snapshot(engine) == after_apply
    assert {e["state"] for e in ledger_rows(engine, queue)} == {"pending"}

    undone = rollback(engine, applied.run_id, dry_run=False, allow_writes=True)

    assert snapshot(engine) == before
    expected = {
        "restored": 7,  # 3 marked, 1 reset, 1 retried, 2 plans
        "removed": 1,  # the job row the run created
        "unchanged": 1,  # the waiting orphan, only queued
        "skipped_changed": 0,
        "queue_cancelled": 4,
        "queue_already_delivered": 0,
    }
    assert {k: undone.summary()[k] for k in expected} == expected
    assert {k: preview.summary()[k] for k in expected} == expected
    assert ORPHAN_NEW not in rows(engine, schema.processing_jobs)
    assert {e["state"] for e in ledger_rows(engine, queue)} == {"cancelled"}
    # audited: the rollback's own records, and the originals marked as rolled back
    own = ledger_rows(engine, audit, run_id=undone.run_id)
    assert len(own) == 8 and {r["action"] for r in own} == {"rollback"}
    originals = ledger_rows(engine, audit, run_id=applied.run_id)
    assert {r["rolled_back_by"] for r in originals} == {undone.run_id}
    history = {r["run_id"]: r for r in run_history(engine)}
    assert history[undone.run_id]["kind"] == "rollback"
    assert history[undone.run_id]["target_run_id"] == applied.run_id
    assert history[undone.run_id]["state"] == "completed"

    # rolling back twice changes nothing
    twice = rollback(engine, applied.run_id, dry_run=False, allow_writes=True)
    assert twice.counts["restored"] == twice.counts["removed"] == 0
    assert snapshot(engine) == before
    assert ledger_rows(engine, audit, run_id=twice.run_id) == []
    assert listing(world.store) == objects


def test_an_audit_record_writes_old_and_new_values_in_one_form(world: World) -> None:
    """`before` is read raw (SQLite's text timestamps, PostgreSQL's timestamps) and `after` is
    recorded as the database stores it, so a person reading the JSON sees one form per column."""
    plant_every_kind(world)
    applied = apply(world, world.reconcile(), max_change_ratio=1.0)
    records = [r for r in ledger_rows(world.engine, audit, run_id=applied.run_id) if r["before"]]
    assert {r["action"] for r in records} >= {"mark_error", "reset_job", "fix_progress"}
    for record in records:
        before, after = json.loads(record["before"]), json.loads(record["after"])
        for column in before.keys() & after.keys():
            if before[column] is not None and after[column] is not None:
                assert type(before[column]) is type(after[column]), (record["action"], column)
        if world.engine.dialect.name == "sqlite":
            assert "$datetime" not in record["after"]
        else:
            assert isinstance(after["updated_at"], dict) and "$datetime" in after["updated_at"]


def test_rollback_skips_rows_changed_since_the_run(world: World) -> None:
    engine = world.engine
    plant_every_kind(world)
    before = snapshot(engine)
    applied = apply(world, world.reconcile(), max_change_ratio=1.0)
    later = naive(datetime.now(timezone.utc) + timedelta(minutes=1))
    with engine.begin() as conn:
        d, j = schema.documents, schema.processing_jobs
        conn.execute(
            d.update()
            .where(d.c.id == "d-gone")
            .values(status="complete", error=None, updated_at=later)
        )
        conn.execute(  # a worker picked up the job the run created
            j.update()
            .where(j.c.object_key == ORPHAN_NEW)
            .values(status="processing", updated_at=later)
        )

    undone = rollback(engine, applied.run_id, dry_run=False, allow_writes=True)

    assert undone.counts["skipped_changed"] == 2
    assert (undone.counts["restored"], undone.counts["removed"]) == (6, 0)
    docs, jobs = rows(engine, schema.documents), rows(engine, schema.processing_jobs)
    assert (docs["d-gone"]["status"], docs["d-gone"]["updated_at"]) == ("complete", later)
    assert (jobs[ORPHAN_NEW]["status"], jobs[ORPHAN_NEW]["updated_at"]) == ("processing", later)
    now = snapshot(engine)
    for table in ("images", "plans"):
        assert now[table] == before[table]
    skipped = [
        r for r in ledger_rows(engine, audit, run_id=applied.run_id) if r["rolled_back_by"] is None
    ]
    assert sorted(r["row_key"] for r in skipped) == sorted(["d-gone", ORPHAN_NEW])


def test_rollback_refuses_unknown_runs_and_writes_without_opt_in(world: World) -> None:
    with pytest.raises(RemediationRefused, match="nothing to roll back"):
        rollback(world.engine, "no-such-run")
    plant_every_kind(world)
    applied = apply(world, world.reconcile(), max_change_ratio=1.0)
    with pytest.raises(RemediationRefused, match="check the run id"):
        rollback(world.engine, "no-such-run", dry_run=False, allow_writes=True)
    after_apply = snapshot(world.engine)
    with pytest.raises(RemediationRefused, match="INTEGRITY_ALLOW_WRITES=1"):
        rollback(world.engine, applied.run_id, dry_run=False, allow_writes=False)
    assert snapshot(world.engine) == after_apply
    with pytest.raises(SpecError, match="batch_size"):
        rollback(world.engine, applied.run_id, batch_size=0)


# ------------------------------------------------------------------ 7. idempotence


@pytest.mark.parametrize("min_age", [None, timedelta(0)], ids=["default-age", "min-age-0"])
def test_a_second_run_changes_nothing_and_queues_nothing(world: World, min_age) -> None:
    plant_every_kind(world)
    first = apply(world, world.reconcile(), max_change_ratio=1.0)
    assert first.updated == 8
    state = snapshot(world.engine)
    entries = ledger_rows(world.engine, queue)
    records = ledger_rows(world.engine, audit)

    options = {} if min_age is None else {"min_age": min_age}
    report = world.reconcile(**options)
    # the jobs it reset are not_started now, so the orphans are found again
    assert set(kinds(report)) == {"orphan_object"}
    second = apply(world, report, max_change_ratio=1.0)

    assert second.updated == 0 and second.counts["requeued"] == 0
    assert second.counts["already_queued"] == len(found(report, "orphan_object")) == 4
    assert snapshot(world.engine) == state
    assert ledger_rows(world.engine, queue) == entries
    assert ledger_rows(world.engine, audit) == records


# ------------------------------------------------------------------ 8. circuit breaker


@pytest.mark.parametrize("wrong", ["empty", "other"])
def test_circuit_breaker_on_an_empty_or_wrong_bucket(engine, s3_client, bucket, wrong) -> None:
    world = World(engine, S3Storage(s3_client, bucket))
    for n in range(10):
        world.document(f"d{n}", world.obj(f"documents/org-1/{n}.pdf"))
    for n in range(5):
        world.image(f"i{n}", world.obj(f"images/p1/{n}.jpg"), world.obj(f"images/p1/{n}-s.jpg"))
    elsewhere = f"integrity-{wrong}-{uuid.uuid4().hex[:8]}"
    s3_client.create_bucket(Bucket=elsewhere)
    misconfigured = World(engine, S3Storage(s3_client, elsewhere), base=world.base)
    if wrong == "other":
        misconfigured.obj("documents/org-9/unrelated.pdf")
        misconfigured.obj("images/p1/0.jpg")
    report = misconfigured.reconcile()
    assert report.complete and len(found(report, "missing_original")) >= 14
    before = snapshot(engine)

    for dry_run in (True, False):
        with pytest.raises(RemediationRefused) as refused:
            remediate(
                report,
                engine,
                world.spec,
                misconfigured.store,
                RemediationOptions(dry_run=dry_run),
                allow_writes=True,
            )
        message = str(refused.value)
        assert "circuit breaker" in message and "\n" not in message
        assert all(word in message for word in ("bucket", "endpoint", "prefix", "force"))
        assert elsewhere in message
    assert snapshot(engine) == before
    assert ledger_tables(engine) == set()

    if wrong == "empty":
        forced = apply(misconfigured, report, force=True, kinds=("missing_original",))
        assert forced.counts["marked_error"] == 15
        assert {r["status"] for r in rows(engine, schema.documents).values()} == {"error"}
        assert {r["status"] for r in rows(engine, schema.images).values()} == {"error"}


def test_max_change_ratio_is_respected_at_the_boundary(world: World) -> None:
    for n in range(10):
        key = f"documents/org-1/{n}.pdf"
        world.document(f"d{n}", key)
        if n >= 2:
            world.obj(key)
    report = world.reconcile()
    assert report.table_rows["documents"] == 10
    assert len(found(report, "missing_original")) == 2  # exactly 0.2 of the table

    with pytest.raises(
        RemediationRefused, match=r"marking 2 of 10 rows of documents as error \(20%\)"
    ):
        apply(world, report, max_change_ratio=0.19)
    assert ledger_tables(world.engine) == set()

    result = apply(world, report, max_change_ratio=0.2)
    assert result.counts["marked_error"] == 2


def test_a_tenant_or_status_filter_cannot_hide_a_tripped_breaker(world: World) -> None:
    # Every row of every tenant looks missing (as with a wrong bucket); acting on one tenant's
    # or one status's share of them must still be refused, and nothing written.
    for org in ("org-1", "org-2", "org-3", "org-4", "org-5", "org-6"):
        world.document(f"{org}-a", f"documents/{org}/a.pdf", org=org)
    report = world.reconcile()
    assert len(found(report, "missing_original")) == 6
    before = snapshot(world.engine)

    for narrowed in ({"tenant": "org-1"}, {"status": "complete"}, {"limit": 1}):
        with pytest.raises(RemediationRefused, match="circuit breaker: marking 6 of 6 rows"):
            apply(world, report, **narrowed)
    assert snapshot(world.engine) == before
    assert ledger_tables(world.engine) == set()

    # Leaving mark_error out of the kinds is not a way round it, but there is then nothing to trip.
    only_requeue = apply(world, report, kinds=("orphan_object",))
    assert only_requeue.updated == 0


# ------------------------------------------------------------------ 9. refusals


def test_an_incomplete_listing_is_never_acted_on(engine, moto_endpoint, s3_client, bucket) -> None:
    from dagster_aws.s3 import S3Resource

    world = World(engine, S3Storage(s3_client, bucket))
    world.document("d-gone", "documents/org-1/gone.pdf")
    world.obj("documents/org-1/orphan.pdf")
    with FlakyProxy(moto_endpoint) as proxy:
        proxy.fail_lists_after = 1  # the top-level listing succeeds, every prefix then fails
        client = S3Resource(
            endpoint_url=proxy.endpoint, region_name="us-east-1", max_attempts=1
        ).get_client()
        flaky = World(
            engine, S3Storage(client, bucket, attempts=1, base_delay=0.01), base=world.base
        )
        report = flaky.reconcile()
    assert report.complete is False and report.reasons
    before = snapshot(engine)

    for dry_run in (True, False):
        with pytest.raises(RemediationRefused) as refused:
            remediate(
                report,
                engine,
                world.spec,
                world.store,
                RemediationOptions(dry_run=dry_run, force=True),
                allow_writes=True,
            )
        message = str(refused.value)
        assert "incomplete" in message and report.reasons[0] in message
        assert "SlowDown" in message and "\n" not in message
    assert snapshot(engine) == before
    assert ledger_tables(engine) == set()


def test_a_saved_report_marked_incomplete_is_refused_with_its_reasons(
    world: World, tmp_path
) -> None:
    plant_every_kind(world)
    saved = world.reconcile().save(tmp_path / "report.parquet")
    reason = "database: reading plans (plans) failed: connection reset"
    report = replace(ReconciliationReport.load(saved), complete=False, reasons=[reason])
    with pytest.raises(
        RemediationRefused, match=r"incomplete, so nothing is changed: database: reading plans"
    ):
        apply(world, report, max_change_ratio=1.0)
    assert ledger_tables(world.engine) == set()


@pytest.mark.parametrize(
    "environ", [{}, {"INTEGRITY_ALLOW_WRITES": "true"}, {"INTEGRITY_ALLOW_WRITES": "0"}]
)
def test_writes_need_the_opt_in(world: World, environ) -> None:
    plant_every_kind(world)
    report = world.reconcile()
    before = snapshot(world.engine)
    with pytest.raises(RemediationRefused) as refused:
        remediate(
            report,
            world.engine,
            world.spec,
            world.store,
            RemediationOptions(dry_run=False, max_change_ratio=1.0),
            allow_writes=Settings.from_env(environ).allow_writes,
        )
    assert "INTEGRITY_ALLOW_WRITES=1" in str(refused.value)
    assert snapshot(world.engine) == before
    assert ledger_tables(world.engine) == set()
    # the same run as a dry run is allowed without the opt-in
    dry = remediate(
        report,
        world.engine,
        world.spec,
        world.store,
        RemediationOptions(max_change_ratio=1.0),
        allow_writes=Settings.from_env(environ).allow_writes,
    )
    assert dry.updated == 8 and ledger_tables(world.engine) == set()


# ------------------------------------------------------------------ 10. SQS on moto


def _receive_all(sqs_client, url: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    while True:
        got = sqs_client.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=60
        ).get("Messages", [])
        if not got:
            return messages
        messages += got


def _messages_in(sqs_client, url: str) -> int:
    attributes = sqs_client.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


def _plant_uploads(world: World, count: int) -> list[str]:
    return [world.obj(f"documents/org-1/up-{n:02d}.pdf") for n in range(count)]


def test_sqs_requeue_sends_once(world: World, sqs_client, sqs_queue_url) -> None:
    keys = _plant_uploads(world, 13)  # two send_message_batch requests
    sqs = SqsQueue(sqs_client, sqs_queue_url)

    first = apply(world, world.reconcile(), work_queue=sqs, batch_size=5)

    assert first.counts["requeued"] == 13 and first.counts["jobs_created"] == 13
    messages = _receive_all(sqs_client, sqs_queue_url)
    bodies = [json.loads(m["Body"]) for m in messages]
    assert sorted(b["key"] for b in bodies) == keys
    assert {(b["bucket"], b["reason"], b["run_id"]) for b in bodies} == {
        (world.store.bucket, "orphan_object", first.run_id)
    }
    entries = ledger_rows(world.engine, queue)
    assert {(e["state"], e["backend"]) for e in entries} == {("sent", "sqs")}
    assert sorted(e["message_id"] for e in entries) == sorted(m["MessageId"] for m in messages)
    assert all(e["sent_at"] is not None for e in entries)

    second = apply(world, world.reconcile(min_age=timedelta(0)), work_queue=sqs)

    assert second.counts["already_queued"] == 13
    assert second.counts["requeued"] == 0 and second.updated == 0
    assert _messages_in(sqs_client, sqs_queue_url) == 13
    assert _receive_all(sqs_client, sqs_queue_url) == []
    assert ledger_rows(world.engine, queue) == entries


class _CrashesBeforeSending(SqsQueue):
    """The process dies after a batch commits and before its outbox rows are sent."""

    def flush(self, engine: sa.Engine) -> int:
        return 0


@pytest.mark.parametrize("next_run", ["finds-them-again", "finds-nothing"])
def test_outbox_rows_left_pending_are_sent_by_the_next_run(
    world: World, sqs_client, sqs_queue_url, next_run
) -> None:
    keys = _plant_uploads(world, 3)
    crashed = apply(
        world, world.reconcile(), work_queue=_CrashesBeforeSending(sqs_client, sqs_queue_url)
    )
    assert {e["state"] for e in ledger_rows(world.engine, queue)} == {"pending"}
    assert _messages_in(sqs_client, sqs_queue_url) == 0

    if next_run == "finds-them-again":
        report = world.reconcile(min_age=timedelta(0))
        assert len(found(report, "orphan_object")) == 3
    else:
        report = world.reconcile(min_age=timedelta(days=1))
        assert kinds(report) == {}
    again = apply(world, report, work_queue=SqsQueue(sqs_client, sqs_queue_url))

    assert again.counts["requeued"] == 0
    bodies = [json.loads(m["Body"]) for m in _receive_all(sqs_client, sqs_queue_url)]
    assert sorted(b["key"] for b in bodies) == keys
    assert {b["run_id"] for b in bodies} == {crashed.run_id}
    assert {e["state"] for e in ledger_rows(world.engine, queue)} == {"sent"}


def test_a_bad_queue_url_fails_with_one_line_and_writes_nothing(
    world: World, moto_endpoint
) -> None:
    _plant_uploads(world, 2)
    report = world.reconcile()
    before = snapshot(world.engine)
    bad = make_queue(
        f"{moto_endpoint}/123456789012/no-such-queue",
        endpoint_url=moto_endpoint,
        region="us-east-1",
    )
    assert isinstance(bad, SqsQueue)
    with pytest.raises(QueueError) as failed:
        apply(world, report, work_queue=bad)
    message = str(failed.value)
    assert "\n" not in message and "no-such-queue" in message
    assert "testing" not in message  # no credentials in errors
    assert snapshot(world.engine) == before
    assert ledger_tables(world.engine) == set()


# ------------------------------------------------------------------ 11. options


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"kinds": ("orphans",)}, "kinds"),
        ({"kinds": ("foreign_reference",)}, "kinds"),
        ({"batch_size": 0}, "batch_size"),
        ({"concurrency": 0}, "concurrency"),
        ({"limit": -1}, "limit"),
        ({"max_change_ratio": 1.5}, "max_change_ratio"),
        ({"max_change_ratio": -0.1}, "max_change_ratio"),
        ({"pause": -1.0}, "pause"),
    ],
)
def test_bad_options_raise_one_line(options: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as bad:
        RemediationOptions(**options)
    message = str(bad.value)
    assert message.startswith(f"{field}: ") and "\n" not in message


def test_filters_limit_what_is_acted_on(world: World) -> None:
    for org in ("org-1", "org-2"):
        for n in range(3):
            world.document(f"{org}-{n}", f"documents/{org}/gone-{n}.pdf", org=org)
    report = world.reconcile()

    by_tenant = apply(world, report, force=True, tenant="org-2", kinds=("missing_original",))
    assert by_tenant.counts["marked_error"] == 3
    docs = rows(world.engine, schema.documents)
    assert {r for r, row in docs.items() if row["status"] == "error"} == {
        "org-2-0",
        "org-2-1",
        "org-2-2",
    }

    limited = apply(world, world.reconcile(), force=True, limit=1)
    assert limited.counts["marked_error"] == 1
    assert (
        sum(row["status"] == "error" for row in rows(world.engine, schema.documents).values()) == 4
    )

    other_status = apply(world, world.reconcile(), force=True, status="processing")
    assert other_status.updated == 0 and other_status.planned["mark_error"] == 0
