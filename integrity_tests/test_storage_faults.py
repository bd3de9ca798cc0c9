"""Storage faults between the tool and moto's S3 server: 503, reset, cut stream, short body.

At 10% of listings, HEADs and the bucket HEAD, retries absorb every fault: the findings are
those of a reconciliation without faults, and an apply re-checking through the faults changes
what an apply without them changes. At 100% of listings and HEADs, the listing cannot
complete: the report says it is incomplete, with the reason, and applying it writes nothing;
an apply of a complete report whose re-checks all fail writes nothing either.
benchmarks/reliability_faults.py runs the same on a few thousand objects.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from integrity.diff import DiffOptions, ReconciliationReport
from integrity.errors import RemediationRefused, StorageError
from integrity.reconcile import reconcile
from integrity.remediation import RemediationOptions, RemediationResult, remediate
from integrity.remediation.ledger import audit, ledger_exists, queue
from integrity.schema import create_reference_schema
from integrity.spec import default_spec
from integrity.storage import S3Storage
from integrity_tests.flaky_proxy import FAULTS, FlakyProxy
from integrity_tests.test_remediate import snapshot
from integrity_tests.world import HOUR, World

SPEC = default_spec()
PAGE_SIZE = 10  # many listing pages from a small world
ATTEMPTS = 6  # per request, by S3Storage; boto3 itself tries once
EVERYTHING = ("list", "head", "bucket")
# The HEADs of the re-checks have no body, so a short body leaves them as they are.
HEAD_FAULTS = {"503", "reset", "cut"}
NOTHING = {"audit": [], "queue": []}


def _plant(world: World) -> list[str]:
    """Every acting kind, spread over four tenants, next to rows that are fine; the objects."""
    objects = []
    for n in range(40):
        org = f"org-{n % 4}"
        objects.append(f"documents/{org}/kept-{n:02d}.pdf")
        world.document(f"d-ok-{n:02d}", objects[-1], org=org)
    for n in range(12):
        org = f"org-{n % 4}"
        world.document(f"d-gone-{n:02d}", f"documents/{org}/gone-{n:02d}.pdf", org=org)
    for n in range(12):
        objects.append(f"documents/org-{n % 4}/orphan-{n:02d}.pdf")
    for n in range(4):
        objects.append(f"documents/org-{n}/stuck-{n}.pdf")
        world.job(objects[-1], "processing", started_ago=30 * HOUR)
    for n in range(6):
        objects.append(f"images/proj-1/{n}.jpg")
        world.image(f"i-{n}", objects[-1], f"images/proj-1/{n}-staged.jpg")
    return objects


@dataclass(frozen=True)
class Planted:
    """The planted bucket, its database file (tests apply to copies) and when it was planted."""

    bucket: str
    path: Path
    base: datetime


@pytest.fixture(scope="module")
def planted(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Planted:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    bucket = f"integrity-faults-{uuid.uuid4().hex[:8]}"
    store = _store(moto_endpoint, bucket)
    store.client.create_bucket(Bucket=bucket)
    path = tmp_path_factory.mktemp("faults") / "planted.sqlite"
    engine = sa.create_engine(f"sqlite:///{path}")
    create_reference_schema(engine)
    world = World(engine, store, SPEC)
    # Straight into moto's backend (a PUT over HTTP is slow); every read below goes over HTTP.
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    for key in _plant(world):
        backend.put_object(bucket, key, b"x")
    engine.dispose()
    return Planted(bucket, path, world.base)


@contextmanager
def _database(planted: Planted, name: str) -> Iterator[sa.Engine]:
    path = planted.path.with_name(f"{name}.sqlite")
    shutil.copyfile(planted.path, path)
    engine = sa.create_engine(f"sqlite:///{path}")
    yield engine
    engine.dispose()


def _store(endpoint: str, bucket: str) -> S3Storage:
    from dagster_aws.s3 import S3Resource

    client = S3Resource(endpoint_url=endpoint, region_name="us-east-1", max_attempts=1).get_client()
    return S3Storage(client, bucket, page_size=PAGE_SIZE, attempts=ATTEMPTS, base_delay=0.001)


def _reconcile(store: S3Storage, engine: sa.Engine, planted: Planted) -> ReconciliationReport:
    """As two hours after the planting: the orphans are old enough, the stuck jobs stuck."""
    return reconcile(store, engine, SPEC, DiffOptions(now=planted.base + 2 * HOUR))


def _findings(report: ReconciliationReport) -> pd.DataFrame:
    columns = ["kind", "table", "row_id", "key"]
    return report.findings.sort_values(columns).reset_index(drop=True)


def _apply(report: ReconciliationReport, engine: sa.Engine, store: S3Storage) -> RemediationResult:
    options = RemediationOptions(dry_run=False, force=True, batch_size=10, concurrency=4)
    return remediate(report, engine, SPEC, store, options, allow_writes=True)


def _written(engine: sa.Engine) -> dict[str, list[tuple]]:
    """What applies write besides timestamps: audit records and queue entries."""
    with engine.connect() as conn:
        if not ledger_exists(conn):
            return {"audit": [], "queue": []}
        records = conn.execute(
            sa.select(audit.c.action, audit.c.table_name, audit.c.row_key, audit.c.object_key)
        )
        entries = conn.execute(sa.select(queue.c.object_key, queue.c.reason, queue.c.state))
        return {"audit": sorted(map(tuple, records)), "queue": sorted(map(tuple, entries))}


def _statuses(engine: sa.Engine) -> dict[str, list[tuple]]:
    """The reference tables without their timestamp columns (an apply stamps the time it ran)."""
    with engine.connect() as conn:
        out = {}
        for table in ("documents", "images", "processing_jobs", "plans"):
            result = conn.execute(sa.text(f"SELECT * FROM {table}")).mappings()
            out[table] = sorted(
                tuple(v for k, v in row.items() if not k.endswith("_at")) for row in result
            )
        return out


@pytest.mark.e2e
@pytest.mark.parametrize("fault", FAULTS)
def test_ten_percent_of_faults_change_no_finding_and_no_write(
    fault: str, moto_endpoint: str, planted: Planted
) -> None:
    with _database(planted, "direct") as direct_db, _database(planted, "faulty") as faulty_db:
        direct = _store(moto_endpoint, planted.bucket)
        expected = _reconcile(direct, direct_db, planted)
        assert expected.complete and len(expected.findings) == 12 + 12 + 4 + 6
        with FlakyProxy(moto_endpoint) as proxy:
            proxy.inject(fault, 0.10, on=EVERYTHING)
            faulty = _store(proxy.endpoint, planted.bucket)
            report = _reconcile(faulty, faulty_db, planted)
            assert report.complete, report.reasons
            pd.testing.assert_frame_equal(_findings(report), _findings(expected))
            assert report.objects_checked == expected.objects_checked

            applied = _apply(report, faulty_db, faulty)
            # The faults did happen, on listings and (but for a short body) on the re-checks.
            assert proxy.faulted["list"] > 0, dict(proxy.requests)
            assert (proxy.faulted["head"] > 0) == (fault in HEAD_FAULTS), dict(proxy.faulted)
        reference = _apply(expected, direct_db, direct)

        assert applied.counts == reference.counts
        assert applied.counts["skipped_unverified"] == 0 and applied.updated > 0
        assert _statuses(faulty_db) == _statuses(direct_db)
        assert _written(faulty_db) == _written(direct_db)


@pytest.mark.e2e
@pytest.mark.parametrize("fault", FAULTS)
def test_all_faults_give_an_incomplete_report_and_no_write(
    fault: str, moto_endpoint: str, planted: Planted
) -> None:
    with _database(planted, "faulty") as engine, _database(planted, "direct") as direct_db:
        before = snapshot(engine)
        direct = _store(moto_endpoint, planted.bucket)
        complete = _reconcile(direct, engine, planted)
        reference = _apply(complete, direct_db, direct)
        with FlakyProxy(moto_endpoint) as proxy:
            # The bucket HEAD is answered, so the run gets as far as listing.
            proxy.inject(fault, 1.0, on=("list", "head"))
            faulty = _store(proxy.endpoint, planted.bucket)
            report = _reconcile(faulty, engine, planted)
            assert not report.complete
            assert report.reasons and all(f"after {ATTEMPTS} attempts" in r for r in report.reasons)

            with pytest.raises(RemediationRefused, match="incomplete"):
                _apply(report, engine, faulty)
            assert snapshot(engine) == before and _written(engine) == NOTHING

            # A complete report applied while every re-check meets the fault: what cannot be
            # verified is not written, whether the run counts it unverified or stops.
            with suppress(Exception):  # what is asserted is what was written
                _apply(complete, engine, faulty)
        written = _written(engine)
        # Findings that could not be re-checked are audited as skipped, with their reason.
        changes = [r for r in written["audit"] if r[0] != "skipped"]
        if fault in ("503", "reset"):
            assert snapshot(engine) == before
            assert changes == [] and written["queue"] == []
            assert len(written["audit"]) == len(complete.findings)
        elif fault == "cut":
            # Cut halfway through its headers, a 404 still arrives whole: the missing objects
            # are marked; the answers for objects that exist lack their fields, so nothing
            # that needs an object present (a re-queue, a retry) is written.
            expected = [r for r in _written(direct_db)["audit"] if r[0] == "mark_error"]
            assert expected and changes == expected and written["queue"] == []
        else:
            # A HEAD has no body to shorten: the re-checks are answered as without the fault.
            assert written == _written(direct_db) and reference.updated > 0


def test_a_head_answer_cut_in_its_headers_is_retried_then_one_error(
    moto_endpoint: str, planted: Planted
) -> None:
    """Cut halfway through its headers, a 200 reads as an answer without Content-Length and
    Last-Modified: each attempt fails, then one line; a cut 404 still says the object is absent."""
    with FlakyProxy(moto_endpoint) as proxy:
        proxy.inject("cut", 1.0, on=("head",))
        store = _store(proxy.endpoint, planted.bucket)
        with pytest.raises(StorageError) as failed:
            store.head("documents/org-0/kept-00.pdf")
        assert str(failed.value) == (
            f"HEAD s3://{planted.bucket}/documents/org-0/kept-00.pdf failed after {ATTEMPTS} "
            "attempts: incomplete answer (no ContentLength, LastModified)"
        )
        assert proxy.faulted["head"] == ATTEMPTS
        assert store.head("documents/org-0/gone-00.pdf") is None
