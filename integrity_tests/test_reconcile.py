"""Every finding kind and its edges, end to end: real stores (directory, moto's S3) and databases."""

from __future__ import annotations

import unicodedata
from datetime import timedelta

import pytest

from integrity.storage import LocalStorage, S3Storage
from integrity_tests.world import HOUR, World, found, kinds


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        root = tmp_path / "media"
        root.mkdir()
        return LocalStorage(root)
    client = request.getfixturevalue("s3_client")
    return S3Storage(client, request.getfixturevalue("bucket"))


@pytest.fixture
def world(engine, store) -> World:
    return World(engine, store)


# ------------------------------------------------------------------ orphan_object / stuck_job


def test_orphan_uploads_by_job_state(world: World) -> None:
    for name in ("absent", "not_started", "failed", "processing", "complete"):
        world.obj(f"documents/org-1/{name}.pdf")
    for status in ("not_started", "failed", "complete"):
        world.job(f"documents/org-1/{status}.pdf", status)
    world.job("documents/org-1/processing.pdf", "processing", started_ago=HOUR)

    report = world.reconcile()

    assert found(report, "orphan_object") == [
        (f"documents/org-1/{n}.pdf", f"documents/org-1/{n}.pdf")
        for n in ("absent", "failed", "not_started")
    ]
    assert kinds(report) == {"orphan_object": 3}
    assert set(report.findings["tenant"]) == {"org-1"}
    assert set(report.findings["action"]) == {"requeue"}


def test_upload_with_a_documents_row_is_no_orphan_whatever_its_status(world: World) -> None:
    world.obj("documents/org-1/done.pdf")
    world.obj("documents/org-1/broken.pdf")
    world.document("d1", "documents/org-1/done.pdf")
    world.document("d2", "documents/org-1/broken.pdf", status="error")
    assert kinds(world.reconcile()) == {}


def test_min_age_counts_from_the_later_of_upload_and_job_update(world: World) -> None:
    world.obj("documents/org-1/young.pdf")
    world.obj("documents/org-1/old-object-fresh-job.pdf")
    # The job row was touched 10 minutes "after" the reconciliation's now - 2h, i.e. recently.
    world.job(
        "documents/org-1/old-object-fresh-job.pdf",
        "failed",
        updated_ago=-(2 * HOUR - timedelta(minutes=10)),
    )

    assert found(world.reconcile(age=timedelta(minutes=30)), "orphan_object") == []
    report = world.reconcile(age=2 * HOUR)
    assert [k for _, k in found(report, "orphan_object")] == ["documents/org-1/young.pdf"]
    report = world.reconcile(age=2 * HOUR, min_age=timedelta(minutes=5))
    assert len(found(report, "orphan_object")) == 2


def test_stuck_jobs_respect_stuck_after(world: World) -> None:
    world.obj("documents/org-1/stuck.pdf")
    world.obj("documents/org-1/busy.pdf")
    world.job("documents/org-1/stuck.pdf", "processing", started_ago=timedelta(hours=30))
    world.job("documents/org-1/busy.pdf", "processing", started_ago=timedelta(hours=3))

    report = world.reconcile(age=timedelta(0))
    assert found(report, "stuck_job") == [
        ("documents/org-1/stuck.pdf", "documents/org-1/stuck.pdf")
    ]
    assert report.findings.loc[0, "action"] == "retry"
    report = world.reconcile(age=timedelta(0), stuck_after=timedelta(hours=2))
    assert len(found(report, "stuck_job")) == 2
    report = world.reconcile(age=timedelta(0), stuck_after=timedelta(hours=48))
    assert found(report, "stuck_job") == []


# ------------------------------------------------------------------ missing_original / missing_staged


def test_missing_originals_and_staged(world: World) -> None:
    world.obj("images/p1/ok.jpg")
    world.obj("images/p1/ok-staged.jpg")
    world.image("ok", "images/p1/ok.jpg", "images/p1/ok-staged.jpg")
    world.image("no-original", "images/p1/gone.jpg", "images/p1/ok-staged.jpg")
    world.image("no-staged", "images/p1/ok.jpg", "images/p1/gone-staged.jpg")
    world.image(
        "queued-no-staged", "images/p1/ok.jpg", "images/p1/gone-staged.jpg", status="queued"
    )
    world.image("already-error", "images/p1/gone.jpg", "images/p1/gone-staged.jpg", status="error")
    world.image("null-staged", "images/p1/ok.jpg", None)
    world.document("doc-gone", "documents/org-1/gone.pdf")

    report = world.reconcile()

    assert found(report, "missing_original") == [
        ("doc-gone", "documents/org-1/gone.pdf"),
        ("no-original", "images/p1/gone.jpg"),
    ]
    assert found(report, "missing_staged") == [("no-staged", "images/p1/gone-staged.jpg")]
    assert kinds(report) == {"missing_original": 2, "missing_staged": 1}
    staged = report.findings.loc[report.findings["kind"] == "missing_staged"].iloc[0]
    assert (staged["detail"], staged["action"], staged["status"]) == (
        "staged missing in storage",
        "mark_error",
        "ready",
    )
    original = report.findings.loc[report.findings["row_id"] == "no-original"].iloc[0]
    assert original["detail"] == "original missing in storage"
    assert original["updated_at"] is not None


def test_duplicate_references_are_each_reported_once(world: World) -> None:
    world.obj("images/shared.jpg")
    world.image("a", "images/shared.jpg")
    world.image("b", "images/shared.jpg")
    world.image("c", "images/lost.jpg")
    world.image("d", "images/lost.jpg")
    report = world.reconcile()
    assert found(report, "missing_original") == [("c", "images/lost.jpg"), ("d", "images/lost.jpg")]


def test_every_url_form_names_the_same_object(world: World) -> None:
    bucket = world.store.bucket
    world.obj("images/p1/photo 1+2.jpg")
    forms = [
        "images/p1/photo 1+2.jpg",
        f"s3://{bucket}/images/p1/photo 1+2.jpg",
        f"http://localhost:9000/{bucket}/images/p1/photo%201+2.jpg",
        f"https://{bucket}.s3.amazonaws.com/images/p1/photo%201%2B2.jpg",
        f"https://{bucket}.s3.eu-west-1.amazonaws.com/images/p1/photo 1+2.jpg",
        "images/p1/photo%201%2B2.jpg",
    ]
    for i, form in enumerate(forms):
        world.image(f"img-{i}", form, form)
    world.image("gone", f"https://{bucket}.s3.amazonaws.com/images/p1/photo%202.jpg")
    report = world.reconcile()
    assert kinds(report) == {"missing_original": 1}
    assert found(report, "missing_original") == [("gone", "images/p1/photo 2.jpg")]


def test_foreign_and_normalization_are_reported_but_never_missing(world: World) -> None:
    nfd = unicodedata.normalize("NFD", "images/p1/Café.jpg")
    nfc = unicodedata.normalize("NFC", "images/p1/Café.jpg")
    world.obj(nfd)
    world.obj("images/p1/Upper.JPG")
    world.image("nfc", nfc)
    world.image("case", "images/p1/upper.jpg")
    world.image("foreign", "s3://someone-else/images/p1/x.jpg")
    world.image("foreign-vhost", "https://someone-else.s3.amazonaws.com/images/p1/x.jpg")

    report = world.reconcile()

    assert kinds(report) == {"normalization_mismatch": 2, "foreign_reference": 2}
    assert found(report, "normalization_mismatch") == [
        ("case", "images/p1/upper.jpg"),
        ("nfc", nfc),
    ]
    assert set(report.findings.loc[report.findings["kind"] == "foreign_reference", "action"]) == {
        "none"
    }
    detail = report.findings.loc[report.findings["row_id"] == "nfc", "detail"].iloc[0]
    assert nfd in detail


def test_nfd_upload_with_nfc_documents_row_is_not_an_orphan(world: World) -> None:
    key = unicodedata.normalize("NFD", "documents/org-1/Résumé.pdf")
    world.obj(key)
    world.document("d1", unicodedata.normalize("NFC", key))
    report = world.reconcile()
    assert kinds(report) == {"normalization_mismatch": 1}


@pytest.mark.parametrize(
    "key",
    [
        "images/with space/and+plus.jpg",
        "images/percent%20literal%.jpg",
        "images/ünïcödé/日本語.jpg",
        "images/" + "/".join(["d" * 100] * 9) + "/" + "k" * 100 + ".jpg",  # 1,024 bytes
    ],
)
def test_awkward_keys_round_trip(world: World, key: str) -> None:
    assert len(key.encode()) <= 1024
    world.obj(key)
    world.image("present", key)
    world.image("present-url", f"s3://{world.store.bucket}/{key}")
    absent = key.removesuffix(".jpg") + ".png"  # as long as the key: S3 holds 1,024 bytes at most
    world.image("absent", absent)
    report = world.reconcile()
    assert found(report, "missing_original") == [("absent", absent)]


def test_1024_byte_key_is_listed_whole(world: World) -> None:
    key = (
        "images/"
        + "x" * 200
        + "/"
        + "y" * 200
        + "/"
        + "z" * 200
        + "/"
        + "w" * 200
        + "/"
        + "v" * (1024 - 7 - 804 - 4)
        + ".jpg"
    )
    assert len(key.encode()) == 1024
    world.obj(key)
    world.image("long", key)
    report = world.reconcile()
    assert kinds(report) == {}
    assert report.objects_checked == 1


# ------------------------------------------------------------------ progress_behind


def test_progress_behind_counts_descriptors_not_tiles(world: World) -> None:
    for sheet in ("s1", "s2", "s3"):
        world.sheet("plan-a", sheet)
    world.sheet("plan-b", "s1")
    world.sheet("plan-c", "s1", org="org-2", project="proj-9")
    world.plan("plan-a", completed=1, total=3)
    world.plan("plan-b", completed=1, total=1, status="complete")
    world.plan("plan-c", completed=0, total=2, org="org-2", project="proj-9")
    world.plan("plan-d", completed=0, total=4)  # nothing in storage yet: not behind

    report = world.reconcile()

    behind = report.findings.loc[report.findings["kind"] == "progress_behind"].set_index("row_id")
    assert sorted(behind.index) == ["plan-a", "plan-c"]
    assert behind.loc["plan-a", "expected"] == 3
    assert behind.loc["plan-c", "expected"] == 1
    assert behind.loc["plan-a", "key"] == "organizations/org-1/projects/proj-1/plans/plan-a/sheets/"
    assert set(behind["action"]) == {"fix_progress"}


# ------------------------------------------------------------------ scope, filters, empty bucket


def test_tenant_scope_lists_tenant_prefixes_and_referenced_directories(world: World) -> None:
    world.obj("documents/org-1/a.pdf")
    world.obj("documents/org-2/b.pdf")
    world.obj("shared/library/p1.jpg")
    world.image("p1-ok", "shared/library/p1.jpg", project="org-1")
    world.image("p1-gone", "shared/library/gone.jpg", project="org-1")
    world.image("p2-gone", "shared/elsewhere/x.jpg", project="org-2")

    report = world.reconcile(tenant="org-1")

    assert report.scope == "org-1"
    assert found(report, "orphan_object") == [("documents/org-1/a.pdf", "documents/org-1/a.pdf")]
    assert found(report, "missing_original") == [("p1-gone", "shared/library/gone.jpg")]
    assert set(report.findings["tenant"]) == {"org-1"}


def test_status_filter_keeps_rows_in_that_status(world: World) -> None:
    world.image("ready", "images/a.jpg", status="ready")
    world.image("queued", "images/b.jpg", status="queued")
    world.obj("documents/org-1/x.pdf")
    report = world.reconcile(status="queued")
    assert list(report.findings["row_id"]) == ["queued"]


def test_empty_bucket_reports_every_reference_missing(world: World) -> None:
    world.image("a", "images/a.jpg")
    world.document("d", "documents/org-1/d.pdf")
    report = world.reconcile()
    assert report.complete
    assert report.objects_checked == 0
    assert kinds(report) == {"missing_original": 2}


def test_summary_has_every_kind_and_examples(world: World) -> None:
    world.image("a", "images/a.jpg")
    summary = world.reconcile().summary()
    assert summary["dry_run"] is True and summary["complete"] is True
    assert summary["checked"] == {"objects": 0, "rows": 1}
    assert set(summary["findings"]) >= {
        "orphan_object",
        "stuck_job",
        "missing_original",
        "missing_staged",
        "progress_behind",
    }
    assert summary["examples"] == [
        {
            "kind": "missing_original",
            "key": "images/a.jpg",
            "row_id": "a",
            "detail": "original missing in storage",
        }
    ]
