"""S3 Inventory reports as the storage side: the AWS layout in CSV, Parquet and ORC, written to
moto's S3 (over HTTP) and to a directory, read back into the same findings a listing gives.

Reports are written by integrity_tests.inventory_reports exactly as AWS lays them out; the
database is SQLite (and PostgreSQL where the engine fixture runs both).
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pytest
import sqlalchemy as sa

from integrity import cli, settings
from integrity.defs.io_managers import ParquetSnapshotIOManager
from integrity.defs.reconciliation.assets import reconciliation_assets
from integrity.defs.resources import (
    DatabaseResource,
    QueueResource,
    SpecResource,
    StorageResource,
    resources_from_env,
)
from integrity.diff import DiffOptions
from integrity.errors import InventoryError, SpecError, UsageError
from integrity.inventory import ALL_TENANTS, list_storage
from integrity.inventory.reports import decode_form_keys, open_report
from integrity.reconcile import reconcile
from integrity.spec import parse_spec
from integrity.storage import LocalStorage, S3Storage
from integrity_tests.dagster_world import EXPECTED, plant_drift
from integrity_tests.inventory_reports import (
    VERSIONED_FIELDS,
    BucketDestination,
    DirectoryDestination,
    form_encode,
    objects_table,
    table_from_listing,
    write_report,
)
from integrity_tests.world import HOUR, World

FORMATS = ["CSV", "Parquet", "ORC"]
NFC = unicodedata.normalize("NFC", "documents/org-1/résumé.pdf")
NFD = unicodedata.normalize("NFD", NFC)
CV_NFC = unicodedata.normalize("NFC", "documents/org-1/cv-résumé.pdf")
CV_NFD = unicodedata.normalize("NFD", CV_NFC)
TRICKY = [
    "documents/org-1/a b+c%d.pdf",
    "documents/org-1/100%25 +.pdf",
    "documents/org-1/x,\"y'.pdf",
    NFC,
    NFD,
    "documents/org-1/日本語/ファイル.pdf",
    "documents/org-1/line\nbreak.pdf",
    "documents/org-1/~*tilde&=?#.pdf",
]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("INTEGRITY_") and name != "INTEGRITY_TEST_POSTGRES_URL":
            monkeypatch.delenv(name)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def triples(report: Any) -> set[tuple[str, str | None, str | None]]:
    f = report.findings
    return set(zip(f["kind"], f["row_id"], f["key"]))


def plant(world: World) -> None:
    """One finding of every kind storage decides, among objects with keys that need care."""
    for n, key in enumerate(k for k in TRICKY if "\n" not in k):  # a newline is no reference
        world.document(f"d-tricky-{n}", world.obj(key))
    world.document("d-missing", "documents/org-1/gone.pdf")
    world.document("d-nfd", CV_NFD)
    world.obj(CV_NFC)
    world.obj("documents/org-1/orphan.pdf")
    world.job(world.obj("documents/org-1/stuck.pdf"), "processing", started_ago=timedelta(days=2))
    world.image("img-1", world.obj("images/proj-1/a.jpg"), "images/proj-1/a-staged.jpg")
    world.plan("p1", 0, 2)
    world.sheet("p1", "s1")
    world.sheet("p1", "s2")


EXPECTED_ALL = {
    ("orphan_object", "documents/org-1/orphan.pdf", "documents/org-1/orphan.pdf"),
    ("stuck_job", "documents/org-1/stuck.pdf", "documents/org-1/stuck.pdf"),
    ("missing_original", "d-missing", "documents/org-1/gone.pdf"),
    ("missing_staged", "img-1", "images/proj-1/a-staged.jpg"),
    ("progress_behind", "p1", "organizations/org-1/projects/proj-1/plans/p1/sheets/"),
    ("normalization_mismatch", "d-nfd", CV_NFD),
}


def report_of(store: Any, destination: Any, created_at: datetime, fmt: str, **kwargs: Any) -> Any:
    """An inventory report of exactly what a listing of the store finds now."""
    table = table_from_listing(list_storage(store).objects, source_bucket=store.bucket)
    return write_report(
        destination, table, source_bucket=store.bucket, created_at=created_at, fmt=fmt, **kwargs
    )


# --------------------------------------------------------------------------- the format


@pytest.mark.parametrize("fmt", FORMATS)
def test_tricky_keys_sizes_and_dates_survive_every_format(tmp_path: Path, fmt: str) -> None:
    created = datetime(2024, 5, 6, 7, 8, tzinfo=timezone.utc)
    when = [datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=timezone.utc)] * len(TRICKY)
    table = objects_table(
        TRICKY,
        source_bucket="src",
        sizes=range(10, 10 + len(TRICKY)),
        etags=[f"{n:032x}" for n in range(len(TRICKY))],
        last_modified=when,
    )
    written = write_report(
        DirectoryDestination(tmp_path / "dest"),
        table,
        source_bucket="src",
        created_at=created,
        fmt=fmt,
        files=3,
    )
    assert written.destination == f"{tmp_path}/dest/inventory/src/daily/"
    assert written.manifest_key == "inventory/src/daily/2024-05-06T07-08Z/manifest.json"
    assert len(written.data_keys) == 3
    for source in (written.manifest, written.destination):
        report = open_report(source)
        inventory = report.read(bucket="src")
        assert inventory.source == f"inventory {written.manifest}"
        assert inventory.snapshot_at == created and inventory.as_of == created
        got = inventory.objects.sort_values("size")
        assert list(got["key"]) == TRICKY
        assert list(got["size"]) == list(range(10, 10 + len(TRICKY)))
        assert list(got["etag"]) == [f'"{n:032x}"' for n in range(len(TRICKY))]
        assert set(got["last_modified"]) == {when[0]}


def test_csv_keys_are_form_encoded_as_aws_writes_them() -> None:
    keys = pa.array(["a b+c/%.txt", "é", "x*y_z-1.~"])
    assert form_encode(keys).to_pylist() == ["a+b%2Bc%2F%25.txt", "%C3%A9", "x*y_z-1.%7E"]
    assert decode_form_keys(form_encode(keys)).to_pylist() == keys.to_pylist()
    assert decode_form_keys(pa.array(["a%20b+c", "%e2%82%ac"])).to_pylist() == ["a b c", "€"]
    with pytest.raises(ValueError, match="without two hex digits"):
        decode_form_keys(pa.array(["ok", "bad%2"]))
    with pytest.raises(ValueError, match="not UTF-8"):
        decode_form_keys(pa.array(["%FF"]))


@pytest.mark.parametrize("fmt", FORMATS)
def test_versioned_inventory_keeps_current_versions_that_are_not_delete_markers(
    tmp_path: Path, fmt: str
) -> None:
    table = objects_table(
        ["a.pdf", "a.pdf", "b.pdf", "b.pdf", "c.pdf"],
        source_bucket="src",
        version_ids=["v2", "v1", "v2", "v1", None],
        is_latest=[True, False, True, False, True],
        is_delete_marker=[False, False, True, False, False],
        sizes=[2, 1, 0, 5, 3],
    )
    written = write_report(
        DirectoryDestination(tmp_path),
        table,
        source_bucket="src",
        created_at=datetime(2024, 1, 1, tzinfo=timezone.utc),
        fmt=fmt,
        fields=VERSIONED_FIELDS,
    )
    objects = open_report(written.manifest).read(bucket="src").objects
    assert sorted(zip(objects["key"], objects["size"])) == [("a.pdf", 2), ("c.pdf", 3)]


def test_prefixes_keep_only_the_keys_under_them(tmp_path: Path) -> None:
    keys = ["documents/t1/a", "documents/t10/b", "documents/t2/c", "images/t1/d", "x"]
    written = write_report(
        DirectoryDestination(tmp_path),
        objects_table(keys, source_bucket="src"),
        source_bucket="src",
        created_at=datetime(2024, 1, 1, tzinfo=timezone.utc),
        files=2,
    )
    report = open_report(written.destination)
    inventory = report.read(bucket="src", prefixes=["documents/t1/", "images/"])
    assert sorted(inventory.objects["key"]) == ["documents/t1/a", "images/t1/d"]
    assert inventory.prefixes == ["documents/t1/", "images/"]


def test_the_newest_complete_report_is_taken_and_the_others_are_named(tmp_path: Path) -> None:
    dest = DirectoryDestination(tmp_path)
    day = datetime(2024, 3, 1, tzinfo=timezone.utc)

    def one(when: datetime, keys: list[str], **kwargs: Any) -> Any:
        return write_report(
            dest,
            objects_table(keys, source_bucket="src"),
            source_bucket="src",
            created_at=when,
            **kwargs,
        )

    complete = one(day, ["old"])
    missing_file = one(day + timedelta(days=1), ["newer"])
    Path(dest.url(missing_file.data_keys[0])).unlink()
    wrong_checksum = one(day + timedelta(days=2), ["newer still"])
    Path(dest.url(wrong_checksum.checksum_key)).write_text("0" * 32)
    unfinished = one(day + timedelta(days=3), ["newest"], checksum=False)
    (tmp_path / "inventory/src/daily/hive").mkdir()  # AWS's Hive folder is no report

    report = open_report(complete.destination)
    assert report.url == complete.manifest
    assert list(report.read(bucket="src").objects["key"]) == ["old"]
    assert report.skipped == [
        "2024-03-04T00-00Z: no manifest.checksum (the report may still be being written)",
        f"2024-03-03T00-00Z: manifest.checksum ('{'0' * 32}') is not the MD5 of manifest.json "
        f"({hashlib.md5(Path(wrong_checksum.manifest).read_bytes()).hexdigest()})",
        f"2024-03-02T00-00Z: data file {missing_file.data_keys[0]} is missing",
    ]
    assert unfinished.manifest  # the newest, passed over

    Path(complete.manifest).unlink()
    with pytest.raises(InventoryError) as failed:
        open_report(complete.destination)
    message = str(failed.value)
    assert message.startswith(f"no complete inventory report under {complete.destination}: ")
    assert message.endswith("2024-03-01T00-00Z: no manifest.json")
    assert "\n" not in message


def test_moto_destination_and_manifest_urls(s3_client: Any, bucket: str) -> None:
    dest = f"inv-{uuid.uuid4().hex[:10]}"
    s3_client.create_bucket(Bucket=dest)
    day = datetime(2024, 3, 1, tzinfo=timezone.utc)
    for n, when in enumerate([day, day + timedelta(days=1)]):
        written = write_report(
            BucketDestination(s3_client, dest),
            objects_table([f"k{n}", "shared"], source_bucket=bucket),
            source_bucket=bucket,
            created_at=when,
            fmt="Parquet",
            prefix="reports/all",
        )
    assert written.destination == f"s3://{dest}/reports/all/{bucket}/daily/"
    report = open_report(written.destination.rstrip("/"), client=s3_client)
    assert report.url == f"s3://{dest}/reports/all/{bucket}/daily/2024-03-02T00-00Z/manifest.json"
    inventory = report.read(bucket=bucket)
    assert sorted(inventory.objects["key"]) == ["k1", "shared"]
    assert inventory.requests == 1  # the data file's GET, through the storage client's retries
    assert open_report(report.url, client=s3_client).read(bucket=bucket).snapshot_at == day + (
        timedelta(days=1)
    )


# --------------------------------------------------------------------------- same findings


@pytest.mark.parametrize("fmt", FORMATS)
def test_an_inventory_gives_the_findings_of_a_listing_of_the_same_bucket(
    s3_client: Any, bucket: str, sqlite_engine: sa.Engine, fmt: str
) -> None:
    store = S3Storage(s3_client, bucket)
    world = World(sqlite_engine, store)
    plant(world)
    dest = f"inv-{uuid.uuid4().hex[:10]}"
    s3_client.create_bucket(Bucket=dest)
    written = report_of(store, BucketDestination(s3_client, dest), world.base + HOUR, fmt, files=2)
    report = open_report(written.destination, client=s3_client)
    for tenant in (None, "org-1", "proj-1"):
        options = DiffOptions(now=world.base + 2 * HOUR, tenant=tenant)
        listed = reconcile(store, sqlite_engine, world.spec, options)
        from_report = reconcile(store, sqlite_engine, world.spec, options, inventory_report=report)
        assert triples(from_report) == triples(listed), tenant
        assert (
            from_report.complete and from_report.storage_source == f"inventory {written.manifest}"
        )
        assert abs(from_report.storage_as_of - (world.base + HOUR)) < timedelta(milliseconds=1)
        assert listed.storage_source == "listing"
        if tenant is None:
            assert triples(listed) == EXPECTED_ALL
        elif tenant == "proj-1":  # its images live outside its prefixes, as the listing found
            assert triples(from_report) == {
                ("missing_staged", "img-1", "images/proj-1/a-staged.jpg")
            }
    assert from_report.objects_checked == listed.objects_checked


def test_rows_changed_after_the_snapshot_are_never_judged_missing(
    tmp_path: Path, sqlite_engine: sa.Engine
) -> None:
    store = LocalStorage(tmp_path / "bucket")
    store.root.mkdir()
    now = datetime.now(timezone.utc)
    early = World(sqlite_engine, store, base=now - 3 * HOUR)
    late = World(sqlite_engine, store, base=now)
    early.document("d-early", "documents/org-1/gone-early.pdf")
    late.document("d-late", "documents/org-1/gone-late.pdf")
    late.document("d-late-nfd", NFD)
    early.obj(NFC)
    early.document("d-ok", early.obj("documents/org-1/ok.pdf"))
    written = report_of(store, DirectoryDestination(tmp_path / "dest"), now - HOUR, "CSV")
    report = open_report(written.destination)
    options = DiffOptions(now=now + HOUR)

    listed = reconcile(store, sqlite_engine, late.spec, options)
    assert {(k, r) for k, r, _ in triples(listed)} == {
        ("missing_original", "d-early"),
        ("missing_original", "d-late"),
        ("normalization_mismatch", "d-late-nfd"),
    }
    snapshot = reconcile(store, sqlite_engine, late.spec, options, inventory_report=report)
    assert {(k, r) for k, r, _ in triples(snapshot)} == {("missing_original", "d-early")}
    assert abs(snapshot.storage_as_of - (now - HOUR)) < timedelta(milliseconds=1)


# --------------------------------------------------------------------------- the command


def _sqlite_url(engine: sa.Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def test_cli_reports_the_snapshot_and_judges_only_rows_older_than_it(
    tmp_path: Path, sqlite_engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    store = LocalStorage(tmp_path / "bucket")
    store.root.mkdir()
    now = datetime.now(timezone.utc)
    World(sqlite_engine, store, base=now - 3 * HOUR).document("d-early", "documents/org-1/a.pdf")
    World(sqlite_engine, store, base=now).document("d-late", "documents/org-1/b.pdf")
    store.put_bytes("documents/org-1/keep.pdf", b"x")
    created = now - HOUR
    written = report_of(store, DirectoryDestination(tmp_path / "dest"), created, "ORC")
    base = ["reconcile", "--db-url", _sqlite_url(sqlite_engine), "--storage-dir", str(store.root)]

    code, out, _ = run(capsys, *base, "--inventory", written.destination, "--json")
    summary = json.loads(out)
    assert code == 0 and summary["findings"]["missing_original"] == 1
    assert [e["row_id"] for e in summary["examples"]] == ["d-early"]
    assert summary["storage_source"] == f"inventory {written.manifest}"
    assert (
        summary["storage_as_of"]
        == datetime.fromtimestamp(int(created.timestamp() * 1000) / 1000, timezone.utc).isoformat()
    )
    assert 3590 < summary["storage_age_seconds"] < 3700

    code, out, _ = run(capsys, *base, "--json")
    listed = json.loads(out)
    assert listed["storage_source"] == "listing" and listed["findings"]["missing_original"] == 2
    assert listed["storage_age_seconds"] < 60

    code, out, _ = run(capsys, *base, "--inventory", written.manifest)
    assert code == 0
    assert f"  snapshot  inventory {written.manifest} as of " in out
    assert " old); rows changed since are never judged missing" in out and "(1h" in out


def _apply_world(store: Any, engine: sa.Engine) -> World:
    world = World(engine, store, base=datetime.now(timezone.utc) - 2 * HOUR)
    world.document("d1", world.obj("documents/org-1/ok.pdf"))
    world.obj("documents/org-1/orphan.pdf")
    world.obj("documents/org-1/deleted-since.pdf")
    return world


def _jobs(engine: sa.Engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        return sorted(
            (r.object_key, r.status)
            for r in conn.execute(sa.text("SELECT object_key, status FROM processing_jobs"))
        )


def test_an_object_deleted_since_the_report_is_skipped_by_the_recheck(
    s3_client: Any,
    bucket: str,
    moto_endpoint: str,
    sqlite_engine: sa.Engine,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = S3Storage(s3_client, bucket)
    _apply_world(store, sqlite_engine)
    dest = f"inv-{uuid.uuid4().hex[:10]}"
    s3_client.create_bucket(Bucket=dest)
    written = report_of(
        store, BucketDestination(s3_client, dest), datetime.now(timezone.utc), "CSV"
    )
    s3_client.delete_object(Bucket=bucket, Key="documents/org-1/deleted-since.pdf")
    monkeypatch.setenv(settings.ENV_ALLOW_WRITES, "1")
    args = [
        "reconcile",
        "--db-url",
        _sqlite_url(sqlite_engine),
        "--bucket",
        bucket,
        "--endpoint-url",
        moto_endpoint,
        "--inventory",
        written.destination,
        "--min-age",
        "0",
        "--json",
    ]

    code, out, err = run(capsys, *args)
    dry = json.loads(out)
    assert code == 0 and dry["findings"]["orphan_object"] == 2  # the snapshot still shows both
    assert dry["planned"]["requeue"] == 2

    code, out, err = run(capsys, *args, "--apply")
    applied = json.loads(out)
    assert code == 0, err
    assert applied["requeued"] == 1 and applied["skipped_gone"] == 1
    assert _jobs(sqlite_engine) == [("documents/org-1/orphan.pdf", "not_started")]


def test_a_report_past_the_age_limit_refuses_apply_and_a_dry_run_says_so(
    tmp_path: Path,
    sqlite_engine: sa.Engine,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = LocalStorage(tmp_path / "bucket")
    store.root.mkdir()
    _apply_world(store, sqlite_engine)
    written = report_of(
        store,
        DirectoryDestination(tmp_path / "dest"),
        datetime.now(timezone.utc) - timedelta(hours=49),
        "Parquet",
    )
    base = [
        "reconcile",
        "--db-url",
        _sqlite_url(sqlite_engine),
        "--storage-dir",
        str(store.root),
        "--inventory",
        written.destination,
        "--min-age",
        "0",
    ]
    monkeypatch.setenv(settings.ENV_ALLOW_WRITES, "1")

    code, out, err = run(capsys, *base, "--apply")
    assert code == cli.EXIT_ERROR and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"integrity: error: --apply: the inventory report {written.manifest} ")
    assert " is 2d1h" in err and "more than the 2d limit" in err
    assert err.rstrip().endswith("; nothing was changed")
    assert _jobs(sqlite_engine) == []
    assert "integrity_runs" not in sa.inspect(sqlite_engine).get_table_names()

    code, out, _ = run(capsys, *base)
    assert code == 0 and "(2d1h" in out
    assert "with --apply, remediation would be refused: the inventory report" in out

    code, out, _ = run(capsys, *base, "--json")
    assert json.loads(out)["apply_refused"].startswith("the inventory report")
    assert 49 * 3600 - 60 < json.loads(out)["storage_age_seconds"] < 49 * 3600 + 600

    # The limit is the flag's, else the environment's, else the spec's.
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text("tables: {}\nuploads: null\ninventory_report: {max_age: 1h}\n")
    monkeypatch.setenv(settings.ENV_INVENTORY_MAX_AGE, "3d")
    code, out, err = run(capsys, *base, "--inventory-max-age", "50h", "--apply", "--json")
    assert code == 0, err
    assert json.loads(out)["requeued"] == 2
    code, out, err = run(capsys, *base, "--spec", str(spec_file), "--json")
    assert "apply_refused" not in json.loads(out)  # the environment's 3d beats the spec's 1h
    monkeypatch.delenv(settings.ENV_INVENTORY_MAX_AGE)
    code, out, err = run(capsys, *base, "--spec", str(spec_file), "--json")
    assert "more than the 1h limit" in json.loads(out)["apply_refused"]


def test_the_source_is_the_flag_else_the_environment_else_the_spec(
    tmp_path: Path,
    sqlite_engine: sa.Engine,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = LocalStorage(tmp_path / "bucket")
    store.root.mkdir()
    store.put_bytes("documents/org-1/a.pdf", b"x")
    now = datetime.now(timezone.utc)
    reports = {
        name: report_of(store, DirectoryDestination(tmp_path / name), now, "CSV")
        for name in ("flag", "env", "spec")
    }
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(
        "tables: {documents: {table: documents, tenant: organization_id, references: "
        f"[{{column: r2_key}}]}}}}\ninventory_report: {{source: '{reports['spec'].destination}'}}\n"
    )
    base = ["reconcile", "--db-url", _sqlite_url(sqlite_engine), "--storage-dir", str(store.root)]
    base += ["--spec", str(spec_file), "--json"]

    def source(*extra: str) -> str:
        code, out, err = run(capsys, *base, *extra)
        assert code == 0, err
        return json.loads(out)["storage_source"]

    assert source() == f"inventory {reports['spec'].manifest}"
    monkeypatch.setenv(settings.ENV_INVENTORY, reports["env"].manifest)
    assert source() == f"inventory {reports['env'].manifest}"
    assert source("--inventory", reports["flag"].destination) == (
        f"inventory {reports['flag'].manifest}"
    )


def test_spec_inventory_report_is_validated_like_the_other_keys() -> None:
    tables = {"documents": {"table": "documents", "tenant": "o", "references": [{"column": "k"}]}}
    spec = parse_spec({"tables": tables, "uploads": None})
    assert spec.inventory_report.source is None
    assert spec.inventory_report.max_age_delta == timedelta(hours=48)
    ok = parse_spec(
        {
            "tables": tables,
            "uploads": None,
            "inventory_report": {"source": "s3://inv/all/src/daily/", "max_age": "2d"},
        }
    )
    assert ok.inventory_report.max_age_delta == timedelta(days=2)
    for bad, message in [
        ({"source": "https://x/y"}, "inventory_report.source: 'https://x/y' is neither an s3://"),
        ({"source": "s3:///nobucket"}, "inventory_report.source: 's3:///nobucket' names no bucket"),
        ({"source": ""}, "inventory_report.source: must be an s3:// URL or a path"),
        ({"max_age": "soon"}, "inventory_report.max_age: 'soon' is not a duration"),
        ({"maxage": "1h"}, "inventory_report.maxage: unknown field"),
    ]:
        with pytest.raises(SpecError) as failed:
            parse_spec({"tables": tables, "uploads": None, "inventory_report": bad})
        assert str(failed.value).startswith(f"spec: {message}"), str(failed.value)


# --------------------------------------------------------------------------- bad input


def _rewrite(path: Path, change: Any) -> None:
    """Change the manifest and keep its checksum file true to it."""
    manifest = json.loads(path.read_text())
    change(manifest)
    body = json.dumps(manifest).encode()
    path.write_bytes(body)
    (path.parent / "manifest.checksum").write_text(hashlib.md5(body).hexdigest())


def _corrupt_same_size(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


BAD_INPUTS: dict[str, tuple[Any, str]] = {
    "another bucket": (
        lambda m, d: _rewrite(m, lambda j: j.update(sourceBucket="other")),
        "inventory manifest {manifest} is a report of bucket 'other', not of 'bucket'",
    ),
    "not JSON": (
        lambda m, d: m.write_text("{not json"),
        "inventory manifest {manifest}: not valid JSON (Expecting property name",
    ),
    "no fileSchema": (
        lambda m, d: _rewrite(m, lambda j: j.pop("fileSchema")),
        "inventory manifest {manifest}: fileSchema is missing",
    ),
    "unknown format": (
        lambda m, d: _rewrite(m, lambda j: j.update(fileFormat="Avro")),
        "inventory manifest {manifest}: fileFormat 'Avro' is not one of CSV, ORC, Parquet",
    ),
    "bad timestamp": (
        lambda m, d: _rewrite(m, lambda j: j.update(creationTimestamp="2024-01-01")),
        "inventory manifest {manifest}: creationTimestamp '2024-01-01' is not milliseconds",
    ),
    "no key field": (
        lambda m, d: _rewrite(m, lambda j: j.update(fileSchema="Bucket, Size")),
        "inventory manifest {manifest}: fileSchema 'Bucket, Size' has no Key field",
    ),
    "bad MD5 entry": (
        lambda m, d: _rewrite(m, lambda j: j["files"][0].update(MD5checksum="xyz")),
        "inventory manifest {manifest}: files[0].MD5checksum of ",
    ),
    "checksum file": (
        lambda m, d: (m.parent / "manifest.checksum").write_text("f" * 32),
        "inventory manifest {manifest}: manifest.checksum ('" + "f" * 32 + "') is not the MD5",
    ),
    "MD5 mismatch": (
        lambda m, d: _corrupt_same_size(d),
        "inventory data file {data}: MD5 ",
    ),
    "size mismatch": (
        lambda m, d: d.write_bytes(d.read_bytes() + b"\0"),
        "inventory data file {data}: ",
    ),
    "missing data file": (
        lambda m, d: d.unlink(),
        "inventory data file {data} is missing",
    ),
    "schema names a column the file lacks": (
        lambda m, d: _rewrite(m, lambda j: j.update(fileSchema=j["fileSchema"] + ", IsLatest")),
        "inventory data file {data}: cannot be read as CSV with the manifest's fileSchema: ",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_every_bad_input_is_one_line_naming_the_file(
    tmp_path: Path,
    sqlite_engine: sa.Engine,
    capsys: pytest.CaptureFixture[str],
    case: str,
) -> None:
    store = LocalStorage(tmp_path / "bucket")
    store.root.mkdir()
    store.put_bytes("documents/org-1/a.pdf", b"x")
    written = report_of(
        store, DirectoryDestination(tmp_path / "dest"), datetime.now(timezone.utc), "CSV"
    )
    manifest, data = (
        Path(written.manifest),
        Path(DirectoryDestination(tmp_path / "dest").url(written.data_keys[0])),
    )
    change, expected = BAD_INPUTS[case]
    change(manifest, data)
    code, out, err = run(
        capsys,
        "reconcile",
        "--db-url",
        _sqlite_url(sqlite_engine),
        "--storage-dir",
        str(store.root),
        "--inventory",
        written.manifest,
    )
    assert code == cli.EXIT_ERROR and out == ""
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("integrity: error: " + expected.format(manifest=manifest, data=data)), err


def test_bad_sources_are_usage_errors(
    tmp_path: Path, sqlite_engine: sa.Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    store = LocalStorage(tmp_path / "bucket")
    store.root.mkdir()
    base = ["reconcile", "--db-url", _sqlite_url(sqlite_engine), "--storage-dir", str(store.root)]
    for source, message in [
        (str(tmp_path / "nowhere"), f"--inventory: {tmp_path / 'nowhere'} does not exist"),
        ("gs://bucket/x/", "--inventory: 'gs://bucket/x/' is neither an s3:// URL"),
        ("s3:///x/", "--inventory: 's3:///x/' names no bucket"),
    ]:
        code, out, err = run(capsys, *base, "--inventory", source)
        assert code == cli.EXIT_USAGE, err
        assert err.startswith(f"integrity: error: {message}") and err.count("\n") == 1
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, *base, "--inventory", str(tmp_path / "empty"))
    assert code == cli.EXIT_ERROR
    assert err.startswith(f"integrity: error: no inventory report under {tmp_path / 'empty'}/")
    code, _, err = run(capsys, *base, "--inventory-max-age", "soon")
    assert code == cli.EXIT_USAGE and err.startswith(
        "integrity: error: --inventory-max-age: 'soon' is not a duration"
    )
    with pytest.raises(UsageError, match="--inventory: must not be empty"):
        open_report(" ")


# --------------------------------------------------------------------------- Dagster


def _dagster_resources(tmp_path: Path, engine: sa.Engine, **storage: Any) -> dict[str, Any]:
    return {
        "storage": StorageResource(**storage),
        "database": DatabaseResource(url=_sqlite_url(engine)),
        "spec": SpecResource(),
        "queue": QueueResource(),
        "snapshot_io_manager": ParquetSnapshotIOManager(base_dir=str(tmp_path / "snapshots")),
    }


def _meta(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    [materialization] = result.asset_materializations_for_node(asset)
    return {key: value.value for key, value in materialization.metadata.items()}


def test_dagster_assets_read_the_inventory_and_remediation_refuses_a_stale_one(
    tmp_path: Path,
    sqlite_engine: sa.Engine,
    instance: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = tmp_path / "integrity-demo"
    root.mkdir()
    plant_drift(LocalStorage(root), sqlite_engine)
    created = datetime.now(timezone.utc)
    fresh = report_of(LocalStorage(root), DirectoryDestination(tmp_path / "dest"), created, "CSV")
    resources = _dagster_resources(
        tmp_path, sqlite_engine, storage_dir=str(root), inventory=fresh.destination
    )
    result = dg.materialize(
        reconciliation_assets,
        resources={k: v for k, v in resources.items() if k != "queue"},
        partition_key=ALL_TENANTS,
        instance=instance,
    )
    storage_meta, report_meta = (
        _meta(result, "storage_inventory"),
        _meta(result, "reconciliation_report"),
    )
    as_of = datetime.fromtimestamp(int(created.timestamp() * 1000) / 1000, timezone.utc)
    for meta in (storage_meta, report_meta):
        assert meta["storage_source"] == f"inventory {fresh.manifest}"
        assert meta["storage_as_of"] == as_of.isoformat()
        assert 0 <= meta["snapshot_age_hours"] < 0.1
    expected_counts, objects, _ = EXPECTED[ALL_TENANTS]
    assert {k: report_meta[f"findings/{k}"] for k in expected_counts} == expected_counts
    assert report_meta["objects_listed"] == objects

    # A stale report: the remediate job writes nothing and fails its step with the reason.
    stale = report_of(
        LocalStorage(root),
        DirectoryDestination(tmp_path / "old"),
        created - timedelta(hours=72),
        "Parquet",
    )
    resources["storage"] = StorageResource(storage_dir=str(root), inventory=stale.manifest)
    dg.materialize(
        reconciliation_assets,
        resources={k: v for k, v in resources.items() if k != "queue"},
        partition_key=ALL_TENANTS,
        instance=instance,
    )
    from integrity.definitions import defs

    monkeypatch.setenv(settings.ENV_ALLOW_WRITES, "1")
    job = defs.resolve_job_def("remediate")

    def remediate(dry_run: bool) -> dg.ExecuteInProcessResult:
        config = {"dry_run": dry_run, "max_change_ratio": 0.5}
        return job.execute_in_process(
            run_config={"ops": {"apply_remediation": {"config": config}}},
            instance=instance,
            resources=resources,
            raise_on_error=False,
        )

    result = remediate(dry_run=False)
    [failure] = result.get_step_failure_events()
    message = failure.step_failure_data.user_failure_data.description
    assert message.startswith(f"the inventory report {stale.manifest} is 3d")
    assert message.endswith("; nothing was changed") and "\n" not in message
    assert "integrity_runs" not in sa.inspect(sqlite_engine).get_table_names()
    assert remediate(dry_run=True).success


def test_the_inventory_variables_reach_the_storage_resource(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(settings.ENV_INVENTORY, "s3://inv/all/src/daily/")
    monkeypatch.setenv(settings.ENV_INVENTORY_MAX_AGE, "36h")
    with dg.build_resources({"storage": resources_from_env()["storage"]}) as built:
        assert built.storage.inventory == "s3://inv/all/src/daily/"
        spec = parse_spec({"tables": {}, "uploads": None})
        assert built.storage.max_inventory_age(spec) == timedelta(hours=36)
    assert StorageResource().max_inventory_age(spec) == timedelta(hours=48)
