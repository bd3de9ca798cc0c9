"""`integrity reconcile --apply` and `integrity rollback`: the CLI side of remediation.

Most cases call `integrity.cli.main` in-process (fast, with capsys); the ones whose exit code and
stderr are the point run the real command in a subprocess. The data is the demo (built once,
copied per test, so every test starts from the same planted drift) or a World on SQLite and
PostgreSQL; the queue is the integrity_queue table or an SQS queue on moto's server.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from integrity import cli, settings
from integrity.cli import common
from integrity.cli import reconcile as cli_reconcile
from integrity.clock import utcnow
from integrity.demo import EXPECTED_BY_TENANT, EXPECTED_FINDINGS, build_demo, demo_paths
from integrity.diff import ACTION_KINDS
from integrity.remediation import COMPLETED_MSG
from integrity.remediation.ledger import AUDIT_TABLE, QUEUE_TABLE, RUNS_TABLE
from integrity.storage.local import LocalStorage
from integrity_tests.remediation_worker import kill_mid_batch, wait_for_lease_to_run_out
from integrity_tests.world import FailingListings, World

REFERENCE_TABLES = ("documents", "images", "processing_jobs", "plans")
LEDGER_TABLES = {RUNS_TABLE, AUDIT_TABLE, QUEUE_TABLE}
RUN_ID = re.compile(r"[0-9a-f]{32}")
WRITES = {settings.ENV_ALLOW_WRITES: "1"}


# --------------------------------------------------------------------------- fixtures and helpers


@dataclass
class Demo:
    home: Path
    db_path: Path
    storage_dir: Path

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.db_path}"

    def engine(self) -> sa.Engine:
        return sa.create_engine(self.db_url)


@pytest.fixture(scope="module")
def demo_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("demo-template") / "home"
    build_demo(home)
    return home


@pytest.fixture
def demo(demo_template: Path, tmp_path: Path) -> Demo:
    """A private copy of the demo: every test starts from the same planted drift."""
    home = tmp_path / "home"
    shutil.copytree(demo_template, home)
    db_path, storage_dir = demo_paths(home)
    return Demo(home, db_path, storage_dir)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No opt-in, no queue URL and no defaults leak in from the environment of the test run."""
    for name in list(os.environ):
        if name.startswith("INTEGRITY_") and name != "INTEGRITY_TEST_POSTGRES_URL":
            monkeypatch.delenv(name)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`integrity ARGV` in-process: (exit code, stdout, stderr)."""
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:  # argparse's usage errors
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def reconcile(capsys: pytest.CaptureFixture[str], demo: Demo, *args: str) -> tuple[int, str, str]:
    return run(
        capsys,
        "reconcile",
        "--db-url",
        demo.db_url,
        "--storage-dir",
        str(demo.storage_dir),
        *args,
    )


def applied(capsys: pytest.CaptureFixture[str], demo: Demo, *args: str) -> dict[str, Any]:
    """`reconcile --apply --json` with writes allowed; the JSON summary."""
    code, out, err = reconcile(capsys, demo, "--apply", "--json", *args)
    assert code == 0, err
    return json.loads(out)


def subprocess_integrity(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("INTEGRITY_", "AWS_ENDPOINT_URL"))
    }
    return subprocess.run(
        [sys.executable, "-m", "integrity.cli", *args],
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def log_line(err: str) -> dict[str, Any]:
    """The structured log line: the last line on stderr, and the only JSON one."""
    lines = err.strip().splitlines()
    assert lines, "nothing on stderr"
    records = [line for line in lines if line.startswith("{")]
    assert len(records) == 1, err
    assert lines[-1] == records[0], err
    record = json.loads(records[0])
    assert record["level"] == "INFO"
    return record


def snapshot(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the reference tables, exactly as the driver returns them."""
    with engine.connect() as conn:
        return {
            t: sorted((tuple(r) for r in conn.execute(sa.text(f"SELECT * FROM {t}"))), key=repr)
            for t in REFERENCE_TABLES
        }


def ledger_tables(engine: sa.Engine) -> set[str]:
    return LEDGER_TABLES & set(sa.inspect(engine).get_table_names())


def rows(engine: sa.Engine, sql: str, **params: Any) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.text(sql), params).mappings()]


def set_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(settings.ENV_ALLOW_WRITES, "1")


# --------------------------------------------------------------------------- dry run (the default)


def test_dry_run_changes_nothing_and_previews_apply(
    demo: Demo, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = demo.engine()
    before = snapshot(engine)
    code, out, err = reconcile(capsys, demo)
    assert code == 0, err
    assert out.startswith("integrity reconcile (dry run: nothing was changed)")
    acting = {k: n for k, n in EXPECTED_FINDINGS.items() if k in ACTION_KINDS}
    assert f"remediation would act on {sum(acting.values())} findings" in out
    assert "INTEGRITY_ALLOW_WRITES=1" in out
    record = log_line(err)
    assert record["msg"] == COMPLETED_MSG
    assert record["dry_run"] is True and record["updated"] == 0 and record["requeued"] == 0
    assert {k: record[k] for k in EXPECTED_FINDINGS} == EXPECTED_FINDINGS

    # --dry-run says the same thing explicitly (for the runbook's users), in JSON too
    code, out, err = reconcile(capsys, demo, "--dry-run", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["dry_run"] is True
    assert summary["updated"] == summary["requeued"] == summary["skipped_changed"] == 0
    assert summary["planned"] == {
        "requeue": EXPECTED_FINDINGS["orphan_object"],
        "retry": EXPECTED_FINDINGS["stuck_job"],
        "mark_error": EXPECTED_FINDINGS["missing_original"] + EXPECTED_FINDINGS["missing_staged"],
        "fix_progress": EXPECTED_FINDINGS["progress_behind"],
    }
    assert "run_id" not in summary
    assert log_line(err)["dry_run"] is True
    assert snapshot(engine) == before
    assert ledger_tables(engine) == set()  # a dry run never creates integrity's own tables
    engine.dispose()


def test_cli_kinds_match_the_core() -> None:
    """--help names the acting kinds without importing pandas; they must stay the core's."""
    assert common._ACTION_KINDS == ACTION_KINDS


# --------------------------------------------------------------------------- refusals


@pytest.mark.e2e
def test_apply_without_the_opt_in_is_refused_before_any_work(demo: Demo, tmp_path: Path) -> None:
    engine = demo.engine()
    before = snapshot(engine)
    result = subprocess_integrity(
        "reconcile",
        "--apply",
        "--db-url",
        demo.db_url,
        "--storage-dir",
        str(demo.storage_dir),
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("integrity: error: --apply: writes are not enabled")
    assert "INTEGRITY_ALLOW_WRITES=1" in lines[0]
    # "1" is the only opt-in: "true" is not
    rollback = ["rollback", "--run-id", "x", "--apply", "--db-url", demo.db_url]
    result = subprocess_integrity(*rollback, cwd=tmp_path, INTEGRITY_ALLOW_WRITES="true")
    assert result.returncode == 1
    assert result.stderr.startswith("integrity: error: --apply: writes are not enabled")
    assert snapshot(engine) == before
    assert ledger_tables(engine) == set()
    engine.dispose()


@pytest.mark.e2e
def test_circuit_breaker_on_a_wrong_storage_is_one_line_and_force_overrides(
    demo: Demo, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pointed at an empty directory, every row looks missing: nothing is written."""
    empty = tmp_path / "empty-bucket"
    empty.mkdir()
    engine = demo.engine()
    before = snapshot(engine)
    args = ["reconcile", "--apply", "--db-url", demo.db_url, "--storage-dir", str(empty)]
    result = subprocess_integrity(*args, cwd=tmp_path, **WRITES)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("integrity: error: circuit breaker: marking ")
    assert "wrong bucket, endpoint or prefix" in lines[0] and "--force" in lines[0]
    assert "integrity reconcile (dry run: nothing was changed)" in result.stdout
    assert snapshot(engine) == before
    assert ledger_tables(engine) == set()

    # the dry run warns before anyone tries
    code, out, _ = run(capsys, *[a for a in args if a != "--apply"], "--json")
    assert code == 0
    assert json.loads(out)["apply_refused"].startswith("circuit breaker")

    set_writes(monkeypatch)
    code, out, err = run(capsys, *args, "--json", "--force", "--kinds", "missing_original")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["marked_error"] == summary["findings"]["missing_original"] > 0
    assert summary["dry_run"] is False
    engine.dispose()


def test_incomplete_report_with_apply_exits_3_and_changes_nothing(
    demo: Demo, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        cli_reconcile, "resolve_store", lambda args, conf: FailingListings(demo.storage_dir)
    )
    set_writes(monkeypatch)
    engine = demo.engine()
    before = snapshot(engine)
    code, out, err = run(capsys, "reconcile", "--apply", "--json", "--db-url", demo.db_url)
    assert code == cli.EXIT_INCOMPLETE
    assert json.loads(out)["complete"] is False
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "incomplete" in lines[0] and "SlowDown" in lines[0]
    assert snapshot(engine) == before
    assert ledger_tables(engine) == set()
    engine.dispose()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["reconcile", "--batch-size", "0"], "--batch-size: must be at least 1, not 0"),
        (["reconcile", "--batch-size", "ten"], "argument --batch-size: invalid int value"),
        (["reconcile", "--max-change-ratio", "2"], "--max-change-ratio: must be between 0 and 1"),
        (["reconcile", "--max-change-ratio", "nan"], "--max-change-ratio: must be between 0 and 1"),
        (["reconcile", "--kinds", "bogus"], "--kinds: unknown finding kind 'bogus'"),
        (["reconcile", "--kinds", "foreign_reference"], "--kinds: 'foreign_reference' is reported"),
        (["reconcile", "--kinds", ","], "--kinds: name at least one kind"),
        (["reconcile", "--limit", "0"], "--limit: must be at least 1"),
        (["reconcile", "--pause", "soon"], "--pause: 'soon' is not a duration"),
        (["reconcile", "--concurrency", "0"], "--concurrency: must be at least 1"),
        (["reconcile", "--queue-url", "queue-1"], "--queue-url: 'queue-1' is not an SQS queue URL"),
        (["reconcile", "--apply", "--dry-run"], "not allowed with argument --apply"),
        (["rollback"], "one of the arguments --run-id --list is required"),
        (["rollback", "--run-id", " "], "--run-id: must not be empty"),
        (["rollback", "--run-id", "x", "--batch-size", "0"], "--batch-size: must be at least 1"),
        (["rollback", "--list", "--apply"], "--apply: goes with --run-id, not with --list"),
    ],
)
def test_bad_flags_are_one_line_and_exit_2_before_any_work(
    demo: Demo,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    expected: str,
) -> None:
    set_writes(monkeypatch)  # even with writes allowed, a bad flag stops everything
    engine = demo.engine()
    before = snapshot(engine)
    extra = ["--db-url", demo.db_url]
    if args[0] == "reconcile":
        extra += ["--storage-dir", str(demo.storage_dir)]
        if "--apply" not in args:
            extra.append("--apply")
    code, out, err = run(capsys, *args, *extra)
    assert code == cli.EXIT_USAGE, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("integrity"), lines
    assert expected in lines[0], lines[0]
    assert out == ""
    assert snapshot(engine) == before
    assert ledger_tables(engine) == set()
    engine.dispose()


@pytest.mark.e2e
def test_rollback_usage_error_in_a_subprocess(tmp_path: Path) -> None:
    result = subprocess_integrity("rollback", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "integrity rollback: error: one of the arguments --run-id --list is required "
        "(see 'integrity rollback --help')"
    ]


# --------------------------------------------------------------------------- applying


def test_apply_changes_the_rows_reports_counts_and_logs_one_line(
    demo: Demo, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    set_writes(monkeypatch)
    engine = demo.engine()
    stuck_before = rows(
        engine, "SELECT object_key, attempts FROM processing_jobs WHERE status = 'processing'"
    )
    code, out, err = reconcile(capsys, demo, "--apply", "--json")
    assert code == 0, err
    summary = json.loads(out)
    marks = EXPECTED_FINDINGS["missing_original"] + EXPECTED_FINDINGS["missing_staged"]
    queued = EXPECTED_FINDINGS["orphan_object"] + EXPECTED_FINDINGS["stuck_job"]
    assert summary["dry_run"] is False
    assert RUN_ID.fullmatch(summary["run_id"])
    assert summary["marked_error"] == marks
    assert summary["progress_fixed"] == EXPECTED_FINDINGS["progress_behind"]
    assert summary["retried"] == EXPECTED_FINDINGS["stuck_job"]
    assert summary["requeued"] == queued
    assert summary["skipped_changed"] == 0
    assert summary["updated"] == sum(
        summary[k]
        for k in ("marked_error", "progress_fixed", "jobs_created", "jobs_reset", "retried")
    )
    assert summary["queue"] == "table integrity_queue"
    assert summary["findings"] == EXPECTED_FINDINGS  # what the diff found before acting

    record = log_line(err)
    assert record["msg"] == COMPLETED_MSG
    assert record["run_id"] == summary["run_id"]
    assert record["dry_run"] is False
    for key in ("updated", "requeued", "skipped_changed"):
        assert record[key] == summary[key]

    addendum = rows(engine, "SELECT status, error FROM documents WHERE id = 'doc-globex-addendum'")
    assert addendum == [{"status": "error", "error": "original missing in storage"}]
    plan = rows(engine, "SELECT * FROM plans WHERE plan_id = 'plan-depot-site'")[0]
    assert plan["completed_pages"] == plan["total_pages"] and plan["status"] == "complete"
    assert plan["reconciled"] and plan["reconciled_at"] and plan["completed_at"]
    for job in stuck_before:
        (after,) = rows(
            engine,
            "SELECT status, attempts FROM processing_jobs WHERE object_key = :k",
            k=job["object_key"],
        )
        if after["status"] != "processing":  # only the stuck one is retried
            assert after == {"status": "not_started", "attempts": job["attempts"] + 1}
    queue = rows(engine, f"SELECT object_key, state, run_id FROM {QUEUE_TABLE}")
    assert len(queue) == queued
    assert {q["state"] for q in queue} == {"pending"}
    assert {q["run_id"] for q in queue} == {summary["run_id"]}
    audited = rows(
        engine, f"SELECT count(*) AS n FROM {AUDIT_TABLE} WHERE run_id = :r", r=summary["run_id"]
    )
    assert audited[0]["n"] >= summary["updated"]

    # and the readable summary of a second run says what happened and how to undo it
    code, out, err = reconcile(capsys, demo, "--apply")
    assert code == 0, err
    assert out.startswith("integrity reconcile --apply")
    assert "remediation applied: run " in out
    assert "nothing was changed, so there is nothing to undo." in out
    engine.dispose()


def test_second_apply_changes_nothing_and_queues_nothing(
    demo: Demo, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    set_writes(monkeypatch)
    engine = demo.engine()
    first = applied(capsys, demo)
    assert first["updated"] > 0
    after_first = snapshot(engine)
    queue_first = rows(engine, f"SELECT * FROM {QUEUE_TABLE} ORDER BY id")
    second = applied(capsys, demo)
    assert second["run_id"] != first["run_id"]
    assert second["updated"] == second["requeued"] == second["skipped_changed"] == 0
    # the orphan whose job already was not_started is found again by the diff, but waits in the queue
    assert second["already_queued"] == second["findings"]["orphan_object"]
    assert snapshot(engine) == after_first
    assert rows(engine, f"SELECT * FROM {QUEUE_TABLE} ORDER BY id") == queue_first
    engine.dispose()


def test_human_summary_names_the_run_and_the_rollback(
    demo: Demo, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    set_writes(monkeypatch)
    code, out, err = reconcile(capsys, demo, "--apply")
    assert code == 0, err
    run_id = log_line(err)["run_id"]
    assert f"remediation applied: run {run_id}" in out
    assert re.search(r"^\s+marked_error\s+3\s", out, re.M)
    assert re.search(r"^\s+requeued\s+4\s", out, re.M)
    assert re.search(r"^\s+skipped_changed\s+0\s", out, re.M)
    assert f"undo:   integrity rollback --run-id {run_id}" in out
    assert f"WHERE run_id = '{run_id}'" in out


def test_project_id_is_an_alias_of_tenant_and_limits_the_writes(
    demo: Demo, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    set_writes(monkeypatch)
    engine = demo.engine()
    _, out, _ = reconcile(capsys, demo, "--json", "--tenant", "org-globex")
    by_tenant = json.loads(out)
    summary = applied(capsys, demo, "--project-id", "org-globex")
    assert summary["scope"] == by_tenant["scope"] == "org-globex"
    assert summary["findings"] == by_tenant["findings"]
    globex = EXPECTED_BY_TENANT["org-globex"]
    assert summary["marked_error"] == globex["missing_original"]
    assert summary["progress_fixed"] == globex["progress_behind"]
    assert summary["retried"] == 0
    # only org-globex's objects are queued; org-acme's stuck job is still processing
    queued = [r["object_key"] for r in rows(engine, f"SELECT object_key FROM {QUEUE_TABLE}")]
    assert len(queued) == summary["requeued"] == globex["orphan_object"]
    assert all(k.startswith("documents/org-globex/") for k in queued)
    assert {"object_key": "documents/org-acme/drawings/elevations.pdf"} in rows(
        engine, "SELECT object_key FROM processing_jobs WHERE status = 'processing'"
    )
    engine.dispose()


def test_kinds_limit_and_status_choose_what_is_acted_on(
    demo: Demo, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    set_writes(monkeypatch)
    engine = demo.engine()
    # the report lists the two missing originals before the missing staged image
    marks = applied(capsys, demo, "--kinds", "missing_original,missing_staged", "--limit", "2")
    assert marks["planned"] == {"requeue": 0, "retry": 0, "mark_error": 2, "fix_progress": 0}
    assert marks["marked_error"] == 2
    assert marks["requeued"] == marks["progress_fixed"] == marks["retried"] == 0
    assert rows(engine, "SELECT status FROM images WHERE id = 'img-101'") == [{"status": "ready"}]

    # img-101, the image whose staged file is missing, is the only 'ready' row left to act on
    ready = applied(capsys, demo, "--status", "ready", "--batch-size", "1", "--concurrency", "1")
    assert ready["planned"] == {"requeue": 0, "retry": 0, "mark_error": 1, "fix_progress": 0}
    assert ready["marked_error"] == 1 and ready["batches"] == 1
    assert rows(engine, "SELECT status, error FROM images WHERE id = 'img-101'") == [
        {"status": "error", "error": "staged missing in storage"}
    ]
    assert rows(engine, f"SELECT count(*) AS n FROM {QUEUE_TABLE}") == [{"n": 0}]
    engine.dispose()


# --------------------------------------------------------------------------- rollback


def test_rollback_dry_run_then_apply_restores_what_was_there(
    demo: Demo, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = demo.engine()
    original = snapshot(engine)
    set_writes(monkeypatch)
    run_id = applied(capsys, demo)["run_id"]
    changed = snapshot(engine)
    assert changed != original
    monkeypatch.delenv(settings.ENV_ALLOW_WRITES)

    code, out, err = run(capsys, "rollback", "--run-id", run_id, "--db-url", demo.db_url)
    assert code == 0, err
    assert out.startswith(f"integrity rollback of run {run_id} (dry run: nothing was changed)")
    assert f"INTEGRITY_ALLOW_WRITES=1 integrity rollback --run-id {run_id} --apply" in out
    code, out, err = run(capsys, "rollback", "--run-id", run_id, "--db-url", demo.db_url, "--json")
    dry = json.loads(out)
    assert dry["dry_run"] is True and dry["rolled_back_run_id"] == run_id
    assert dry["restored"] > 0 and dry["queue_cancelled"] > 0
    record = log_line(err)
    assert record["msg"] == "rollback: completed" and record["restored"] == dry["restored"]
    assert snapshot(engine) == changed  # the dry run restored nothing

    code, out, err = run(capsys, "rollback", "--run-id", run_id, "--apply", "--db-url", demo.db_url)
    assert code == 1 and "writes are not enabled" in err  # the opt-in again
    set_writes(monkeypatch)
    code, out, err = run(
        capsys, "rollback", "--run-id", run_id, "--apply", "--json", "--db-url", demo.db_url
    )
    assert code == 0, err
    done = json.loads(out)
    assert done["dry_run"] is False
    for key in ("restored", "removed", "queue_cancelled", "skipped_changed"):
        assert done[key] == dry[key], key
    assert snapshot(engine) == original  # exactly what was there
    queue = rows(engine, f"SELECT state FROM {QUEUE_TABLE}")
    assert {q["state"] for q in queue} == {"cancelled"}

    again = json.loads(
        run(capsys, "rollback", "--run-id", run_id, "--apply", "--json", "--db-url", demo.db_url)[1]
    )
    assert again["restored"] == again["removed"] == again["queue_cancelled"] == 0

    code, out, err = run(capsys, "rollback", "--list", "--json", "--db-url", demo.db_url)
    assert code == 0, err
    runs = json.loads(out)["runs"]
    assert [r["kind"] for r in runs] == ["rollback", "rollback", "remediate"]
    assert runs[-1]["run_id"] == run_id and runs[-1]["state"] == "completed"
    assert runs[1]["target_run_id"] == run_id and runs[1]["counts"]["restored"] == dry["restored"]
    code, out, _ = run(capsys, "rollback", "--list", "--db-url", demo.db_url)
    assert run_id in out and "undid " + run_id in out
    engine.dispose()


def test_rollback_of_an_unknown_run_is_one_line(
    demo: Demo, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = run(capsys, "rollback", "--run-id", "no-such-run", "--db-url", demo.db_url)
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [
        f"integrity: error: no audit records in sqlite:///{demo.db_path}: nothing to roll back "
        "('integrity rollback --list' shows the recent runs)"
    ]
    code, out, _ = run(capsys, "rollback", "--list", "--db-url", demo.db_url)
    assert code == 0 and out.startswith("no remediation runs recorded")
    set_writes(monkeypatch)
    applied(capsys, demo)
    code, out, err = run(capsys, "rollback", "--run-id", "no-such-run", "--db-url", demo.db_url)
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "run no-such-run has no audit records" in lines[0]
    # a run that is known but changed nothing (the second of two) says so
    idle = applied(capsys, demo)
    assert idle["updated"] == idle["requeued"] == 0
    code, out, err = run(capsys, "rollback", "--run-id", idle["run_id"], "--db-url", demo.db_url)
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [
        f"integrity: error: run {idle['run_id']} changed nothing (no audit records), "
        "so there is nothing to roll back"
    ]


# --------------------------------------------------------------------------- SQS


def test_queue_url_sends_the_requeued_objects_to_sqs(
    demo: Demo,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    sqs_client,
    sqs_queue_url: str,
) -> None:
    set_writes(monkeypatch)
    engine = demo.engine()
    monkeypatch.setenv(settings.ENV_QUEUE_URL, sqs_queue_url)  # the environment's queue ...
    summary = applied(capsys, demo)
    assert summary["queue"] == f"SQS queue {sqs_queue_url.rsplit('/', 1)[-1]}"
    messages = []
    while True:
        got = sqs_client.receive_message(QueueUrl=sqs_queue_url, MaxNumberOfMessages=10)
        if not got.get("Messages"):
            break
        messages += [json.loads(m["Body"]) for m in got["Messages"]]
    assert len(messages) == summary["requeued"] > 0
    assert {m["run_id"] for m in messages} == {summary["run_id"]}
    assert {m["bucket"] for m in messages} == {demo.storage_dir.name}
    outbox = rows(engine, f"SELECT object_key, backend, state FROM {QUEUE_TABLE}")
    assert {(r["backend"], r["state"]) for r in outbox} == {("sqs", "sent")}
    assert sorted(m["key"] for m in messages) == sorted(r["object_key"] for r in outbox)

    # ... and the flag wins over it: a queue that does not exist fails before anything is written
    missing = sqs_queue_url.rsplit("/", 1)[0] + "/no-such-queue"
    before = snapshot(engine)
    code, out, err = reconcile(capsys, demo, "--apply", "--queue-url", missing)
    assert code == 1 and out == ""
    assert err.strip().splitlines() == [
        "integrity: error: reading SQS queue no-such-queue failed: "
        "AWS.SimpleQueueService.NonExistentQueue"
    ], err
    assert snapshot(engine) == before
    engine.dispose()


# --------------------------------------------------------------------------- the demo command


def test_demo_previews_remediation_and_logs_one_line(
    demo: Demo, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "demo", "--home", str(demo.home), "--no-reset", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["findings"] == EXPECTED_FINDINGS
    assert sum(summary["planned"].values()) == sum(
        n for k, n in EXPECTED_FINDINGS.items() if k in ACTION_KINDS
    )
    record = log_line(err)
    assert record["msg"] == COMPLETED_MSG and record["dry_run"] is True
    assert re.search(r"INTEGRITY_ALLOW_WRITES=1 \S*integrity reconcile --apply", err), err


# --------------------------------------------------------------------------- SQLite and PostgreSQL


def _plant(world: World) -> None:
    """A missing original among six documents (under the breaker's 0.2), an orphan upload, a job
    stuck for two days, and a plan two pages behind its storage."""
    for n in range(5):
        world.document(f"d{n}", world.obj(f"documents/org-1/ok-{n}.pdf"))
    world.document("d-missing", "documents/org-1/gone.pdf")
    world.obj("documents/org-1/orphan.pdf")
    world.job(world.obj("documents/org-1/stuck.pdf"), "processing", started_ago=timedelta(days=2))
    world.plan("p1", 0, 2)
    world.sheet("p1", "s1")
    world.sheet("p1", "s2")


def test_apply_and_rollback_on_sqlite_and_postgres(
    engine: sa.Engine,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = LocalStorage(tmp_path / "store" / "uploads")
    store.root.mkdir(parents=True)
    _plant(World(engine, store))
    url = engine.url.render_as_string(hide_password=False)
    base = ["reconcile", "--db-url", url, "--storage-dir", str(store.root), "--min-age", "0s"]
    original = snapshot(engine)

    code, _, err = run(capsys, *base, "--apply")
    assert code == 1 and "writes are not enabled" in err
    assert snapshot(engine) == original and ledger_tables(engine) == set()

    set_writes(monkeypatch)
    code, out, err = run(capsys, *base, "--apply", "--json")
    assert code == 0, err
    first = json.loads(out)
    assert {k: n for k, n in first["findings"].items() if n} == {
        "orphan_object": 1,
        "stuck_job": 1,
        "missing_original": 1,
        "progress_behind": 1,
    }
    assert (first["marked_error"], first["jobs_created"], first["retried"]) == (1, 1, 1)
    assert (first["progress_fixed"], first["requeued"], first["updated"]) == (1, 2, 4)
    assert log_line(err)["updated"] == 4
    assert rows(engine, "SELECT status, error FROM documents WHERE id = 'd-missing'") == [
        {"status": "error", "error": "original missing in storage"}
    ]
    jobs = {
        r["object_key"]: (r["status"], r["attempts"])
        for r in rows(engine, "SELECT object_key, status, attempts FROM processing_jobs")
    }
    assert jobs == {
        "documents/org-1/orphan.pdf": ("not_started", 0),
        "documents/org-1/stuck.pdf": ("not_started", 1),
    }
    plan = rows(engine, "SELECT completed_pages, status, reconciled FROM plans")[0]
    assert (plan["completed_pages"], plan["status"], bool(plan["reconciled"])) == (
        2,
        "complete",
        True,
    )
    changed = snapshot(engine)

    code, out, err = run(capsys, *base, "--apply", "--json")
    second = json.loads(out)
    assert second["updated"] == second["requeued"] == 0
    assert snapshot(engine) == changed

    code, out, err = run(capsys, "rollback", "--run-id", first["run_id"], "--db-url", url, "--json")
    assert code == 0, err
    assert json.loads(out)["restored"] == 3 and json.loads(out)["removed"] == 1
    assert snapshot(engine) == changed
    code, out, err = run(
        capsys, "rollback", "--run-id", first["run_id"], "--apply", "--db-url", url, "--json"
    )
    assert code == 0, err
    assert snapshot(engine) == original


def test_a_failed_batch_names_the_run_that_undoes_the_applied_ones(
    demo: Demo, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The images batches fail (a trigger refuses updates) after the job batches committed."""
    engine = demo.engine()
    original = snapshot(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TRIGGER images_read_only BEFORE UPDATE ON images "
                "BEGIN SELECT RAISE(ABORT, 'images are read-only'); END"
            )
        )
    set_writes(monkeypatch)
    code, out, err = reconcile(capsys, demo, "--apply")
    assert code == 1 and out == ""
    (line,) = err.strip().splitlines()
    match = re.fullmatch(
        r"integrity: error: batch (\d+) of (\d+) \(mark_error on images\) was not applied: .*"
        r" \(remediation run ([0-9a-f]{32}); `integrity rollback --run-id \3` undoes its applied"
        r" batches\)",
        line,
    )
    assert match, line
    assert "images are read-only" in line  # the database's own reason, not a guess
    assert int(match.group(1)) > 1  # earlier batches were applied
    run_id = match.group(3)
    now = snapshot(engine)
    assert now["images"] == original["images"]  # the failed batch left nothing behind
    assert now["processing_jobs"] != original["processing_jobs"]  # the earlier ones committed
    assert rows(engine, f"SELECT state FROM {RUNS_TABLE} WHERE run_id = :r", r=run_id) == [
        {"state": "failed"}
    ]
    code, _, err = run(capsys, "rollback", "--run-id", run_id, "--apply", "--db-url", demo.db_url)
    assert code == 0, err
    assert snapshot(engine) == original
    engine.dispose()


def test_apply_on_an_s3_bucket_with_an_sqs_queue(
    sqlite_engine: sa.Engine,
    s3_client,
    bucket: str,
    moto_endpoint: str,
    sqs_client,
    sqs_queue_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The production shape: storage re-checked over S3, re-queues sent to SQS, on moto's server."""
    from integrity.storage.s3 import S3Storage

    _plant(World(sqlite_engine, S3Storage(s3_client, bucket)))
    set_writes(monkeypatch)
    args = [
        "reconcile",
        "--apply",
        "--json",
        "--min-age",
        "0s",
        "--db-url",
        sqlite_engine.url.render_as_string(hide_password=False),
        "--bucket",
        bucket,
        "--endpoint-url",
        moto_endpoint,
        "--queue-url",
        sqs_queue_url,
    ]
    code, out, err = run(capsys, *args)
    assert code == 0, err
    summary = json.loads(out)
    assert (summary["marked_error"], summary["requeued"], summary["progress_fixed"]) == (1, 2, 1)
    got = sqs_client.receive_message(QueueUrl=sqs_queue_url, MaxNumberOfMessages=10)
    bodies = sorted((json.loads(m["Body"]) for m in got["Messages"]), key=lambda m: m["key"])
    assert [(m["bucket"], m["key"]) for m in bodies] == [
        (bucket, "documents/org-1/orphan.pdf"),
        (bucket, "documents/org-1/stuck.pdf"),
    ]
    code, out, err = run(capsys, *args)
    assert code == 0, err
    again = json.loads(out)
    assert again["updated"] == again["requeued"] == 0 and again["already_queued"] == 2


# --------------------------------------------------------------------------- interrupted runs


def _wait_for(condition: Any, process: subprocess.Popen[str], what: str) -> Any:
    """Poll until condition() is truthy, while the process is still alive."""
    deadline = time.monotonic() + 60
    while not (value := condition()):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return value


def _runs(capsys: pytest.CaptureFixture[str], url: str) -> dict[str, dict[str, Any]]:
    code, out, err = run(capsys, "rollback", "--list", "--json", "--db-url", url)
    assert code == 0, err
    return {r["run_id"]: r for r in json.loads(out)["runs"]}


@pytest.mark.e2e
def test_a_killed_apply_is_listed_as_interrupted_recorded_by_the_next_apply_and_rolled_back(
    engine: sa.Engine,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`integrity reconcile --apply` in a process of its own, one finding per batch and a pause
    between batches, is SIGKILLed mid-apply. While it lives (the timer renews its lease during
    the pause) it is listed as running and cannot be rolled back; once its lease has run out it
    is listed as failed and interrupted, the next --apply names it and records it as failed, and
    rolling it back restores exactly what its batches changed."""
    store = LocalStorage(tmp_path / "store" / "uploads")
    store.root.mkdir(parents=True)
    _plant(World(engine, store))
    url = engine.url.render_as_string(hide_password=False)
    base = ["reconcile", "--db-url", url, "--storage-dir", str(store.root), "--min-age", "0s"]
    original = snapshot(engine)
    set_writes(monkeypatch)
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith(("INTEGRITY_", "AWS_ENDPOINT_URL"))
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "integrity.cli", *base, "--apply", "--batch-size", "1"]
        + ["--pause", "3s"],
        cwd=tmp_path,
        env={**clean, **WRITES, settings.ENV_RUN_LEASE: "1.5"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lease_sql = f"SELECT run_id, batches, lease_until FROM {RUNS_TABLE}"
    try:
        [first] = _wait_for(
            lambda: (
                ledger_tables(engine) >= LEDGER_TABLES
                and [r for r in rows(engine, lease_sql) if r["batches"] == 1]
            ),
            process,
            "the first batch",
        )
        killed = first["run_id"]
        _wait_for(  # during the pause, only the timer can move the lease
            lambda: [
                r
                for r in rows(engine, lease_sql)
                if r["batches"] == 1 and r["lease_until"] != first["lease_until"]
            ],
            process,
            "the lease to be renewed",
        )
        live = _runs(capsys, url)[killed]
        assert (live["state"], live["interrupted"]) == ("running", False)
        code, out, err = run(capsys, "rollback", "--run-id", killed, "--apply", "--db-url", url)
        assert code == 1 and out == ""
        assert err.startswith(f"integrity: error: run {killed} is still running (its lease ")
        assert process.poll() is None  # mid-apply: the rest of the batches are still to come
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.communicate(timeout=10)
    assert process.returncode == -signal.SIGKILL

    wait_for_lease_to_run_out(engine, killed)
    listed = _runs(capsys, url)[killed]
    assert (listed["state"], listed["interrupted"]) == ("failed", True)
    batches = listed["batches"]
    assert 1 <= batches < 4
    code, out, _ = run(capsys, "rollback", "--list", "--db-url", url)
    assert f"interrupted after {batches} batches (its process stopped; lease ran out " in out
    assert rows(engine, f"SELECT state FROM {RUNS_TABLE}") == [{"state": "running"}]

    code, out, err = run(capsys, *base, "--apply")
    assert code == 0, err
    later = re.search(r"remediation applied: run ([0-9a-f]{32})", out).group(1)
    assert (
        f"interrupted run {killed} (remediate, started {listed['started_at']} UTC, "
        f"{batches} batches applied): its process stopped without finishing (its lease ran out); "
        "recorded as failed." in out
    )
    assert f"undo them: integrity rollback --run-id {killed}" in out
    recorded = rows(engine, f"SELECT run_id, state, failed_by FROM {RUNS_TABLE}")
    assert sorted(recorded, key=lambda r: r["run_id"] != killed) == [
        {"run_id": killed, "state": "failed", "failed_by": later},
        {"run_id": later, "state": "completed", "failed_by": None},
    ]
    listed = _runs(capsys, url)
    assert (listed[killed]["state"], listed[killed]["interrupted"]) == ("failed", True)
    assert (listed[later]["state"], listed[later]["interrupted"]) == ("completed", False)
    assert json.loads(run(capsys, *base, "--apply", "--json")[1])["interrupted_runs"] == []

    audited = rows(engine, f"SELECT count(*) AS n FROM {AUDIT_TABLE} WHERE run_id = :r", r=killed)
    code, out, err = run(
        capsys, "rollback", "--run-id", killed, "--apply", "--json", "--db-url", url
    )
    assert code == 0, err
    undone = json.loads(out)
    assert undone["restored"] + undone["removed"] == audited[0]["n"] == batches
    code, _, err = run(capsys, "rollback", "--run-id", later, "--apply", "--db-url", url)
    assert code == 0, err
    assert snapshot(engine) == original


def test_a_run_killed_before_its_first_commit_rolls_back_as_a_no_op(
    engine: sa.Engine,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGKILL inside the first batch's transaction: the run has no audit records. Once its lease
    has run out, rolling it back (dry run, then --apply) is a no-op that says so and exits 0, and
    the applied one records the run as failed, its own run as completed."""
    store = LocalStorage(tmp_path / "store" / "uploads")
    store.root.mkdir(parents=True)
    world = World(engine, store)
    _plant(world)
    original = snapshot(engine)
    report = world.reconcile().save(tmp_path / "report.parquet")
    killed = "killed-" + uuid.uuid4().hex[:8]
    kill_mid_batch(engine, store.root, report, killed, batch_size=1, hang_after=0, lease=1.0)
    url = engine.url.render_as_string(hide_password=False)
    assert rows(engine, f"SELECT count(*) AS n FROM {AUDIT_TABLE}") == [{"n": 0}]
    wait_for_lease_to_run_out(engine, killed)
    set_writes(monkeypatch)

    code, out, err = run(capsys, "rollback", "--run-id", killed, "--db-url", url)
    assert code == 0, err
    said = (
        f"integrity rollback of run {killed}: nothing to undo, the run ended before it changed "
        "anything (no audit records)"
    )
    assert out.splitlines()[0] == said
    code, out, err = run(
        capsys, "rollback", "--run-id", killed, "--apply", "--json", "--db-url", url
    )
    assert code == 0, err
    done = json.loads(out)
    assert done["nothing_to_undo"] is True and done["dry_run"] is False
    assert done["restored"] == done["removed"] == done["queue_cancelled"] == done["batches"] == 0
    assert log_line(err)["rolled_back_run_id"] == killed
    assert snapshot(engine) == original
    listed = _runs(capsys, url)
    assert (listed[killed]["state"], listed[killed]["interrupted"]) == ("failed", True)
    assert listed[done["run_id"]]["state"] == "completed"
    recorded = rows(engine, f"SELECT failed_by FROM {RUNS_TABLE} WHERE run_id = :r", r=killed)
    assert recorded == [{"failed_by": done["run_id"]}]


def test_a_ledger_from_before_leases_is_read_as_is_and_upgraded_by_the_next_apply(
    engine: sa.Engine,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A runs table without lease columns, as earlier versions made it, with a run left
    `running` ten minutes ago: listing reads it as interrupted and changes no schema; the next
    --apply adds the columns, records that run as failed and names it, and leaves alone a run
    whose last batch is recent."""
    from integrity.remediation import ledger

    old = sa.MetaData()
    sa.Table(
        RUNS_TABLE,
        old,
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("target_run_id", sa.String(64)),
        sa.Column("scope", sa.Text),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("batches", sa.Integer, nullable=False, server_default="0"),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("counts", sa.Text),
    )
    old.create_all(engine)
    ledger.audit.create(engine)
    ledger.queue.create(engine)
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            old.tables[RUNS_TABLE].insert(),
            [
                dict(run_id=run_id, kind="remediate", scope="__all__", state=state, batches=3)
                | dict(started_at=now - 2 * ago, updated_at=now - ago)
                for run_id, state, ago in [
                    ("stale", "running", timedelta(minutes=10)),
                    ("recent", "running", timedelta(seconds=5)),
                    ("done", "completed", timedelta(minutes=20)),
                ]
            ],
        )

    def columns() -> set[str]:
        return {c["name"] for c in sa.inspect(engine).get_columns(RUNS_TABLE)}

    before = columns()
    listed = _runs(capsys, engine.url.render_as_string(hide_password=False))
    assert {r: (v["state"], v["interrupted"]) for r, v in listed.items()} == {
        "stale": ("failed", True),
        "recent": ("running", False),
        "done": ("completed", False),
    }
    assert columns() == before  # a listing never changes the schema

    store = LocalStorage(tmp_path / "store" / "uploads")
    store.root.mkdir(parents=True)
    _plant(World(engine, store))
    set_writes(monkeypatch)
    code, out, err = run(
        capsys,
        "reconcile",
        "--apply",
        "--json",
        "--min-age",
        "0s",
        "--db-url",
        engine.url.render_as_string(hide_password=False),
        "--storage-dir",
        str(store.root),
    )
    assert code == 0, err
    summary = json.loads(out)
    assert [(r["run_id"], r["batches"]) for r in summary["interrupted_runs"]] == [("stale", 3)]
    assert columns() == before | {"lease_until", "failed_by"}
    states = {
        r["run_id"]: (r["state"], r["failed_by"], r["lease_until"] is not None)
        for r in rows(engine, f"SELECT run_id, state, failed_by, lease_until FROM {RUNS_TABLE}")
    }
    assert states == {
        "stale": ("failed", summary["run_id"], False),
        "recent": ("running", None, False),
        "done": ("completed", None, False),
        summary["run_id"]: ("completed", None, True),
    }
