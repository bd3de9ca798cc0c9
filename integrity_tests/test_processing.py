"""The processor on real parts: PDFs made with pdfium, pyvips pyramids, moto's S3 over HTTP,
SQLite and PostgreSQL, and the `process_document` job run in-process on a test instance.

Pages are small (72 dpi, a few hundred points) so the whole file runs in seconds.
"""

from __future__ import annotations

import gc
import tempfile
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pypdfium2 as pdfium
import pytest
import pyvips
import sqlalchemy as sa

from integrity import schema
from integrity.defs.names import PROCESS_JOB, PROCESS_OP
from integrity.defs.processing.jobs import process_document_job, process_run_config
from integrity.defs.resources import DatabaseResource, SpecResource, StorageResource
from integrity.demo import minimal_pdf, url_form
from integrity.errors import IntegrityError
from integrity.processing import (
    ProcessingFailed,
    ProcessOptions,
    expected_tiles,
    parse_dzi,
    process_object,
)
from integrity.processing.render import DziGeometry, deep_zoom, level_sizes, open_pdf, sniff
from integrity.processing.state import claim_processing_job, plan_id_for
from integrity.settings import DEMO_BUCKET
from integrity.spec import default_spec
from integrity.storage import LocalStorage, S3Storage
from integrity.storage.base import ObjectStore
from integrity_tests.pdfs import make_pdf

ORG = "org-1"
LETTER = (612.0, 792.0)
PAGE_SIZES = [(600.0, 400.0), (300.0, 520.0), (257.0, 129.0)]  # points = pixels at 72 dpi
OPTIONS = ProcessOptions(dpi=72)
TINY_PAGE = (20.0, 20.0)  # one tile per level: cheap page counts
SPEC = default_spec()
NO_SLEEP = lambda seconds: None  # noqa: E731


@pytest.fixture(scope="module")
def plan_pdf() -> bytes:
    return make_pdf(PAGE_SIZES)


@pytest.fixture(scope="module")
def instance():
    """One Dagster instance for the job tests (its SQLite storage is slow to create)."""
    with dg.instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture
def store(tmp_path: Path) -> LocalStorage:
    root = tmp_path / "bucket"
    root.mkdir()
    return LocalStorage(root, bucket=DEMO_BUCKET)


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The processor's temporary directory parent, to check it cleans up after itself."""
    directory = tmp_path / "tmp"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


def _rows(engine: sa.Engine, table: sa.Table) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(table))]


def _all_rows(engine: sa.Engine) -> dict[str, list[dict[str, Any]]]:
    tables = (schema.documents, schema.processing_jobs, schema.plans, schema.images)
    return {t.name: sorted(_rows(engine, t), key=repr) for t in tables}


def _keys(store: ObjectStore, prefix: str = "") -> dict[str, tuple[str, datetime]]:
    out = {}
    for page in store.list_pages(prefix):
        out.update(zip(page.keys, zip(page.etags, page.last_modified)))
    return out


def _photo(width: int, height: int) -> bytes:
    xyz = pyvips.Image.xyz(width, height)
    image = (xyz[0] % 256).bandjoin([xyz[1] % 256, (xyz[0] + xyz[1]) % 256]).cast("uchar")
    return image.jpegsave_buffer(Q=80)


def _process(key: str, store: ObjectStore, engine: sa.Engine, **kwargs: Any):
    kwargs.setdefault("options", OPTIONS)
    kwargs.setdefault("sleep", NO_SLEEP)
    return process_object(key, store=store, engine=engine, spec=SPEC, **kwargs)


def assert_complete_pyramids(store: ObjectStore, plan_prefix: str, sheets: int) -> int:
    """Every sheet under the plan has a .dzi and exactly the tiles its geometry implies."""
    listed = set(_keys(store, plan_prefix))
    descriptors = sorted(k for k in listed if k.endswith(".dzi"))
    assert len(descriptors) == sheets
    tiles = 0
    for descriptor in descriptors:
        geometry = parse_dzi(store.get_bytes(descriptor))
        assert (geometry.tile_size, geometry.overlap, geometry.format) == (256, 1, "jpg")
        base = descriptor.removesuffix(".dzi") + "_files/"
        expected = set()
        for level, (w, h) in enumerate(level_sizes(geometry.width, geometry.height)):
            cols, rows = -(-w // 256), -(-h // 256)
            expected |= {f"{base}{level}/{c}_{r}.jpg" for c in range(cols) for r in range(rows)}
        assert len(expected) == sum(expected_tiles(geometry).values())
        present = {k for k in listed if k.startswith(base)}
        assert present == expected, descriptor
        tiles += len(present)
    return tiles


# --------------------------------------------------------------------------- geometry


def test_dzi_geometry_levels_go_down_to_one_pixel() -> None:
    assert level_sizes(600, 400)[0] == (1, 1)
    assert len(level_sizes(600, 400)) == 11  # ceil(log2 600) + 1
    assert level_sizes(600, 400)[-1] == (600, 400)
    assert level_sizes(600, 400)[-2] == (300, 200)
    assert level_sizes(257, 129)[-2:] == [(129, 65), (257, 129)]
    # 600x400: level 10 holds 3x2 tiles, level 9 (300x200) 2x1, the nine below one each.
    assert expected_tiles(DziGeometry(600, 400, 256, 1, "jpg")) == {
        **{level: 1 for level in range(9)},
        9: 2,
        10: 6,
    }
    assert expected_tiles(DziGeometry(1, 1, 256, 1, "jpg")) == {0: 1}


def test_rendered_pages_own_their_pixels(tmp_path: Path) -> None:
    """pdfium pads rows (425 px x 3 bytes -> 1276) and frees its bitmap; pyvips must not care."""
    data = make_pdf([(425.0, 300.0), LETTER])
    expected = pdfium.PdfDocument(data)[0].render(scale=1, rev_byteorder=True).to_numpy()
    document = open_pdf(data, dpi=72, max_pixels=10**8, max_pages=10)
    image = document.render(0)
    assert (image.width, image.height, image.bands) == (425, 300, 3)
    assert np.array_equal(image.numpy(), expected)
    # A letter page at 150 dpi, tiled after its source buffers are gone (this once crashed).
    document.dpi = 150
    letter = document.render(1)
    document.close()
    gc.collect()
    files = deep_zoom(letter, "letter", tmp_path)
    geometry = parse_dzi(files[-1][1].read_bytes())
    assert (geometry.width, geometry.height) == (letter.width, letter.height)
    assert geometry.width == 1275 and len(files) - 1 == sum(expected_tiles(geometry).values())


# --------------------------------------------------------------------------- the Dagster job on moto


def _resources(engine: sa.Engine, storage: StorageResource) -> dict[str, Any]:
    return {
        "storage": storage,
        "database": DatabaseResource(url=engine.url.render_as_string(hide_password=False)),
        "spec": SpecResource(),
    }


def _run(key: str, resources: dict[str, Any], instance: dg.DagsterInstance, **config: Any):
    run_config = process_run_config(key, "test", **{"dpi": 72, **config})
    return process_document_job.execute_in_process(
        run_config=run_config, resources=resources, instance=instance, raise_on_error=False
    )


def _output_metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    for event in result.all_node_events:
        if event.event_type_value == "STEP_OUTPUT":
            return {k: v.value for k, v in event.step_output_data.metadata.items()}
    raise AssertionError("no output event")


def test_job_tiles_a_multipage_pdf_on_moto_and_a_rerun_writes_nothing(
    s3_client,
    bucket: str,
    moto_endpoint: str,
    sqlite_engine: sa.Engine,
    plan_pdf: bytes,
    instance: dg.DagsterInstance,
) -> None:
    key = f"documents/{ORG}/plans/tower.pdf"
    s3_client.put_object(Bucket=bucket, Key=key, Body=plan_pdf)
    store = S3Storage(s3_client, bucket)
    resources = _resources(
        sqlite_engine,
        StorageResource(bucket=bucket, endpoint_url=moto_endpoint, region_name="us-east-1"),
    )
    assert process_document_job.name == PROCESS_JOB
    result = _run(key, resources, instance)
    assert result.success
    metadata = _output_metadata(result)
    assert metadata["outcome"] == "processed"
    assert metadata["pages"] == len(PAGE_SIZES)
    assert metadata["sheets_written"] == len(PAGE_SIZES)

    plan_id = plan_id_for(key)
    prefix = f"organizations/{ORG}/projects/unassigned/plans/{plan_id}/sheets/"
    tiles = assert_complete_pyramids(store, prefix, len(PAGE_SIZES))
    assert metadata["tiles_written"] == tiles
    assert metadata["objects_written"] == tiles + len(PAGE_SIZES)
    geometries = [parse_dzi(store.get_bytes(k)) for k in _keys(store, prefix) if "dzi" in k]
    assert sorted((g.width, g.height) for g in geometries) == sorted(
        (int(w), int(h)) for w, h in PAGE_SIZES
    )

    [document] = _rows(sqlite_engine, schema.documents)
    assert (document["r2_key"], document["status"], document["organization_id"]) == (
        key,
        "complete",
        ORG,
    )
    [job] = _rows(sqlite_engine, schema.processing_jobs)
    assert (job["status"], job["attempts"], job["error"]) == ("complete", 1, None)
    [plan] = _rows(sqlite_engine, schema.plans)
    assert plan["plan_id"] == plan_id
    assert (plan["status"], plan["completed_pages"], plan["total_pages"]) == (
        "complete",
        3,
        3,
    )
    assert plan["completed_at"] is not None

    before_objects, before_rows = _keys(store), _all_rows(sqlite_engine)
    again = _run(key, resources, instance)
    assert again.success
    assert _output_metadata(again)["outcome"] == "already_processed"
    assert _output_metadata(again)["objects_written"] == 0
    assert _keys(store) == before_objects  # same keys, etags and last-modified times
    assert _all_rows(sqlite_engine) == before_rows


def test_job_fails_a_bad_object_with_one_line(
    store: LocalStorage, sqlite_engine: sa.Engine, instance: dg.DagsterInstance
) -> None:
    key = f"documents/{ORG}/scans/notes.pdf"
    store.put_bytes(key, b"this is not a document at all")
    resources = _resources(sqlite_engine, StorageResource(storage_dir=str(store.root)))
    result = _run(key, resources, instance)
    assert not result.success
    [failure] = [e for e in result.all_node_events if e.event_type_value == "STEP_FAILURE"]
    description = failure.step_failure_data.user_failure_data.description
    assert description == (
        f"{key}: the object is plain text: not a PDF or an image format libvips can read"
    )
    [job] = _rows(sqlite_engine, schema.processing_jobs)
    assert (job["status"], job["error"]) == ("failed", description.split(": ", 1)[1])
    assert _rows(sqlite_engine, schema.documents) == []
    assert _rows(sqlite_engine, schema.plans) == []


def test_job_refuses_a_pdf_over_max_pages_before_writing_anything(
    store: LocalStorage, sqlite_engine: sa.Engine, instance: dg.DagsterInstance
) -> None:
    key = f"documents/{ORG}/plans/long-set.pdf"
    store.put_bytes(key, make_pdf([TINY_PAGE] * 4))
    objects = _keys(store)
    resources = _resources(sqlite_engine, StorageResource(storage_dir=str(store.root)))
    result = _run(key, resources, instance, max_pages=3)
    assert not result.success
    [failure] = [e for e in result.all_node_events if e.event_type_value == "STEP_FAILURE"]
    description = failure.step_failure_data.user_failure_data.description
    assert description == f"{key}: the PDF has 4 pages, over the limit of 3 (max_pages)"
    [job] = _rows(sqlite_engine, schema.processing_jobs)
    assert (job["status"], job["error"]) == ("failed", description.split(": ", 1)[1])
    assert _rows(sqlite_engine, schema.plans) == []  # no plan started, no progress
    assert _rows(sqlite_engine, schema.documents) == []
    assert _keys(store) == objects  # no tile, no sheet


def test_the_run_config_builder_takes_the_options_and_refuses_unknown_ones() -> None:
    config = process_run_config("k", "manual", max_pages=3, dpi=96)["ops"][PROCESS_OP]["config"]
    assert config == {"key": "k", "source": "manual", "max_pages": 3, "dpi": 96}
    with pytest.raises(IntegrityError, match="unknown option 'max_page'"):
        process_run_config("k", "manual", max_page=3)


# --------------------------------------------------------------------------- the core


def test_existing_plan_row_decides_the_project_and_present_sheets_are_skipped_but_counted(
    store: LocalStorage, engine: sa.Engine, plan_pdf: bytes, scratch: Path
) -> None:
    key = f"documents/{ORG}/plans/tower-l1.pdf"
    store.put_bytes(key, plan_pdf)
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    with engine.begin() as conn:
        conn.execute(
            schema.plans.insert().values(
                plan_id="tower-l1",
                organization_id=ORG,
                project_id="prj-tower",
                status="processing",
                completed_pages=0,
                total_pages=3,
                updated_at=now,
            )
        )
    first = _process(key, store, engine)
    prefix = f"organizations/{ORG}/projects/prj-tower/plans/tower-l1/sheets/"
    assert (first.plan_id, first.project) == ("tower-l1", "prj-tower")
    assert_complete_pyramids(store, prefix, 3)

    # Lose the third sheet and the documents row; the job is re-queued.
    for k in _keys(store, prefix + "page-003/"):
        store.root.joinpath(*k.split("/")).unlink()
    with engine.begin() as conn:
        conn.execute(schema.documents.delete())
        conn.execute(schema.processing_jobs.update().values(status="not_started"))
    kept = {k: v for k, v in _keys(store, prefix).items()}

    second = _process(key, store, engine)
    assert (second.sheets_skipped, second.sheets_written) == (2, 1)
    tiles = assert_complete_pyramids(store, prefix, 3)
    assert second.objects_written == second.tiles_written + 1 < tiles
    assert {k: v for k, v in _keys(store, prefix).items() if k in kept} == kept
    [plan] = _rows(engine, schema.plans)
    assert (plan["completed_pages"], plan["status"]) == (3, "complete")
    [job] = _rows(engine, schema.processing_jobs)
    assert (job["status"], job["attempts"]) == ("complete", 2)
    assert len(_rows(engine, schema.documents)) == 1
    assert list(scratch.iterdir()) == []  # the work directory is gone


def _install_progress_fault(engine: sa.Engine, failures: int) -> None:
    """Make UPDATEs of plans.completed_pages fail in the database while fault rows remain."""
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE progress_fault (n INTEGER)"))
        for n in range(failures):
            conn.execute(sa.text("INSERT INTO progress_fault VALUES (:n)"), {"n": n})
        if engine.dialect.name == "sqlite":
            conn.execute(
                sa.text(
                    "CREATE TRIGGER progress_fault_trigger BEFORE UPDATE OF completed_pages "
                    "ON plans WHEN (SELECT count(*) FROM progress_fault) > 0 "
                    "BEGIN SELECT RAISE(ABORT, 'progress blocked'); END"
                )
            )
        else:
            conn.execute(
                sa.text(
                    "CREATE FUNCTION progress_fault_fn() RETURNS trigger AS $$ BEGIN "
                    "IF (SELECT count(*) FROM progress_fault) > 0 THEN "
                    "RAISE EXCEPTION 'progress blocked'; END IF; RETURN NEW; END $$ "
                    "LANGUAGE plpgsql"
                )
            )
            conn.execute(
                sa.text(
                    "CREATE TRIGGER progress_fault_trigger BEFORE UPDATE OF completed_pages "
                    "ON plans FOR EACH ROW EXECUTE FUNCTION progress_fault_fn()"
                )
            )


def _drop_progress_fault(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.execute(sa.text("DROP TRIGGER progress_fault_trigger"))
        else:
            conn.execute(sa.text("DROP TRIGGER progress_fault_trigger ON plans"))
            conn.execute(sa.text("DROP FUNCTION progress_fault_fn()"))
        conn.execute(sa.text("DROP TABLE progress_fault"))


def _sleep_clearing_one_fault(engine: sa.Engine, slept: list[float]):
    def sleep(seconds: float) -> None:
        slept.append(seconds)
        with engine.begin() as conn:
            conn.execute(
                sa.text("DELETE FROM progress_fault WHERE n = (SELECT min(n) FROM progress_fault)")
            )

    return sleep


def test_progress_update_is_retried_with_backoff_and_succeeds_on_the_third_attempt(
    store: LocalStorage, engine: sa.Engine, plan_pdf: bytes
) -> None:
    key = f"documents/{ORG}/plans/retry.pdf"
    store.put_bytes(key, plan_pdf)
    _install_progress_fault(engine, failures=2)
    slept: list[float] = []
    try:
        result = _process(key, store, engine, sleep=_sleep_clearing_one_fault(engine, slept))
    finally:
        _drop_progress_fault(engine)
    assert slept == [1.0, 2.0]
    assert result.outcome == "processed"
    [plan] = _rows(engine, schema.plans)
    assert (plan["completed_pages"], plan["status"]) == (3, "complete")


def test_progress_update_gives_up_after_three_retries_and_fails_the_job(
    store: LocalStorage, engine: sa.Engine, plan_pdf: bytes
) -> None:
    key = f"documents/{ORG}/plans/blocked.pdf"
    store.put_bytes(key, plan_pdf)
    _install_progress_fault(engine, failures=100)
    slept: list[float] = []
    try:
        with pytest.raises(ProcessingFailed, match="database error: .*progress blocked"):
            _process(key, store, engine, sleep=lambda s: slept.append(s))
    finally:
        _drop_progress_fault(engine)
    assert slept == [1.0, 2.0, 4.0]
    [job] = _rows(engine, schema.processing_jobs)
    assert job["status"] == "failed" and "progress blocked" in job["error"]
    assert _rows(engine, schema.documents) == []
    [plan] = _rows(engine, schema.plans)  # honest: processing, nothing counted yet
    assert (plan["status"], plan["completed_pages"], plan["total_pages"]) == ("processing", 0, 3)
    # The tiles of the first sheet are there; a retry skips that sheet and completes.
    retried = _process(key, store, engine)
    assert (retried.sheets_skipped, retried.sheets_written) == (1, 2)
    [job] = _rows(engine, schema.processing_jobs)
    assert (job["status"], job["attempts"], job["error"]) == ("complete", 2, None)


def _encrypted_pdf() -> bytes:
    """A PDF whose standard security handler refuses the empty user password."""
    body = minimal_pdf("Secret", ["page"]).split(b"xref")[0]
    encrypt = b"<< /Filter /Standard /V 1 /R 2 /O <%s> /U <%s> /P -4 >>" % (b"11" * 32, b"22" * 32)
    return (
        body
        + b"6 0 obj\n"
        + encrypt
        + b"\nendobj\ntrailer\n<< /Size 7 /Root 1 0 R /Encrypt 6 0 R /ID [<"
        + b"ab" * 16
        + b"> <"
        + b"ab" * 16
        + b">] >>\n%%EOF\n"
    )


BAD_INPUTS = {
    "truncated_jpeg": (lambda: _photo(400, 300)[:3000], "scan.jpg", "cannot be decoded"),
    "not_an_image": (
        lambda: b"hello, world\n" * 10,
        "notes.png",
        "the object is plain text: not a PDF or an image format libvips can read",
    ),
    "empty_object": (lambda: b"", "blank.jpg", "the object is empty"),
    "encrypted_pdf": (_encrypted_pdf, "secret.pdf", "the PDF is encrypted"),
    "zero_page_pdf": (lambda: minimal_pdf("Nothing", []), "empty.pdf", "the PDF has no pages"),
    "truncated_pdf": (
        lambda: minimal_pdf("Cut", ["a", "b"])[:300],
        "cut.pdf",
        "the PDF cannot be read",
    ),
    "huge_page": (
        lambda: make_pdf([(300.0, 200.0), (5000.0, 8000.0)]),
        "poster.pdf",
        "page 2 would render to 40,000,000 pixels at 72 dpi, over the limit of 1,000,000",
    ),
    "too_large": (lambda: b"%PDF-1.4\n" + b"0" * 5000, "big.pdf", "over the limit of 4,096"),
    "too_many_pages": (
        lambda: make_pdf([TINY_PAGE] * 4),
        "plan-set.pdf",
        "the PDF has 4 pages, over the limit of 3 (max_pages)",
    ),
    "zip_archive": (
        lambda: b"PK\x03\x04" + b"\x00" * 200,
        "drawings.pdf",
        "the object is a ZIP archive (or a .docx, .xlsx or other zipped file): not a PDF",
    ),
    "unknown_binary": (
        lambda: bytes(range(1, 200)),
        "scan.tif",
        "the object is in an unknown format (first bytes 01 02 03 04 05 06 07 08): not a PDF",
    ),
    "unreadable_image_format": (
        lambda: b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\x00" * 200,
        "site.jp2",
        "the object is in JPEG 2000 format, which this libvips cannot read",
    ),
    "png_signature_then_pdf": (
        lambda: b"\x89PNG\r\n\x1a\n" + minimal_pdf("Inside", ["a"]),
        "hybrid.png",
        "the PNG image cannot be read",
    ),
}
"""Bad files, each refused with one line before anything is written."""


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_fails_only_its_own_job(
    case: str, store: LocalStorage, sqlite_engine: sa.Engine, scratch: Path
) -> None:
    make, name, message = BAD_INPUTS[case]
    # Other work in flight, which must stay exactly as it is.
    other = f"documents/{ORG}/plans/other.pdf"
    now = datetime(2026, 1, 1)
    with sqlite_engine.begin() as conn:
        conn.execute(
            schema.processing_jobs.insert().values(
                object_key=other, status="processing", attempts=1, started_at=now, updated_at=now
            )
        )
        conn.execute(
            schema.plans.insert().values(
                plan_id="other",
                organization_id=ORG,
                project_id="p",
                status="processing",
                completed_pages=1,
                total_pages=2,
                updated_at=now,
            )
        )
    key = f"documents/{ORG}/uploads/{name}"
    store.put_bytes(key, make())
    before_rows, before_objects = _all_rows(sqlite_engine), _keys(store)
    options = ProcessOptions(dpi=72, max_object_bytes=4096, max_pixels=1_000_000, max_pages=3)
    with pytest.raises(ProcessingFailed) as failed:
        _process(key, store, sqlite_engine, options=options)
    line = str(failed.value)
    assert "\n" not in line and message in line and line.startswith(key + ": ")
    after = _all_rows(sqlite_engine)
    [job] = [j for j in after.pop("processing_jobs") if j["object_key"] == key]
    assert (job["status"], job["attempts"], job["error"]) == ("failed", 1, line[len(key) + 2 :])
    before_rows.pop("processing_jobs")
    assert after == before_rows  # no documents, plans or images row touched
    assert _keys(store) == before_objects
    assert list(scratch.iterdir()) == []


def test_concurrent_claims_let_exactly_one_run_work(engine: sa.Engine) -> None:
    key = f"documents/{ORG}/race.pdf"
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    barrier = threading.Barrier(6)
    wins: list[bool] = []

    def claim() -> None:
        barrier.wait()
        wins.append(
            claim_processing_job(engine, SPEC.jobs, key, stale_after=timedelta(hours=1), now=now)
        )

    threads = [threading.Thread(target=claim) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(wins) == [False] * 5 + [True]
    [job] = _rows(engine, schema.processing_jobs)
    assert (job["status"], job["attempts"]) == ("processing", 1)


def test_a_fresh_processing_job_is_left_alone_and_a_stale_one_is_taken_over(
    store: LocalStorage, engine: sa.Engine, plan_pdf: bytes
) -> None:
    key = f"documents/{ORG}/plans/held.pdf"
    store.put_bytes(key, plan_pdf)
    started = datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(hours=2)
    with engine.begin() as conn:
        conn.execute(
            schema.processing_jobs.insert().values(
                object_key=key,
                status="processing",
                attempts=1,
                started_at=started,
                updated_at=started,
            )
        )
    objects = _keys(store)
    busy = _process(key, store, engine)
    assert busy.outcome == "busy" and busy.objects_written == 0
    assert _keys(store) == objects and _rows(engine, schema.plans) == []

    options = ProcessOptions(dpi=72, stale_after=timedelta(hours=1))
    taken = _process(key, store, engine, options=options)
    assert taken.outcome == "processed"
    [job] = _rows(engine, schema.processing_jobs)
    assert (job["status"], job["attempts"]) == ("complete", 2)


def test_a_missing_object_is_gone_without_a_job_and_a_failure_with_one(
    store: LocalStorage, sqlite_engine: sa.Engine
) -> None:
    gone = _process(f"documents/{ORG}/deleted.pdf", store, sqlite_engine)
    assert gone.outcome == "gone"
    assert _all_rows(sqlite_engine)["processing_jobs"] == []

    key = f"documents/{ORG}/expected.pdf"
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    with sqlite_engine.begin() as conn:
        conn.execute(
            schema.processing_jobs.insert().values(
                object_key=key, status="not_started", attempts=0, updated_at=now
            )
        )
    with pytest.raises(ProcessingFailed, match="not found"):
        _process(key, store, sqlite_engine)
    [job] = _rows(sqlite_engine, schema.processing_jobs)
    assert job["status"] == "failed" and job["error"].startswith(f"object {key} not found")


def test_an_image_upload_becomes_one_sheet(store: LocalStorage, sqlite_engine: sa.Engine) -> None:
    key = f"documents/{ORG}/photos/site.jpg"
    store.put_bytes(key, _photo(700, 300))
    result = _process(key, store, sqlite_engine)
    assert (result.kind, result.pages, result.sheets_written) == ("image", 1, 1)
    prefix = f"organizations/{ORG}/projects/unassigned/plans/{plan_id_for(key)}/sheets/"
    assert_complete_pyramids(store, prefix, 1)
    [document] = _rows(sqlite_engine, schema.documents)
    assert document["status"] == "complete"


def _with_comment(jpeg: bytes, text: bytes) -> bytes:
    """The JPEG with a COM segment right after its SOI marker."""
    return jpeg[:2] + b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text + jpeg[2:]


SVG_WITH_PDF_COMMENT = (
    b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="300" height="200">'
    b'<!-- exported from %PDF-1.7 --><rect x="10" y="10" width="200" height="90" '
    b'fill="#c33"/></svg>'
)


@pytest.mark.parametrize(
    ("name", "make", "size"),
    [
        ("site.jpg", lambda: _with_comment(_photo(300, 200), b"%PDF-1.7 scanned by X"), (300, 200)),
        ("elevation.svg", lambda: SVG_WITH_PDF_COMMENT, (300, 200)),
    ],
    ids=["jpeg", "svg"],
)
def test_an_image_with_a_pdf_header_in_a_comment_is_processed_as_an_image(
    name: str, make: Any, size: tuple[int, int], store: LocalStorage, sqlite_engine: sa.Engine
) -> None:
    key = f"documents/{ORG}/photos/{name}"
    store.put_bytes(key, make())
    result = _process(key, store, sqlite_engine)
    assert (result.outcome, result.kind, result.pages, result.sheets_written) == (
        "processed",
        "image",
        1,
        1,
    )
    prefix = f"organizations/{ORG}/projects/unassigned/plans/{plan_id_for(key)}/sheets/"
    assert_complete_pyramids(store, prefix, 1)
    [descriptor] = [k for k in _keys(store, prefix) if k.endswith(".dzi")]
    geometry = parse_dzi(store.get_bytes(descriptor))
    assert (geometry.width, geometry.height) == size


def test_a_pdf_of_exactly_max_pages_is_processed(
    store: LocalStorage, sqlite_engine: sa.Engine
) -> None:
    key = f"documents/{ORG}/plans/three.pdf"
    store.put_bytes(key, make_pdf([TINY_PAGE] * 3))
    options = ProcessOptions(dpi=72, max_pages=3)
    result = _process(key, store, sqlite_engine, options=options)
    assert (result.outcome, result.pages, result.sheets_written) == ("processed", 3, 3)
    [plan] = _rows(sqlite_engine, schema.plans)
    assert (plan["status"], plan["completed_pages"], plan["total_pages"]) == ("complete", 3, 3)


def _encoded(image: Any, suffix: str, **kwargs: Any) -> bytes:
    return image.write_to_buffer(suffix, **kwargs)


SMALL = pyvips.Image.black(8, 8).cast("uchar")
SNIFFED = {
    "jpeg_with_pdf_comment": (lambda: _with_comment(_photo(8, 8), b"%PDF-1.4"), "image", "JPEG"),
    "png": (lambda: _encoded(SMALL, ".png"), "image", "PNG"),
    "gif": (lambda: _encoded(SMALL, ".gif"), "image", "GIF"),
    "webp": (lambda: _encoded(SMALL, ".webp"), "image", "WebP"),
    "tiff": (lambda: _encoded(SMALL, ".tif"), "image", "TIFF"),
    "avif": (lambda: _encoded(SMALL.bandjoin([0, 0]), ".avif"), "image", "AVIF"),
    "svg_with_pdf_comment": (lambda: SVG_WITH_PDF_COMMENT, "image", "SVG"),
    "pdf": (lambda: minimal_pdf("P", ["a"]), "pdf", "PDF"),
    "pdf_after_900_bytes_of_junk": (lambda: b"\r\n" * 450 + minimal_pdf("P", ["a"]), "pdf", "PDF"),
    "pdf_after_1100_bytes_of_junk": (
        lambda: b"x" * 1100 + minimal_pdf("P", ["a"]),
        "unknown",
        "plain text",
    ),
    "html": (lambda: b"<!DOCTYPE html><html><body>plans</body></html>", "unknown", "an HTML"),
    "heic_brand": (lambda: b"\x00\x00\x00\x18ftypheic" + b"\x00" * 16, "image", "HEIF"),
    "mp4": (lambda: b"\x00\x00\x00\x18ftypisom" + b"\x00" * 16, "unknown", "an ISO media"),
}


@pytest.mark.parametrize("case", sorted(SNIFFED))
def test_the_format_is_decided_from_the_leading_bytes(case: str) -> None:
    make, kind, name = SNIFFED[case]
    fmt = sniff(make())
    assert (fmt.kind, fmt.name[: len(name)]) == (kind, name)
    assert (fmt.loader is not None) == (kind == "image")


def test_images_rows_get_a_bounded_staged_jpeg(
    store: LocalStorage, sqlite_engine: sa.Engine
) -> None:
    base = "organizations/org-1/projects/prj-1/images"
    original = f"{base}/img-1/north elevation.jpg"
    store.put_bytes(original, _photo(1500, 900))
    small = f"{base}/img-2/thumb.jpg"
    store.put_bytes(small, _photo(300, 200))
    now = datetime(2026, 1, 1)
    rows = [
        ("img-1", original, "virtual-encoded", "queued"),
        ("img-2", small, "s3", "processing"),
        ("img-3", original, "bare", "error"),  # in error: left for a person
    ]
    with sqlite_engine.begin() as conn:
        for row_id, key, form, status in rows:
            conn.execute(
                schema.images.insert().values(
                    id=row_id,
                    project_id="prj-1",
                    status=status,
                    original_url=url_form(key, form),
                    updated_at=now,
                )
            )
    result = _process(original, store, sqlite_engine)
    staged = f"{base}/img-1/staged/north elevation-1024.jpg"
    assert result.staged == [staged] and result.plan_id is None
    image = pyvips.Image.new_from_buffer(store.get_bytes(staged), "")
    assert (image.width, image.height) == (1024, 614)
    _process(small, store, sqlite_engine)
    thumb = pyvips.Image.new_from_buffer(store.get_bytes(f"{base}/img-2/staged/thumb-1024.jpg"), "")
    assert (thumb.width, thumb.height) == (300, 200)  # never enlarged

    by_id = {r["id"]: r for r in _rows(sqlite_engine, schema.images)}
    assert (by_id["img-1"]["status"], by_id["img-1"]["staged_url"]) == ("ready", staged)
    assert by_id["img-2"]["status"] == "ready"
    assert (by_id["img-3"]["status"], by_id["img-3"]["staged_url"]) == ("error", None)
    jobs = {j["object_key"]: j["status"] for j in _rows(sqlite_engine, schema.processing_jobs)}
    assert jobs == {original: "complete", small: "complete"}
    assert _rows(sqlite_engine, schema.documents) == [] and _rows(sqlite_engine, schema.plans) == []

    objects = _keys(store)
    again = _process(original, store, sqlite_engine)
    assert (again.outcome, again.objects_written) == ("already_processed", 0)
    assert _keys(store) == objects
    ignored = _process(f"{base}/img-9/unknown.jpg", store, sqlite_engine)
    assert ignored.outcome == "ignored"


def test_the_upload_tenant_follows_the_spec_prefix_template() -> None:
    from integrity.processing.processor import upload_tenant
    from integrity.spec import UploadsSpec, default_spec

    spec = default_spec()
    assert upload_tenant(spec, "documents/org-1/plans/p.pdf") == "org-1"
    assert upload_tenant(spec, "documents/org-1/") is None  # a directory marker
    assert upload_tenant(spec, "documents/org-1") is None  # nothing under the tenant
    assert upload_tenant(spec, "organizations/org-1/x.pdf") is None
    custom = spec.model_copy(update={"uploads": UploadsSpec(prefix="in/{tenant}/raw/")})
    assert upload_tenant(custom, "in/acme/raw/a\nb.pdf") == "acme"
    assert upload_tenant(custom, "in/acme/other/a.pdf") is None
