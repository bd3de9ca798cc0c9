"""Composite row identities (`id: [tenant_id, id]`) on SQLite and PostgreSQL.

Two tenants each have a row `1` (primary key (tenant_id, id)) with the same status and
updated_at, so anything that identifies a row by `id` alone writes both or neither. Drift in one
of them must be reported, marked, re-applied and rolled back on exactly that row.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import sqlalchemy as sa

from integrity import cli, identity, settings
from integrity.checks import finding_examples
from integrity.diff import DiffOptions, ReconciliationReport
from integrity.errors import DatabaseError, SpecError
from integrity.processing import state
from integrity.reconcile import reconcile
from integrity.remediation import RemediationOptions, remediate
from integrity.remediation.ledger import audit
from integrity.remediation.rollback import rollback
from integrity.spec import ReconciliationSpec, load_spec
from integrity.storage import LocalStorage

ALLOW = {settings.ENV_ALLOW_WRITES: "1"}
BASE = datetime(2026, 3, 1, 12, 0, 0)
MISSING = "files/org-a/1.pdf"

SPEC = """\
version: 1
tables:
  tenant_documents:
    table: tenant_documents
    id: [tenant_id, id]
    tenant: tenant_id
    references:
      - {column: file_key, kind: missing_original}
uploads: null
jobs: null
plans: null
"""

metadata = sa.MetaData()
tenant_documents = sa.Table(
    "tenant_documents",
    metadata,
    sa.Column("tenant_id", sa.Text, primary_key=True),
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("file_key", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("updated_at", sa.DateTime, nullable=False),
)
numbered_documents = sa.Table(
    "numbered_documents",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("tenant_id", sa.Text, nullable=False),
    sa.Column("file_key", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("updated_at", sa.DateTime, nullable=False),
)
loose_documents = sa.Table(  # no declared key: nothing tells that ids repeat across tenants
    "loose_documents",
    metadata,
    *[sa.Column(c.name, c.type, nullable=c.nullable) for c in tenant_documents.columns],
)
tenant_images = sa.Table(
    "tenant_images",
    metadata,
    sa.Column("project_id", sa.Text, primary_key=True),
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("original_url", sa.Text, nullable=False),
    sa.Column("staged_url", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("updated_at", sa.DateTime, nullable=False),
)


@pytest.fixture
def db(engine: sa.Engine) -> Iterator[sa.Engine]:
    """The reference schema plus the per-tenant tables (dropped again on PostgreSQL)."""
    metadata.drop_all(engine)
    metadata.create_all(engine)
    yield engine
    metadata.drop_all(engine)


@pytest.fixture
def store(tmp_path: Path) -> LocalStorage:
    root = tmp_path / "media"
    root.mkdir()
    return LocalStorage(root)


@pytest.fixture
def spec_path(tmp_path: Path) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    return path


def plant(db: sa.Engine, store: LocalStorage) -> None:
    """Rows 1 and 2 in each of two tenants, alike but for the tenant; only org-a's 1 is missing."""
    with db.begin() as conn:
        for tenant in ("org-a", "org-b"):
            for row in (1, 2):
                key = f"files/{tenant}/{row}.pdf"
                if key != MISSING:
                    store.put_bytes(key, b"%PDF-1.4")
                conn.execute(
                    tenant_documents.insert().values(
                        tenant_id=tenant, id=row, file_key=key, status="complete", updated_at=BASE
                    )
                )


def table_rows(db: sa.Engine) -> list[tuple[Any, ...]]:
    """Every row and column, raw as the driver returns them."""
    with db.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(sa.text("SELECT * FROM tenant_documents ORDER BY tenant_id, id"))
        ]


def run_reconcile(store: LocalStorage, db: sa.Engine, spec: ReconciliationSpec, **options: Any):
    return reconcile(store, db, spec, DiffOptions(now=BASE + timedelta(hours=2), **options))


def run_apply(
    report: ReconciliationReport, db: sa.Engine, spec: ReconciliationSpec, store: LocalStorage
):
    options = RemediationOptions(dry_run=False, max_change_ratio=1.0)
    return remediate(report, db, spec, store, options, allow_writes=True)


def test_drift_in_one_tenant_is_reported_applied_and_rolled_back_on_that_row_only(
    db: sa.Engine, store: LocalStorage, spec_path: Path, tmp_path: Path
) -> None:
    spec = load_spec(spec_path)
    plant(db, store)
    before = table_rows(db)

    report = run_reconcile(store, db, spec)
    missing = report.findings.loc[report.findings["kind"] == "missing_original"]
    assert list(zip(missing["row_id"], missing["tenant"], missing["key"])) == [
        ('["org-a", "1"]', "org-a", MISSING)
    ]
    assert report.counts()["missing_original"] == 1 and report.rows_checked == 4
    # the check examples, the saved report and the exports carry the same row id
    assert [e["row_id"] for e in finding_examples(report.findings, "missing_original")] == [
        '["org-a", "1"]'
    ]
    loaded = ReconciliationReport.load(report.save(tmp_path / "report.parquet"))
    assert list(loaded.findings["row_id"]) == ['["org-a", "1"]']
    lines = report.export(tmp_path / "drift.jsonl").read_text().splitlines()
    assert [json.loads(line)["row_id"] for line in lines] == ['["org-a", "1"]']
    exported = pd.read_csv(report.export(tmp_path / "drift.csv"))
    assert list(exported["row_id"]) == ['["org-a", "1"]']

    result = run_apply(loaded, db, spec, store)
    assert (result.counts["marked_error"], result.counts["skipped_changed"]) == (1, 0)
    after = table_rows(db)
    changed = [(b, a) for b, a in zip(before, after) if b != a]
    assert len(changed) == 1
    old, new = changed[0]
    assert old[:3] == new[:3] == ("org-a", 1, MISSING)
    assert (new[3], new[4]) == ("error", "original missing in storage")
    with db.connect() as conn:
        records = [dict(r) for r in conn.execute(sa.select(audit)).mappings()]
    assert [(r["key_column"], r["row_key"]) for r in records] == [
        ('["tenant_id", "id"]', '["org-a", "1"]')
    ]

    # converged: nothing left to do, and the stale report changes nothing either
    again = run_reconcile(store, db, spec)
    assert again.counts()["missing_original"] == 0
    assert run_apply(again, db, spec, store).updated == 0
    stale = run_apply(loaded, db, spec, store)
    assert (stale.updated, stale.counts["skipped_changed"]) == (0, 1)
    assert table_rows(db) == after

    undo = rollback(db, result.run_id, dry_run=False, allow_writes=True)
    assert (undo.counts["restored"], undo.counts["skipped_changed"]) == (1, 0)
    assert table_rows(db) == before
    assert rollback(db, result.run_id, dry_run=False, allow_writes=True).counts["restored"] == 0
    assert run_reconcile(store, db, spec).counts()["missing_original"] == 1


def test_one_tenants_reconcile_and_apply_leave_the_other_tenant_alone(
    db: sa.Engine, store: LocalStorage, spec_path: Path
) -> None:
    spec = load_spec(spec_path)
    plant(db, store)
    before = table_rows(db)
    other = run_reconcile(store, db, spec, tenant="org-b")
    assert other.rows_checked == 2 and other.counts()["missing_original"] == 0
    assert run_apply(other, db, spec, store).updated == 0
    assert table_rows(db) == before

    report = run_reconcile(store, db, spec, tenant="org-a")
    assert list(report.findings["row_id"]) == ['["org-a", "1"]']
    assert run_apply(report, db, spec, store).counts["marked_error"] == 1
    assert [r[:4] for r in table_rows(db) if r[3] == "error"] == [("org-a", 1, MISSING, "error")]


def test_a_single_id_on_a_per_tenant_key_is_refused_before_anything_is_written(
    db: sa.Engine, store: LocalStorage, tmp_path: Path
) -> None:
    """With `id: id`, one conditional UPDATE would match both tenants' rows 1."""
    path = tmp_path / "single.yaml"
    path.write_text(SPEC.replace("id: [tenant_id, id]", "id: id"))
    spec = load_spec(path)
    plant(db, store)
    before = table_rows(db)
    report = run_reconcile(store, db, spec)
    assert report.counts()["missing_original"] == 1
    with pytest.raises(SpecError) as refused:
        run_apply(report, db, spec, store)
    message = str(refused.value)
    assert "\n" not in message
    assert message == (
        "tables.tenant_documents.id: id does not identify one row of table 'tenant_documents', "
        "whose primary key is (tenant_id, id): rows sharing it would be changed together; "
        "set id: [tenant_id, id]"
    )
    assert table_rows(db) == before
    assert "integrity_audit" not in sa.inspect(db).get_table_names()


def test_rows_sharing_an_id_no_key_declares_stop_the_batch_with_one_line(
    db: sa.Engine, store: LocalStorage, tmp_path: Path
) -> None:
    path = tmp_path / "loose.yaml"
    path.write_text(
        SPEC.replace("id: [tenant_id, id]", "id: id").replace(
            "table: tenant_documents", "table: loose_documents"
        )
    )
    spec = load_spec(path)
    plant(db, store)
    with db.begin() as conn:
        conn.execute(sa.text("INSERT INTO loose_documents SELECT * FROM tenant_documents"))
        conn.execute(sa.text("DELETE FROM tenant_documents"))
    report = run_reconcile(store, db, spec)
    assert list(report.findings["row_id"]) == ["1"]
    with db.connect() as conn:
        before = sorted(tuple(r) for r in conn.execute(sa.select(loose_documents)))
    with pytest.raises(DatabaseError) as stopped:
        run_apply(report, db, spec, store)
    assert str(stopped.value).startswith(
        "batch 1 of 1 (mark_error on loose_documents) was not applied: more than one row of "
        "loose_documents has the id 1 (id), so a write would change them all; name every "
        "column that identifies a row in the spec's id, e.g. id: [tenant_id, id]."
    )
    with db.connect() as conn:
        assert sorted(tuple(r) for r in conn.execute(sa.select(loose_documents))) == before
        assert conn.execute(sa.select(sa.func.count()).select_from(audit)).scalar_one() == 0


def test_a_single_integer_id_is_matched_as_the_report_spells_it(
    db: sa.Engine, store: LocalStorage, tmp_path: Path
) -> None:
    """Findings carry ids as text; the re-read must still find an integer id (PostgreSQL
    refuses `integer = character varying`)."""
    path = tmp_path / "numbered.yaml"
    path.write_text(
        SPEC.replace("id: [tenant_id, id]", "id: id").replace(
            "tenant_documents", "numbered_documents"
        )
    )
    spec = load_spec(path)
    with db.begin() as conn:
        for row in (1, 2, 3, 4):
            key = f"files/org-a/{row}.pdf"
            if key != MISSING:
                store.put_bytes(key, b"%PDF-1.4")
            conn.execute(
                numbered_documents.insert().values(
                    id=row, tenant_id="org-a", file_key=key, status="complete", updated_at=BASE
                )
            )
    report = run_reconcile(store, db, spec)
    assert list(report.findings["row_id"]) == ["1"]
    result = run_apply(report, db, spec, store)
    assert (result.counts["marked_error"], result.counts["skipped_changed"]) == (1, 0)
    with db.connect() as conn:
        statuses = dict(
            conn.execute(sa.select(numbered_documents.c.id, numbered_documents.c.status)).all()
        )
    assert statuses == {1: "error", 2: "complete", 3: "complete", 4: "complete"}
    assert rollback(db, result.run_id, dry_run=False, allow_writes=True).counts["restored"] == 1
    with db.connect() as conn:
        assert set(conn.execute(sa.select(numbered_documents.c.status)).scalars()) == {"complete"}


def test_the_cli_shows_the_row_and_applies_to_it(
    db: sa.Engine,
    store: LocalStorage,
    spec_path: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plant(db, store)
    url = db.url.render_as_string(hide_password=False)
    args = ["reconcile", "--db-url", url, "--storage-dir", str(store.root), "--spec"]
    args += [str(spec_path), "--max-change-ratio", "1", "--min-age", "0"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert f'{MISSING} ["org-a", "1"]  original missing in storage' in out

    monkeypatch.setenv(settings.ENV_ALLOW_WRITES, "1")
    assert cli.main([*args, "--apply", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["marked_error"], summary["skipped_changed"]) == (1, 0)
    assert summary["examples"][0]["row_id"] == '["org-a", "1"]'
    assert [r[:4] for r in table_rows(db) if r[3] == "error"] == [("org-a", 1, MISSING, "error")]


def test_the_processor_stages_only_its_own_tenants_row(db: sa.Engine, tmp_path: Path) -> None:
    """Two projects' image rows 1: staging one project's original changes that row only."""
    path = tmp_path / "images.yaml"
    path.write_text(
        "tables:\n"
        "  images:\n"
        "    table: tenant_images\n"
        "    id: [project_id, id]\n"
        "    tenant: project_id\n"
        "    references:\n"
        "      - {column: original_url, kind: missing_original}\n"
        "      - {column: staged_url, kind: missing_staged, when_status: [ready]}\n"
        "uploads: null\njobs: null\nplans: null\n"
    )
    spec = load_spec(path)
    with db.begin() as conn:
        for project in ("prj-a", "prj-b"):
            conn.execute(
                tenant_images.insert().values(
                    project_id=project,
                    id=1,
                    status="queued",
                    original_url=f"images/{project}/site.jpg",
                    updated_at=BASE,
                )
            )
    with db.connect() as conn:
        [row] = state.find_image_rows(conn, spec, "images/prj-a/site.jpg", "bucket")
    assert row.key == {"project_id": "prj-a", "id": 1} and row.id == '["prj-a", "1"]'
    assert state.set_staged(db, row, "images/prj-a/staged/site-1024.jpg", BASE)
    with db.connect() as conn:
        staged = dict(
            conn.execute(sa.select(tenant_images.c.project_id, tenant_images.c.staged_url)).all()
        )
    assert staged == {"prj-a": "images/prj-a/staged/site-1024.jpg", "prj-b": None}


def test_a_processed_upload_gets_its_row_with_the_tenant_and_a_generated_id(
    db: sa.Engine, tmp_path: Path
) -> None:
    path = tmp_path / "uploads.yaml"
    path.write_text(
        "tables:\n"
        "  documents:\n"
        "    table: tenant_documents\n"
        "    id: [tenant_id, id]\n"
        "    tenant: tenant_id\n"
        "    references: [{column: file_key}]\n"
        "uploads: {prefix: 'files/{tenant}/', processed_table: documents, processed_column: file_key}\n"
        "jobs: null\nplans: null\n"
    )
    spec = load_spec(path)
    # the id column is an integer here, so give the processor's generated id a text column
    with db.begin() as conn:
        conn.execute(sa.text("DROP TABLE tenant_documents"))
        conn.execute(
            sa.text(
                "CREATE TABLE tenant_documents (tenant_id TEXT NOT NULL, id TEXT NOT NULL, "
                "file_key TEXT NOT NULL, status TEXT NOT NULL, error TEXT, "
                "updated_at TIMESTAMP NOT NULL, PRIMARY KEY (tenant_id, id))"
            )
        )
    key = "files/org-a/plans/tower.pdf"
    state.finish_upload(db, spec, key, "org-a", None, 1, BASE)
    with db.connect() as conn:
        rows = [
            tuple(r)
            for r in conn.execute(
                sa.text("SELECT tenant_id, id, file_key, status FROM tenant_documents")
            )
        ]
    assert rows == [("org-a", state.document_id(key), key, "complete")]


# --------------------------------------------------------------------------- the encoding


def test_the_identity_encoding_is_the_same_row_by_row_and_column_by_column() -> None:
    tenants = ["org-a", 'quo"te', "back\\slash", "line\nbreak", None, "é"]
    ids = ["1", "2", None, "4", "5", "x\ty"]
    frame = identity.encode_frame([pd.Series(tenants, dtype="str"), pd.Series(ids, dtype="str")])
    assert list(frame) == [identity.encode([t, i]) for t, i in zip(tenants, ids)]
    assert [identity.decode(f, 2) for f in frame] == list(zip(tenants, ids))
    assert identity.encode(["org-a", 1]) == '["org-a", "1"]'
    assert identity.encode([7]) == "7" and identity.decode("7", 1) == ("7",)
    assert identity.decode("not json", 2) is None and identity.decode('["a"]', 2) is None
    assert identity.decode_columns(identity.encode_columns(["tenant_id", "id"])) == (
        "tenant_id",
        "id",
    )
    assert identity.decode_columns("id") == ("id",)
