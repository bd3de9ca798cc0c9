"""The `integrity reconcile` command, run as a real subprocess against real files and moto's S3.

The planted data is the demo (built once per module): it holds every finding kind and the
look-alikes that must not be findings, with known counts.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from integrity import cli
from integrity.cli import reconcile as cli_reconcile
from integrity.demo import EXPECTED_BY_TENANT, EXPECTED_FINDINGS, DemoEnvironment, build_demo
from integrity.diff import EXPORT_COLUMNS, FINDING_KINDS
from integrity.durations import format_duration, parse_duration
from integrity.errors import UsageError
from integrity.schema import create_reference_schema
from integrity_tests.world import FailingListings

SCRUBBED = ("INTEGRITY_", "AWS_ENDPOINT_URL")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED)}
    env.update(extra)
    return env


def integrity(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the console script's module exactly as a user would, in a clean environment."""
    return subprocess.run(
        [sys.executable, "-m", "integrity.cli", *args],
        cwd=cwd,
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoEnvironment:
    return build_demo(tmp_path_factory.mktemp("demo-home"))


def reconcile(demo: DemoEnvironment, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return integrity(
        "reconcile", "--db-url", demo.db_url, "--storage-dir", str(demo.storage_dir), *args, cwd=cwd
    )


def summary_of(result: subprocess.CompletedProcess[str]) -> dict:
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    return json.loads(lines[0])


# --------------------------------------------------------------------------- reports


@pytest.mark.e2e
def test_json_summary_has_every_kind_with_the_planted_counts(
    demo: DemoEnvironment, tmp_path: Path
) -> None:
    summary = summary_of(reconcile(demo, "--json", cwd=tmp_path))
    assert summary["dry_run"] is True
    assert summary["complete"] is True
    assert summary["findings"] == EXPECTED_FINDINGS
    assert list(summary["findings"]) == list(FINDING_KINDS)
    assert summary["checked"] == {"objects": demo.objects, "rows": demo.rows}
    assert summary["updated"] == 0 and summary["requeued"] == 0
    assert {e["kind"] for e in summary["examples"]} == set(FINDING_KINDS)
    assert all(set(e) == {"kind", "key", "row_id", "detail"} for e in summary["examples"])


@pytest.mark.e2e
def test_embedded_defaults_find_the_demo_and_print_a_summary(
    demo: DemoEnvironment, tmp_path: Path
) -> None:
    """With only INTEGRITY_HOME set, reconcile reads the demo's SQLite file and directory."""
    result = integrity("reconcile", cwd=tmp_path, INTEGRITY_HOME=str(demo.home))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for kind, n in EXPECTED_FINDINGS.items():
        assert any(line.split()[:2] == [kind, str(n)] for line in out.splitlines()), (kind, out)
    assert f"{demo.objects:,} objects and {demo.rows:,} rows" in out
    assert "report complete" in out
    assert "\r" not in result.stderr  # no progress line when stderr is not a terminal


@pytest.mark.e2e
@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_report_file_has_one_line_per_finding(
    demo: DemoEnvironment, tmp_path: Path, suffix: str
) -> None:
    path = tmp_path / "out" / f"findings{suffix}"
    summary = summary_of(reconcile(demo, "--json", "--report", str(path), cwd=tmp_path))
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            assert reader.fieldnames == EXPORT_COLUMNS
            records = list(reader)
    else:
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        assert all(list(r) == EXPORT_COLUMNS for r in records)
    assert len(records) == sum(summary["findings"].values())
    assert pd.Series([r["kind"] for r in records]).value_counts().to_dict() == {
        k: n for k, n in EXPECTED_FINDINGS.items() if n
    }
    missing = next(r for r in records if r["row_id"] == "doc-globex-addendum")
    assert missing == {
        "kind": "missing_original",
        "table": "documents",
        "row_id": "doc-globex-addendum",
        "key": "documents/org-globex/contracts/lost-addendum.pdf",
        "tenant": "org-globex",
        "action": "mark_error",
        "detail": "original missing in storage",
    }


@pytest.mark.e2e
def test_human_summary_lists_the_report_file(demo: DemoEnvironment, tmp_path: Path) -> None:
    result = reconcile(demo, "--report", str(tmp_path / "r.csv"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    total = sum(EXPECTED_FINDINGS.values())
    assert f"report written to {tmp_path / 'r.csv'} ({total} findings)" in result.stdout


# --------------------------------------------------------------------------- filters and ages


@pytest.mark.e2e
def test_tenant_filter(demo: DemoEnvironment, tmp_path: Path) -> None:
    summary = summary_of(reconcile(demo, "--json", "--tenant", "org-globex", cwd=tmp_path))
    assert summary["scope"] == "org-globex"
    assert {k: n for k, n in summary["findings"].items() if n} == EXPECTED_BY_TENANT["org-globex"]


@pytest.mark.e2e
def test_status_filter(demo: DemoEnvironment, tmp_path: Path) -> None:
    failed = summary_of(reconcile(demo, "--json", "--status", "failed", cwd=tmp_path))
    assert {k: n for k, n in failed["findings"].items() if n} == {"orphan_object": 1}
    ready = summary_of(reconcile(demo, "--json", "--status", "ready", cwd=tmp_path))
    assert {k: n for k, n in ready["findings"].items() if n} == {
        "missing_staged": 1,
        "foreign_reference": 1,
        "invalid_reference": 1,
    }


@pytest.mark.e2e
def test_durations_change_the_results(demo: DemoEnvironment, tmp_path: Path) -> None:
    """The fresh upload becomes an orphan at min-age 0; the one-hour job is stuck after 30m."""
    eager = summary_of(
        reconcile(demo, "--json", "--min-age", "0", "--stuck-after", "30m", cwd=tmp_path)
    )
    assert eager["findings"]["orphan_object"] == EXPECTED_FINDINGS["orphan_object"] + 1
    assert eager["findings"]["stuck_job"] == EXPECTED_FINDINGS["stuck_job"] + 1
    patient = summary_of(
        reconcile(demo, "--json", "--min-age", "1d", "--stuck-after", "3d", cwd=tmp_path)
    )
    assert patient["findings"]["orphan_object"] == 0
    assert patient["findings"]["stuck_job"] == 0


def test_parse_duration() -> None:
    assert parse_duration("3600") == timedelta(hours=1)
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("15m") == timedelta(minutes=15)
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_duration("3d") == timedelta(days=3)
    assert parse_duration(" 2H ") == timedelta(hours=2)
    for bad in ("", "h", "1x", "-5", "1h 30m", "1.5.2s"):
        with pytest.raises(UsageError, match="--min-age"):
            parse_duration(bad, option="--min-age")
    assert parse_duration("36500d") == timedelta(days=36500)
    for too_long in ("36501d", "99999999999d", "9" * 400, "5300w"):
        with pytest.raises(UsageError, match=r"--min-age: '.*' is too long \(at most 36500d\)"):
            parse_duration(too_long, option="--min-age")
    assert format_duration(timedelta(minutes=90)) == "1h30m"
    assert format_duration(timedelta(0)) == "0s"


# --------------------------------------------------------------------------- exit codes


def test_incomplete_report_exits_3_with_the_reasons(
    demo: DemoEnvironment, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A listing page that failed after its retries makes the report incomplete: exit 3."""
    monkeypatch.setattr(
        cli_reconcile, "resolve_store", lambda args, conf: FailingListings(demo.storage_dir)
    )
    code = cli.main(["reconcile", "--db-url", demo.db_url, "--json"])
    out, err = capsys.readouterr()
    assert code == cli.EXIT_INCOMPLETE
    summary = json.loads(out)
    assert summary["complete"] is False
    assert any("SlowDown" in r for r in summary["reasons"])
    assert "SlowDown" in err

    code = cli.main(["reconcile", "--db-url", demo.db_url])
    out, _ = capsys.readouterr()
    assert code == cli.EXIT_INCOMPLETE
    assert "INCOMPLETE" in out and "SlowDown" in out


def _bad_spec(tmp_path: Path) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(
        "tables:\n  documents:\n    table: documents\n    tenant: 'organization id'\n"
        "    references: [{column: r2_key}]\n",
        encoding="utf-8",
    )
    return path


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("case", "args", "code", "expected"),
    [
        ("bad flag", ["reconcile", "--frobnicate"], 2, "unrecognized arguments: --frobnicate"),
        ("no command", [], 2, "required: COMMAND"),
        (
            "bad duration",
            ["reconcile", "--min-age", "5 parsecs"],
            2,
            "--min-age: '5 parsecs' is not a duration",
        ),
        ("bad stuck-after", ["reconcile", "--stuck-after", "soon"], 2, "--stuck-after"),
        ("bad concurrency", ["reconcile", "--concurrency", "0"], 2, "--concurrency"),
        (
            "unreachable database",
            ["reconcile", "--db-url", "postgresql://nobody:hunter2@127.0.0.1:1/x"],
            1,
            "nobody:***@127.0.0.1:1/x",  # the driver shown depends on which one is installed
        ),
        (
            "malformed database URL",
            ["reconcile", "--db-url", "not a url"],
            2,
            "--db-url: not a valid",
        ),
        ("unknown dialect", ["reconcile", "--db-url", "nosuchdb://h/x"], 2, "--db-url"),
        (
            "missing sqlite file",
            ["reconcile", "--db-url", "sqlite:///{tmp}/nope.sqlite"],
            1,
            "does not exist",
        ),
        (
            "missing storage dir",
            ["reconcile", "--storage-dir", "{tmp}/nowhere"],
            2,
            "--storage-dir: {tmp}/nowhere does not exist",
        ),
        (
            "bucket and dir",
            ["reconcile", "--bucket", "b", "--storage-dir", "{tmp}"],
            2,
            "mutually exclusive",
        ),
        ("bad spec", ["reconcile", "--spec", "{spec}"], 2, "tables.documents.tenant"),
        (
            "missing spec",
            ["reconcile", "--spec", "{tmp}/nope.yaml"],
            2,
            "cannot read the spec file",
        ),
        # the suffix is refused before anything else is looked at (the storage dir is missing too)
        (
            "bad report suffix",
            ["reconcile", "--report", "{tmp}/r.txt", "--storage-dir", "/no"],
            2,
            "must end in",
        ),
        (
            "report into a file",
            ["reconcile", "--report", "{spec}/r.csv"],
            2,
            "not a writable directory",
        ),
    ],
)
def test_bad_input_is_one_line_and_a_nonzero_exit(
    demo: DemoEnvironment, tmp_path: Path, case: str, args: list[str], code: int, expected: str
) -> None:
    spec = _bad_spec(tmp_path)
    args = [a.format(tmp=tmp_path, spec=spec) for a in args]
    if args and args[0] == "reconcile" and "--db-url" not in args and case != "bad flag":
        args += ["--db-url", demo.db_url]
    if args and args[0] == "reconcile" and "--storage-dir" not in args and "--bucket" not in args:
        args += ["--storage-dir", str(demo.storage_dir)]
    result = integrity(*args, cwd=tmp_path)
    assert result.returncode == code, (case, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, (case, result.stderr)
    assert lines[0].startswith("integrity"), lines
    assert expected.format(tmp=tmp_path) in lines[0], (case, lines[0])
    assert "hunter2" not in result.stderr + result.stdout
    assert not (tmp_path / "r.txt").exists()


# --------------------------------------------------------------------------- S3 (moto's server)


@pytest.mark.e2e
def test_missing_bucket_is_one_line(
    moto_endpoint: str, tmp_path: Path, demo: DemoEnvironment
) -> None:
    result = integrity(
        "reconcile",
        "--bucket",
        "no-such-bucket",
        "--endpoint-url",
        moto_endpoint,
        "--db-url",
        demo.db_url,
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"integrity: error: bucket 'no-such-bucket' does not exist (s3://no-such-bucket at {moto_endpoint})"
    )


@pytest.mark.e2e
def test_reconcile_against_s3(moto_endpoint: str, s3_client, bucket: str, tmp_path: Path) -> None:
    """--bucket with --endpoint-url (and AWS_ENDPOINT_URL) through S3Resource, over HTTP."""
    for key in ("documents/org-a/done.pdf", "documents/org-a/orphan.pdf", "photos/p 1.jpg"):
        s3_client.put_object(Bucket=bucket, Key=key, Body=b"x")
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    create_reference_schema(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO documents VALUES ('d1', 'org-a', 'documents/org-a/done.pdf', 'complete', NULL,"
                " '2024-01-01', '2024-01-01')"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO images (id, project_id, status, original_url, updated_at) VALUES "
                f"('i1', 'p', 'ready', '{moto_endpoint}/{bucket}/photos/p%201.jpg', '2024-01-01'),"
                f"('i2', 'p', 'queued', 's3://{bucket}/photos/gone.jpg', '2024-01-01')"
            )
        )
    engine.dispose()
    db_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    by_flag = summary_of(
        integrity(
            "reconcile",
            "--json",
            "--min-age",
            "0s",
            "--db-url",
            db_url,
            "--bucket",
            bucket,
            "--endpoint-url",
            moto_endpoint,
            "--region",
            "us-east-1",
            cwd=tmp_path,
        )
    )
    assert {k: n for k, n in by_flag["findings"].items() if n} == {
        "orphan_object": 1,
        "missing_original": 1,
    }
    assert by_flag["checked"]["objects"] == 3
    by_env = summary_of(
        integrity(
            "reconcile",
            "--json",
            "--min-age",
            "0s",
            cwd=tmp_path,
            INTEGRITY_DB_URL=db_url,
            INTEGRITY_BUCKET=bucket,
            AWS_ENDPOINT_URL=moto_endpoint,
        )
    )
    assert by_env["findings"] == by_flag["findings"]


@pytest.mark.e2e
def test_help_is_fast_and_does_not_import_dagster(tmp_path: Path) -> None:
    code = (
        "import sys; from integrity.cli import main\n"
        "try: main(['reconcile', '--help'])\n"
        "except SystemExit: pass\n"
        "assert not any(m.startswith(('dagster', 'pandas', 'sqlalchemy')) for m in sys.modules), "
        "sorted(m for m in sys.modules if m.startswith(('dagster', 'pandas', 'sqlalchemy')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "--min-age" in result.stdout


# What `integrity reconcile` on local storage must never load: the Dagster layer, the S3 client
# and the out-of-core engine (a demo-sized run is diffed in memory).
NOT_FOR_A_LOCAL_RECONCILE = ("dagster", "dagster_aws", "duckdb", "boto3", "botocore")


@pytest.mark.e2e
def test_reconcile_imports_no_dagster(demo: DemoEnvironment, tmp_path: Path) -> None:
    """A whole dry run on the demo, in a fresh interpreter: afterwards sys.modules holds none of
    Dagster, dagster_aws, boto3 or duckdb, and the remediation package loaded only its plan."""
    code = (
        "import sys; from integrity.cli import main\n"
        f"code = main(['reconcile', '--db-url', {demo.db_url!r}, "
        f"'--storage-dir', {str(demo.storage_dir)!r}, '--json'])\n"
        f"roots = {NOT_FOR_A_LOCAL_RECONCILE!r}\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in roots)\n"
        "assert code == 0, code\n"
        "assert loaded == [], loaded\n"
        "assert 'integrity.remediation.apply' not in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["checked"]["objects"] == demo.objects
