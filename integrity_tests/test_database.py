"""The database side: bulk reads, clear errors, incomplete reads, custom schemas, snapshots."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from integrity.diff import DiffOptions, ReconciliationReport
from integrity.errors import DatabaseError, SpecError
from integrity.inventory import (
    DatabaseInventory,
    StorageInventory,
    check_database,
    list_storage,
    read_database,
)
from integrity.reconcile import reconcile
from integrity.spec import default_spec, parse_spec
from integrity.storage import LocalStorage
from integrity_tests.world import World, found, kinds


def test_unreachable_database_is_one_line_without_the_password() -> None:
    engine = sa.create_engine("postgresql+psycopg://app:s3cret-pw@127.0.0.1:1/nowhere")
    with pytest.raises(DatabaseError) as info:
        check_database(engine, default_spec())
    message = str(info.value)
    assert message.startswith(
        "cannot read database postgresql+psycopg://app:***@127.0.0.1:1/nowhere"
    )
    assert "s3cret-pw" not in message and "\n" not in message


def test_missing_table_and_column_name_the_spec_field(sqlite_engine) -> None:
    with sqlite_engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE plans"))
    with pytest.raises(SpecError, match=r"^plans: table 'plans' not found"):
        check_database(sqlite_engine, default_spec())
    spec = parse_spec(
        {
            "tables": {
                "documents": {
                    "table": "documents",
                    "tenant": "organization_id",
                    "references": [{"column": "r2_key"}],
                },
                "images": {
                    "table": "images",
                    "tenant": "project_id",
                    "references": [{"column": "picture"}],
                },
            },
            "plans": None,
        }
    )
    with pytest.raises(
        SpecError,
        match=r"^tables\.images: column 'picture' \(picture\) not found in table 'images'",
    ):
        check_database(sqlite_engine, spec)


def test_a_failed_read_makes_the_inventory_incomplete(sqlite_engine) -> None:
    with sqlite_engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE images"))
    inventory = read_database(sqlite_engine, default_spec(), attempts=2)
    assert not inventory.complete
    assert inventory.errors[0].startswith("reading tables.images (images) failed")
    assert inventory.tables["images"].empty


def test_incomplete_inputs_make_an_incomplete_report(sqlite_engine, tmp_path) -> None:
    (tmp_path / "media").mkdir()
    world = World(sqlite_engine, LocalStorage(tmp_path / "media"))
    world.image("a", "images/a.jpg")
    report = world.reconcile()
    assert report.complete
    with sqlite_engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE plans"))
    inventory = read_database(sqlite_engine, default_spec(), attempts=1)
    from integrity.diff import diff_inventories

    partial = diff_inventories(list_storage(world.store), inventory, default_spec())
    assert not partial.complete
    assert partial.reasons and partial.reasons[0].startswith("database: reading plans")
    assert partial.summary()["complete"] is False


def test_custom_schema_described_by_a_spec(tmp_path) -> None:
    """Other table and column names, integer ids and ISO-8601 text timestamps: no code change."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'custom.sqlite'}")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE assets (pk INTEGER PRIMARY KEY, team TEXT, state TEXT, changed TEXT, blob_url TEXT)"
            )
        )
        conn.execute(
            sa.text(
                "CREATE TABLE uploads (k TEXT PRIMARY KEY, state TEXT, begun TEXT, touched TEXT)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO assets VALUES (1, 't1', 'live', '2026-01-01T00:00:00Z', 'blobs/t1/a.bin'), "
                "(2, 't1', 'live', '2026-01-01T00:00:00+00:00', 'blobs/t1/gone.bin')"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO uploads VALUES ('incoming/t1/new.bin', 'queued', NULL, '2026-01-01 00:00:00')"
            )
        )
    spec = parse_spec(
        {
            "tables": {
                "assets": {
                    "table": "assets",
                    "id": "pk",
                    "tenant": "team",
                    "status": "state",
                    "updated_at": "changed",
                    "references": [{"column": "blob_url"}],
                }
            },
            "uploads": {
                "prefix": "incoming/{tenant}/",
                "processed_table": "assets",
                "processed_column": "blob_url",
            },
            "jobs": {
                "table": "uploads",
                "key": "k",
                "status": "state",
                "started_at": "begun",
                "updated_at": "touched",
                "requeue_statuses": ["queued"],
            },
            "plans": None,
        }
    )
    store = LocalStorage(tmp_path / "blobs-bucket")
    store.root.mkdir()
    store.put_bytes("blobs/t1/a.bin", b"1")
    store.put_bytes("incoming/t1/new.bin", b"2")
    report = reconcile(store, engine, spec, DiffOptions(min_age=timedelta(0)))
    assert kinds(report) == {"orphan_object": 1, "missing_original": 1}
    assert found(report, "missing_original") == [("2", "blobs/t1/gone.bin")]
    assert found(report, "orphan_object") == [("incoming/t1/new.bin", "incoming/t1/new.bin")]
    assert report.findings.loc[report.findings["kind"] == "orphan_object", "tenant"].tolist() == [
        "t1"
    ]


def test_snapshots_round_trip_through_parquet(sqlite_engine, tmp_path) -> None:
    (tmp_path / "media").mkdir()
    world = World(sqlite_engine, LocalStorage(tmp_path / "media"))
    world.obj("documents/org-1/a.pdf")
    world.image("a", "images/é.jpg")
    world.plan("p", 0, 2)
    storage = list_storage(world.store)
    db = read_database(sqlite_engine, default_spec())
    from integrity.diff import diff_inventories

    report = diff_inventories(
        storage, db, default_spec(), DiffOptions(now=world.base + timedelta(hours=2))
    )

    storage2 = StorageInventory.load(storage.save(tmp_path / "s.parquet"))
    db2 = DatabaseInventory.load(db.save(tmp_path / "db"))
    report2 = ReconciliationReport.load(report.save(tmp_path / "r.parquet"))

    assert storage2.objects.equals(storage.objects) and storage2.prefixes == storage.prefixes
    assert sorted(db2.tables) == sorted(db.tables) and db2.rows == db.rows == 2
    assert report2.counts() == report.counts() and report2.complete and report2.scope == "__all__"
    columns = ["kind", "row_id", "key", "tenant", "action", "detail"]
    assert report2.findings[columns].to_dict("records") == report.findings[columns].to_dict(
        "records"
    )
    assert not list(tmp_path.glob("*.pkl"))
