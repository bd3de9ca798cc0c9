"""The bulk database read: the same rows whichever path reads them, files instead of frames,
and a failed or interrupted read that never leaves part of a table behind."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa

from integrity.identity import encode
from integrity.inventory import PLANS, DatabaseInventory, read_database
from integrity.spec import default_spec, parse_spec
from integrity.storage import LocalStorage
from integrity_tests.world import World

SCHEMA = "bulk_read"

TRICKY = [
    None,
    "",
    "a,b",
    'quote "x" and ""',
    "'single'",
    "line\nbreak",
    "carriage\r\nreturn",
    "tab\there",
    "back\\slash \\N \\. end\\",
    "unicode é 漢字 🙂 \u00a0",
    "NULL",
    " padded ",
]
TENANT = "o'r\\g%_1"  # a quote, a backslash, and both LIKE wildcards


def _spec(tenant_prefix: str = "incoming/{tenant}/"):
    return parse_spec(
        {
            "tables": {
                "assets": {
                    "table": f"{SCHEMA}.assets",
                    "id": ["team", "pk"],
                    "tenant": "team",
                    "status": "state",
                    "updated_at": "changed",
                    "references": [{"column": "blob_url"}, {"column": "staged"}],
                },
                "numbered": {
                    "table": f"{SCHEMA}.numbered",
                    "id": "n",
                    "tenant": "team",
                    "status": "state",
                    "updated_at": "changed",
                    "references": [{"column": "blob_url"}],
                },
                "nothing": {
                    "table": f"{SCHEMA}.nothing",
                    "tenant": "team",
                    "references": [{"column": "blob_url"}],
                },
            },
            "uploads": {
                "prefix": tenant_prefix,
                "processed_table": "assets",
                "processed_column": "blob_url",
            },
            "jobs": {
                "table": f"{SCHEMA}.uploads",
                "key": "k",
                "status": "state",
                "started_at": "begun",
                "updated_at": "touched",
            },
            "plans": {
                "table": f"{SCHEMA}.plans",
                "id": "plan_id",
                "tenant": "org",
                "project": "project",
                "completed": "done",
                "total": "pages",
                "updated_at": "changed",
            },
        }
    )


@pytest.fixture
def pg(postgres_engine: sa.Engine) -> Iterator[sa.Engine]:
    """Tables in their own schema with every awkward value text, times and numbers can hold."""
    statements = [
        f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE",
        f"CREATE SCHEMA {SCHEMA}",
        f"CREATE TYPE {SCHEMA}.state AS ENUM ('live', 'error', 'queued')",
        f"CREATE TABLE {SCHEMA}.assets (pk text, team text, state {SCHEMA}.state,"
        " changed timestamptz, blob_url text, staged text)",
        f"CREATE TABLE {SCHEMA}.numbered (n bigint, team text, state text, changed timestamp,"
        " blob_url varchar(200))",
        f"CREATE TABLE {SCHEMA}.nothing (id text, team text, status text, updated_at timestamptz,"
        " blob_url text)",
        f"CREATE TABLE {SCHEMA}.uploads (k text, state text, begun timestamp, touched timestamptz)",
        f"CREATE TABLE {SCHEMA}.plans (plan_id text, org text, project text, status text,"
        " done bigint, pages integer, changed timestamptz)",
    ]
    with postgres_engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)
        assets = sa.table(
            "assets",
            *map(sa.column, ["pk", "team", "state", "changed", "blob_url", "staged"]),
            schema=SCHEMA,
        )
        rows = []
        for i, value in enumerate(TRICKY):
            rows.append(
                {
                    "pk": value,
                    "team": [TENANT, "other", None][i % 3],
                    "state": ["live", "error", "queued"][i % 3],
                    "changed": datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)
                    if i % 2
                    else None,
                    "blob_url": value,
                    "staged": TRICKY[-1 - i],
                }
            )
        # Another tenant's rows under the tenant's upload prefix belong to the tenant; rows
        # under prefixes its '%' and '_' would match unescaped do not.
        for pk, key in [
            ("mine", f"incoming/{TENANT}/a.bin"),
            ("wild-1", "incoming/o'r\\gXY1/b.bin"),
            ("wild-2", "incoming/o'r\\g%_1x/c.bin"),
            ("wild-3", "incoming/O'R\\G%_1/d.bin"),
        ]:
            rows.append(
                {"pk": pk, "team": "other", "state": "live", "changed": None, "blob_url": key}
            )
        conn.execute(assets.insert(), [{"staged": None, **row} for row in rows])
        conn.exec_driver_sql(
            f"INSERT INTO {SCHEMA}.assets VALUES ('aware', 'other', 'live', "
            "'2026-03-01 05:00:00.5+05:30', 'x', NULL)"
        )
        conn.exec_driver_sql(
            f"INSERT INTO {SCHEMA}.numbered VALUES (9007199254740993, 'other', 'live',"
            " '2026-01-01 23:59:59.999999', 'k1'), (-1, %s, 'live', NULL, NULL)",
            (TENANT,),
        )
        conn.exec_driver_sql(
            f"INSERT INTO {SCHEMA}.uploads VALUES (%s, 'queued', '2026-02-01 10:00:00', "
            "'2026-02-01 10:00:00+00'), ('incoming/o''r\\gXY1/b.bin', 'failed', NULL, NULL)",
            (f"incoming/{TENANT}/a.bin",),
        )
        conn.exec_driver_sql(
            f"INSERT INTO {SCHEMA}.plans VALUES ('p1', %s, 'prj', 'tiling', 4611686018427387904,"
            " 2147483647, '2026-01-01 00:00:00+00'), ('p2', 'other', 'prj', 'done', NULL, 0, NULL)",
            (TENANT,),
        )
    yield postgres_engine
    with postgres_engine.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")


@pytest.mark.parametrize("tenant", [None, TENANT])
def test_the_bulk_read_gives_exactly_what_the_select_gives(pg, tmp_path, tenant) -> None:
    spec = _spec()
    select = read_database(pg, spec, tenant=tenant, method="select")
    bulk = read_database(pg, spec, tenant=tenant, method="adbc", directory=tmp_path)
    assert select.complete and bulk.complete
    assert bulk.table_rows == select.table_rows
    for name in select.tables:
        assert pq.read_table(bulk.paths[name]).equals(pq.read_table(select.paths[name]))
        pd.testing.assert_frame_equal(bulk.tables[name], select.tables[name])


def test_the_bulk_read_keeps_every_value(pg) -> None:
    db = read_database(pg, _spec(), method="adbc")
    assets = db.tables["assets"].set_index("row_id")
    urls = [None if pd.isna(u) else u for u in assets["blob_url"]]
    assert sorted(map(repr, [u for u in urls if u in TRICKY])) == sorted(map(repr, TRICKY))
    assert urls.count(None) == 1  # '' and 'NULL' are not NULL
    first = assets.loc[encode([TENANT, None])]  # a NULL part of the identity is null
    assert pd.isna(first["blob_url"]) and first["staged"] == " padded "
    assert first["status"] == "live"
    assert pd.isna(first["updated_at"])
    assert assets.loc[encode([None, "line\nbreak"]), "staged"] == "carriage\r\nreturn"
    assert assets.loc[encode(["other", ""]), "updated_at"] == pd.Timestamp(
        "2026-01-02 03:04:05.678901", tz="UTC"
    )
    # An aware timestamp in another zone is the same instant in UTC.
    assert assets.loc[encode(["other", "aware"]), "updated_at"] == pd.Timestamp(
        "2026-02-28 23:30:00.5", tz="UTC"
    )
    numbered = db.tables["numbered"].set_index("row_id")
    assert sorted(numbered.index) == ["-1", "9007199254740993"]
    # A timestamp without time zone is taken as UTC.
    assert numbered.loc["9007199254740993", "updated_at"] == pd.Timestamp(
        "2026-01-01 23:59:59.999999", tz="UTC"
    )
    assert str(db.tables["numbered"]["updated_at"].dtype) == "datetime64[us, UTC]"
    plans = pq.read_table(db.paths[PLANS]).to_pydict()
    assert plans["completed"] == [2**62, None] and plans["total"] == [2**31 - 1, 0]
    assert db.tables["nothing"].empty
    assert list(db.tables["nothing"].columns) == [
        "row_id",
        "tenant",
        "status",
        "updated_at",
        "blob_url",
    ]


def test_the_tenant_filter_escapes_its_wildcards_and_quotes(pg) -> None:
    db = read_database(pg, _spec(), tenant=TENANT, method="adbc")
    own = [encode([TENANT, TRICKY[i]]) for i in (0, 3, 6, 9)]
    # 'mine' is another tenant's row under the tenant's upload prefix; the prefixes its '%'
    # and '_' would match unescaped, and the one in other case, are not the tenant's.
    assert sorted(db.tables["assets"]["row_id"]) == sorted([*own, encode(["other", "mine"])])
    assert db.tables["__jobs__"]["key"].tolist() == [f"incoming/{TENANT}/a.bin"]
    assert db.tables["numbered"]["row_id"].tolist() == ["-1"]
    assert db.tables[PLANS]["row_id"].tolist() == ["p1"]


def _big_table(engine: sa.Engine, fail: str) -> None:
    """30,000 rows of 1 kB, so that the read is several batches long (ADBC's are about 16 MB,
    the SELECT's 10,000 rows) before row 25,000 meets `fail`, an SQL expression of `i`."""
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        conn.exec_driver_sql(f"CREATE SCHEMA {SCHEMA}")
        conn.exec_driver_sql(f"CREATE SEQUENCE {SCHEMA}.kills")
        conn.exec_driver_sql(
            f"""CREATE FUNCTION {SCHEMA}.lose_connection_once(i bigint) RETURNS text AS $$
            BEGIN
              IF i = 25000 AND nextval('{SCHEMA}.kills') = 1 THEN
                PERFORM pg_terminate_backend(pg_backend_pid());
              END IF;
              RETURN 'live';
            END $$ LANGUAGE plpgsql VOLATILE"""
        )
        conn.exec_driver_sql(
            f"CREATE TABLE {SCHEMA}.stored AS SELECT i, 'img-' || i AS id, 't' || (i %% 7) AS team,"
            " timestamptz '2026-01-01' + i * interval '1 second' AS updated_at,"
            f" repeat('k', 1000) || i AS blob_url FROM generate_series(1, 30000) AS i"
        )
        conn.exec_driver_sql(
            f"CREATE VIEW {SCHEMA}.big AS SELECT id, team, {fail} AS status, updated_at, blob_url"
            f" FROM {SCHEMA}.stored"
        )


def _big_spec():
    return parse_spec(
        {
            "tables": {
                "big": {
                    "table": f"{SCHEMA}.big",
                    "tenant": "team",
                    "references": [{"column": "blob_url"}],
                }
            },
            "uploads": None,
            "jobs": None,
            "plans": None,
        }
    )


@pytest.mark.parametrize("method", ["select", "auto"])
def test_a_read_failing_midway_is_incomplete_and_leaves_no_partial_rows(
    postgres_engine, tmp_path, method
) -> None:
    _big_table(postgres_engine, "CASE WHEN i = 25000 THEN (1 / (i - i))::text ELSE 'live' END")
    progress: list[int] = []
    db = read_database(
        postgres_engine,
        _big_spec(),
        directory=tmp_path,
        method=method,  # type: ignore[arg-type]
        on_progress=lambda kind, n: progress.append(n),
    )
    assert not db.complete
    assert len(db.errors) == 1
    assert db.errors[0].startswith(f"reading tables.big ({SCHEMA}.big) failed after 1 attempts: ")
    assert "division by zero" in db.errors[0]
    # Rows had been read (and reported) before the failure; all were taken back.
    assert sum(n for n in progress if n > 0) > 0 and sum(progress) == 0
    assert pq.read_metadata(tmp_path / "big.parquet").num_rows == 0
    assert db.table_rows == {"big": 0} and db.tables["big"].empty
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.parquet"]


@pytest.mark.parametrize("method", ["select", "auto"])
def test_a_lost_connection_is_retried_from_the_start(postgres_engine, tmp_path, method) -> None:
    _big_table(postgres_engine, f"{SCHEMA}.lose_connection_once(i)")
    progress: list[int] = []
    db = read_database(
        postgres_engine,
        _big_spec(),
        directory=tmp_path,
        method=method,  # type: ignore[arg-type]
        on_progress=lambda kind, n: progress.append(n),
    )
    assert db.complete, db.errors
    with postgres_engine.connect() as conn:
        assert conn.exec_driver_sql(f"SELECT last_value FROM {SCHEMA}.kills").scalar() >= 2
    assert sum(progress) == 30_000 and sum(n for n in progress if n > 0) > 30_000
    frame = db.tables["big"]
    assert len(frame) == 30_000 and frame["row_id"].is_unique
    assert set(frame["status"]) == {"live"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.parquet"]


def test_a_password_never_reaches_the_reasons() -> None:
    engine = sa.create_engine("postgresql+psycopg://app:s3cret-pw@127.0.0.1:1/nowhere")
    db = read_database(engine, default_spec(), method="adbc", attempts=1)
    assert not db.complete and len(db.errors) == len(db.paths) == 4
    assert all("s3cret-pw" not in e and "\n" not in e for e in db.errors)
    assert db.errors[0].startswith("reading tables.documents (documents) failed after 1 attempts:")


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_inventory_holds_files_not_frames(request, tmp_path, backend) -> None:
    engine = request.getfixturevalue(f"{backend}_engine")
    (tmp_path / "media").mkdir()
    world = World(engine, LocalStorage(tmp_path / "media"))
    for i in range(50):
        world.image(f"i{i}", f"images/{i}.jpg")
    allocated = pa.total_allocated_bytes()
    db = read_database(engine, default_spec(), directory=tmp_path / "db")
    # Nothing is held in memory after the read: no frame, no Arrow buffer.
    assert db.tables.loaded == frozenset() and pa.total_allocated_bytes() <= allocated
    assert db.table_rows == {"documents": 0, "images": 50, "__jobs__": 0, "__plans__": 0}
    assert db.rows == 50 and db.tables.loaded == frozenset()
    assert db.paths["images"] == tmp_path / "db" / "images.parquet"
    # The frame comes from the file when first used: what is on disk then is what it shows.
    path = db.paths["images"]
    table = pq.read_table(path)
    pq.write_table(table.slice(0, 7), path)
    assert len(db.tables["images"]) == 7 and db.tables.loaded == {"images"}
    assert sorted(db.tables) == ["__jobs__", "__plans__", "documents", "images"]


def test_saving_moves_or_keeps_the_files_never_copies_them_twice(sqlite_engine, tmp_path) -> None:
    (tmp_path / "media").mkdir()
    world = World(sqlite_engine, LocalStorage(tmp_path / "media"))
    world.image("a", "images/a.jpg")
    # Read into a temporary directory the inventory owns, then saved: the file is moved.
    db = read_database(sqlite_engine, default_spec())
    scratch = db.paths["images"]
    assert scratch.is_file() and not scratch.is_relative_to(tmp_path)
    db.save(tmp_path / "snap")
    assert not scratch.exists() and db.paths["images"] == tmp_path / "snap" / "images.parquet"
    assert DatabaseInventory.load(tmp_path / "snap").tables["images"]["row_id"].tolist() == ["a"]
    # Read straight into its target directory, then saved there: the file is left alone.
    db = read_database(sqlite_engine, default_spec(), directory=tmp_path / "direct")
    before = os.stat(db.paths["images"])
    db.save(tmp_path / "direct")
    after = os.stat(tmp_path / "direct" / "images.parquet")
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sorted(p.name for p in (tmp_path / "direct").iterdir()) == [
        "__jobs__.parquet",
        "__plans__.parquet",
        "documents.parquet",
        "images.parquet",
        "inventory.json",
    ]
    # A loaded inventory saved elsewhere is copied, its own directory untouched.
    loaded = DatabaseInventory.load(tmp_path / "direct")
    loaded.save(tmp_path / "copy")
    assert (tmp_path / "direct" / "images.parquet").is_file()
    assert DatabaseInventory.load(tmp_path / "copy").rows == 1


def test_the_temporary_directory_goes_with_the_inventory(sqlite_engine) -> None:
    db = read_database(sqlite_engine, default_spec())
    directory = Path(db.paths["images"]).parent
    tables = db.tables
    del db
    assert directory.is_dir() and tables["images"].empty  # the frames' mapping keeps it
    del tables
    gc.collect()
    assert not directory.exists()
