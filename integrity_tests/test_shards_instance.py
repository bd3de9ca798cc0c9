"""Shards as partitions on a real Dagster instance: K = 4 shard runs from a backfill on the
PostgreSQL-backed instance (deploy/production/dagster.yaml), merged, give exactly the findings
of one unsharded reconcile run, on a moto bucket with drift planted across the boundaries.

The instance's storage lives in its own schema of the test database (search_path), dropped
before and after. The plan's boundaries are given explicitly so each one cuts through a pair
of keys one run judges together (the shard tests in test_shards.py choose them every way).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa

from integrity.defs.io_managers import partition_dir_name
from integrity.defs.names import (
    SHARD_MERGE_JOB,
    SHARD_PLAN_JOB,
    SHARD_TAG,
    SHARDS_GROUP,
    SHARDS_JOB,
)
from integrity.defs.partitions import TENANTS as TENANTS_PARTITIONS
from integrity.defs.reconciliation.shards import shard_keys
from integrity.diff import FINDING_KINDS, ReconciliationReport
from integrity.inventory import ALL_TENANTS
from integrity.schema import create_reference_schema
from integrity.storage import S3Storage
from integrity_tests.conftest import POSTGRES_URL
from integrity_tests.instance_harness import (
    BACKFILL_DONE,
    PRODUCTION_DAGSTER_YAML,
    RunningInstance,
    running_instance,
)
from integrity_tests.test_shards import (
    EXPECTED_KINDS,
    REPORT_LISTED,
    REPORT_VARIANT,
    SCAN_LISTED,
    SCAN_ROW,
    SPACE_LISTED,
    SPACE_ROW,
    plant,
)
from integrity_tests.world import World

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

SCHEMA = "dagster_shards"
SHARDS = 4
# Between Scan.pdf and scan.pdf, 'a b.pdf' and 'a%20b.pdf', Report.pdf and report.pdf.
BOUNDARIES = ["documents/org-1/Z", "documents/org-1/a%", "documents/org-3/a"]
NO_MIN_AGE = {"min_age": 0}
RUN_SECONDS = 240


@pytest.fixture(scope="module")
def dagster_pg_url() -> Iterator[str]:
    """The instance's storage in a schema of its own in the test database."""
    if not POSTGRES_URL:
        pytest.skip("INTEGRITY_TEST_POSTGRES_URL is not set")
    url = sa.make_url(POSTGRES_URL)
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE'))
        conn.execute(sa.text(f'CREATE SCHEMA "{SCHEMA}"'))
    # dagster-postgres needs psycopg2 named (see deploy/production/dagster.yaml).
    dagster_url = url.set(
        drivername="postgresql+psycopg2", query={"options": f"-csearch_path={SCHEMA}"}
    )
    try:
        yield dagster_url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE'))
        admin.dispose()


@pytest.fixture(scope="module")
def production(
    moto_endpoint: str, dagster_pg_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningInstance, Path]]:
    workdir = tmp_path_factory.mktemp("shards")
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    bucket = f"integrity-shards-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    db_url = f"sqlite:///{workdir / 'integrity.sqlite'}"
    engine = sa.create_engine(db_url)
    create_reference_schema(engine)
    plant(World(engine, S3Storage(s3, bucket)))
    engine.dispose()
    home = workdir / "integrity_home"
    env = {
        "INTEGRITY_HOME": str(home),
        "INTEGRITY_DB_URL": db_url,
        "INTEGRITY_BUCKET": bucket,
        "INTEGRITY_SHARDS": str(SHARDS),
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
        "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
        "DAGSTER_POSTGRES_URL": dagster_pg_url,
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DAGSTER_POSTGRES_URL", dagster_pg_url)
        with running_instance(PRODUCTION_DAGSTER_YAML, env, workdir / "instance") as running:
            yield running, home / "snapshots"


def _report(snapshots: Path, asset: str, partition: str | None) -> ReconciliationReport:
    return ReconciliationReport.load(
        snapshots / asset / partition_dir_name(partition) / "findings.parquet"
    )


def test_four_shard_runs_merge_into_the_findings_of_one_run(
    production: tuple[RunningInstance, Path],
) -> None:
    running, snapshots = production
    with running.instance() as instance:
        instance.add_dynamic_partitions(TENANTS_PARTITIONS, [ALL_TENANTS])

    one = running.submit(
        "reconcile",
        {"ops": {"reconciliation_report": {"config": NO_MIN_AGE}}},
        {"dagster/partition": ALL_TENANTS},
    )
    planned = running.submit(
        SHARD_PLAN_JOB, {"ops": {"shard_plan": {"config": {"boundaries": BOUNDARIES}}}}
    )
    assert running.wait_for_run(one, RUN_SECONDS) == dg.DagsterRunStatus.SUCCESS
    assert running.wait_for_run(planned, RUN_SECONDS) == dg.DagsterRunStatus.SUCCESS

    backfill = running.launch_backfill(
        SHARDS_JOB, shard_keys(SHARDS), {"ops": {"shard_report": {"config": NO_MIN_AGE}}}
    )
    status = running.wait_for(
        f"backfill {backfill} done",
        lambda: s if (s := running.backfill_status(backfill)) in BACKFILL_DONE else None,
        RUN_SECONDS * 2,
    )
    assert status in ("COMPLETED", "COMPLETED_SUCCESS"), status
    with running.instance() as instance:
        runs = list(instance.get_runs(filters=dg.RunsFilter(tags={SHARD_TAG: "true"})))
        # One run per shard, each its own run worker, all succeeded.
        assert sorted(r.tags["dagster/partition"] for r in runs) == shard_keys(SHARDS)
        assert len({r.run_id for r in runs}) == SHARDS
        assert {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}
        assert all(r.tags.get("dagster/backfill") == backfill for r in runs)

    merged_run = running.submit(SHARD_MERGE_JOB)
    assert running.wait_for_run(merged_run, RUN_SECONDS) == dg.DagsterRunStatus.SUCCESS

    unsharded = _report(snapshots, "reconciliation_report", ALL_TENANTS)
    merged = _report(snapshots, "sharded_report", None)
    assert unsharded.counts() == EXPECTED_KINDS
    pd.testing.assert_frame_equal(merged.findings, unsharded.findings)
    assert merged.objects_checked == unsharded.objects_checked
    assert merged.rows_checked == unsharded.rows_checked
    assert merged.complete and unsharded.complete

    # The pairs the boundaries cut through were judged in the merge, not left to one shard.
    with running.instance() as instance:
        events = instance.all_logs(merged_run, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
        meta = events[0].dagster_event.event_specific_data.materialization.metadata
        assert meta["rejudged_classes"].value == 4
        assert meta["shards"].value == SHARDS
        checks = instance.all_logs(merged_run, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
        results = {
            e.dagster_event.event_specific_data.check_name: e.dagster_event.event_specific_data
            for e in checks
        }
        assert set(results) == set(FINDING_KINDS)
        # Every kind was planted, so none passes (warn_above is 0 for each).
        assert not any(r.passed for r in results.values())
    near = merged.findings.loc[merged.findings["kind"] == "normalization_mismatch", "detail"]
    assert f"matches {SCAN_LISTED} only after Unicode/case normalisation" in set(near)
    assert SCAN_ROW not in set(
        merged.findings.loc[merged.findings["kind"] == "missing_original", "key"]
    )
    orphans = set(merged.findings.loc[merged.findings["kind"] == "orphan_object", "key"])
    assert REPORT_VARIANT in orphans and REPORT_LISTED not in orphans
    assert SPACE_LISTED not in orphans and SPACE_ROW not in set(merged.findings["key"])


def test_the_shard_graph_is_pinned() -> None:
    from integrity.definitions import defs

    graph = defs.resolve_asset_graph()
    shard_assets = {
        key.to_user_string()
        for key in graph.get_all_asset_keys()
        if graph.get(key).group_name == SHARDS_GROUP
    }
    assert shard_assets == {
        "shard_plan",
        "shard_db_inventory",
        "shard_storage_inventory",
        "shard_report",
        "sharded_report",
    }
    for name in ("shard_storage_inventory", "shard_report"):
        partitions = graph.get(dg.AssetKey(name)).partitions_def
        assert isinstance(partitions, dg.StaticPartitionsDefinition)
        assert partitions.get_partition_keys() == shard_keys(4)  # INTEGRITY_SHARDS unset: 4
    job = defs.resolve_job_def(SHARDS_JOB)
    assert job.tags[SHARD_TAG] == "true"
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} == {
        "shard_storage_inventory",
        "shard_report",
    }
