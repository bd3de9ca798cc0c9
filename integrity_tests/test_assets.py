"""The reconciliation graph materialized in-process against real stores and databases.

SQLite plus a storage directory, and moto's S3 server over HTTP through S3Resource; tenant
partitions and the whole-bucket `__all__` partition; fatal errors fail the step with one line,
an incomplete listing still writes a report marked incomplete.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from integrity.defs.io_managers import REPORT_FILE, ParquetSnapshotIOManager, partition_dir_name
from integrity.defs.reconciliation.assets import reconciliation_assets
from integrity.defs.resources import DatabaseResource, SpecResource, StorageResource
from integrity.diff import FINDING_KINDS, ReconciliationReport
from integrity.inventory import ALL_TENANTS, DatabaseInventory, StorageInventory
from integrity.storage import LocalStorage, S3Storage
from integrity_tests.dagster_world import EXPECTED, plant_drift
from integrity_tests.flaky_proxy import FlakyProxy

REPORT = "reconciliation_report"


@pytest.fixture
def snapshots(tmp_path: Path) -> Path:
    return tmp_path / "snapshots"


@pytest.fixture
def local_resources(tmp_path: Path, sqlite_engine: sa.Engine, snapshots: Path) -> dict[str, Any]:
    """Planted drift in SQLite and a storage directory named like the demo bucket."""
    root = tmp_path / "integrity-demo"
    root.mkdir()
    plant_drift(LocalStorage(root), sqlite_engine)
    return {
        "storage": StorageResource(storage_dir=str(root)),
        "database": DatabaseResource(url=str(sqlite_engine.url)),
        "spec": SpecResource(),
        "snapshot_io_manager": ParquetSnapshotIOManager(base_dir=str(snapshots)),
    }


def run_partition(
    resources: dict[str, Any],
    instance: dg.DagsterInstance,
    partition: str,
    report_config: dict[str, Any] | None = None,
    *,
    raise_on_error: bool = True,
) -> dg.ExecuteInProcessResult:
    run_config = {"ops": {REPORT: {"config": report_config}}} if report_config else None
    return dg.materialize(
        reconciliation_assets,
        resources=resources,
        partition_key=partition,
        instance=instance,
        run_config=run_config,
        raise_on_error=raise_on_error,
    )


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    [materialization] = result.asset_materializations_for_node(asset)
    return {key: value.value for key, value in materialization.metadata.items()}


def counts(meta: dict[str, Any]) -> dict[str, int]:
    return {kind: meta[f"findings/{kind}"] for kind in FINDING_KINDS}


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    """The description the step failed with, as the UI shows it."""
    [failure] = result.get_step_failure_events()
    assert failure.step_failure_data.user_failure_data is not None, failure.step_failure_data.error
    return failure.step_failure_data.user_failure_data.description


@pytest.mark.parametrize("partition", ["org-1", "proj-1", ALL_TENANTS])
def test_partition_materializes_with_counts_and_snapshots(
    local_resources: dict[str, Any], instance: dg.DagsterInstance, snapshots: Path, partition: str
) -> None:
    result = run_partition(local_resources, instance, partition)

    expected_counts, objects, rows = EXPECTED[partition]
    report_meta = metadata(result, REPORT)
    assert counts(report_meta) == expected_counts
    assert report_meta["findings/total"] == sum(expected_counts.values())
    assert report_meta["objects_listed"] == objects
    assert report_meta["rows_read"] == rows
    assert report_meta["complete"] is True
    assert report_meta["reasons"] == "none"
    assert report_meta["requests"] >= 1
    assert report_meta["seconds"] >= report_meta["diff_seconds"] >= 0
    examples = report_meta["examples"]
    assert len(examples.records) == sum(expected_counts.values())
    assert {r.data["kind"] for r in examples.records} == {
        k for k, n in expected_counts.items() if n
    }

    assert metadata(result, "storage_inventory")["objects_listed"] == objects
    assert metadata(result, "db_inventory")["rows_read"] == rows

    # The snapshot is Parquet at the recorded path, and it round-trips.
    snapshot = Path(report_meta["snapshot"])
    assert snapshot == snapshots / REPORT / partition / REPORT_FILE
    report = ReconciliationReport.load(snapshot)
    assert report.scope == partition and report.complete
    assert report.counts() == expected_counts
    assert isinstance(
        StorageInventory.load(snapshots / "storage_inventory" / partition / "objects.parquet"),
        StorageInventory,
    )
    assert DatabaseInventory.load(snapshots / "db_inventory" / partition).rows == rows
    # Nothing went through the default (pickling) IO manager.
    assert not list(Path(instance.root_directory).rglob(REPORT))


def test_report_config_filters_and_thresholds(
    local_resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    only_processing = run_partition(local_resources, instance, "org-1", {"status": "processing"})
    # The stuck job and the plan still processing; not the orphan (no job) nor the complete document.
    assert {k: v for k, v in counts(metadata(only_processing, REPORT)).items() if v} == {
        "stuck_job": 1,
        "progress_behind": 1,
    }

    # Three hours of min_age make the two-hour-old orphan possibly in flight; a three-day
    # stuck_after makes the two-day-old job not yet stuck.
    patient = run_partition(
        local_resources, instance, "org-1", {"min_age": 3 * 3600, "stuck_after": 3 * 86400}
    )
    patient_counts = counts(metadata(patient, REPORT))
    assert patient_counts["orphan_object"] == 0
    assert patient_counts["stuck_job"] == 0
    assert patient_counts["missing_original"] == 1


def test_s3_through_s3resource_over_http(
    moto_endpoint: str,
    s3_client: Any,
    bucket: str,
    sqlite_engine: sa.Engine,
    instance: dg.DagsterInstance,
    snapshots: Path,
) -> None:
    plant_drift(S3Storage(s3_client, bucket), sqlite_engine)
    resources = {
        "storage": StorageResource(
            bucket=bucket, endpoint_url=moto_endpoint, region_name="us-east-1", max_attempts=1
        ),
        "database": DatabaseResource(url=str(sqlite_engine.url)),
        "spec": SpecResource(),
        "snapshot_io_manager": ParquetSnapshotIOManager(base_dir=str(snapshots)),
    }
    for partition in ("org-1", ALL_TENANTS):
        # Objects were just uploaded: min_age 0 lets them count as orphans.
        result = run_partition(resources, instance, partition, {"min_age": 0})
        expected_counts, objects, rows = EXPECTED[partition]
        report_meta = metadata(result, REPORT)
        assert counts(report_meta) == expected_counts
        assert (report_meta["objects_listed"], report_meta["rows_read"]) == (objects, rows)
        assert report_meta["complete"] is True
        # Credentials come from the AWS environment and never reach metadata.
        for asset in ("storage_inventory", "db_inventory", REPORT):
            assert "testing" not in repr(metadata(result, asset))


def test_incomplete_listing_writes_a_report_marked_incomplete(
    moto_endpoint: str,
    s3_client: Any,
    bucket: str,
    sqlite_engine: sa.Engine,
    instance: dg.DagsterInstance,
    snapshots: Path,
) -> None:
    plant_drift(S3Storage(s3_client, bucket), sqlite_engine)
    with FlakyProxy(moto_endpoint) as proxy:
        proxy.fail_lists_after = 1  # the top-level listing succeeds, every prefix then gets 503
        resources = {
            "storage": StorageResource(
                bucket=bucket,
                endpoint_url=proxy.endpoint,
                region_name="us-east-1",
                max_attempts=1,
                listing_attempts=1,
            ),
            "database": DatabaseResource(url=str(sqlite_engine.url)),
            "spec": SpecResource(),
            "snapshot_io_manager": ParquetSnapshotIOManager(base_dir=str(snapshots)),
        }
        result = run_partition(resources, instance, ALL_TENANTS, {"min_age": 0})

    assert result.success
    storage_meta = metadata(result, "storage_inventory")
    report_meta = metadata(result, REPORT)
    assert storage_meta["complete"] is False
    assert report_meta["complete"] is False
    assert "SlowDown" in report_meta["reasons"] and "storage:" in report_meta["reasons"]
    report = ReconciliationReport.load(report_meta["snapshot"])
    assert report.complete is False and report.reasons


def test_missing_bucket_fails_the_step_with_one_clear_line(
    moto_endpoint: str, instance: dg.DagsterInstance, sqlite_engine: sa.Engine, snapshots: Path
) -> None:
    resources = {
        "storage": StorageResource(
            bucket="no-such-bucket",
            endpoint_url=moto_endpoint,
            region_name="us-east-1",
            max_attempts=1,
        ),
        "database": DatabaseResource(url=str(sqlite_engine.url)),
        "spec": SpecResource(),
        "snapshot_io_manager": ParquetSnapshotIOManager(base_dir=str(snapshots)),
    }
    result = run_partition(resources, instance, ALL_TENANTS, raise_on_error=False)
    assert not result.success
    message = failure_message(result)
    assert "bucket 'no-such-bucket' does not exist" in message
    assert "\n" not in message.strip()
    assert not (snapshots / REPORT).exists()


def test_unreachable_database_fails_without_showing_the_password(
    local_resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    resources = {
        **local_resources,
        "database": DatabaseResource(url="postgresql+psycopg://reader:s3cret@127.0.0.1:1/db"),
    }
    result = run_partition(resources, instance, "org-1", raise_on_error=False)
    assert not result.success
    message = failure_message(result)
    assert message.startswith("cannot read database postgresql+psycopg://reader:***@127.0.0.1:1/db")
    assert "s3cret" not in message


def test_missing_sqlite_file_and_bad_spec_fail_clearly(
    local_resources: dict[str, Any], instance: dg.DagsterInstance, tmp_path: Path
) -> None:
    missing_db = {
        **local_resources,
        "database": DatabaseResource(url=f"sqlite:///{tmp_path / 'nope.sqlite'}"),
    }
    message = failure_message(run_partition(missing_db, instance, "org-1", raise_on_error=False))
    assert "nope.sqlite does not exist" in message
    assert not (tmp_path / "nope.sqlite").exists()

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text("tables: {documents: {table: documents}}\n")
    bad_spec = {**local_resources, "spec": SpecResource(path=str(spec_file))}
    message = failure_message(run_partition(bad_spec, instance, "org-1", raise_on_error=False))
    assert message.startswith(f"{spec_file}: tables.documents.")


@pytest.mark.parametrize(
    ("partition", "reason"),
    [("org-acme/", "holds a '/'"), ("../org-1", "holds a '/'"), ("..", "is not a tenant")],
)
def test_a_partition_that_is_not_a_tenant_fails_the_step_with_one_line(
    local_resources: dict[str, Any],
    instance: dg.DagsterInstance,
    snapshots: Path,
    partition: str,
    reason: str,
) -> None:
    """A partition added by hand that cannot be a tenant: one line, and no snapshot at all
    (not a report of the whole tenant's uploads as orphans)."""
    instance.add_dynamic_partitions("tenants", [partition])
    result = run_partition(local_resources, instance, partition, raise_on_error=False)
    assert not result.success
    message = failure_message(result)
    assert message.startswith(f"tenant partition: {partition!r} {reason}"), message
    assert "\n" not in message.strip()
    assert not result.asset_materializations_for_node("db_inventory")
    assert not (snapshots / REPORT).exists()


def test_partition_keys_become_safe_distinct_directory_names() -> None:
    assert partition_dir_name("org-1") == "org-1"
    assert partition_dir_name(ALL_TENANTS) == ALL_TENANTS
    odd = [partition_dir_name(k) for k in ("a/b", "a_b", "a b", "..", "é")]
    assert len(set(odd)) == len(odd)
    assert all("/" not in name and name not in (".", "..") for name in odd)


def test_tenants_table_counts_findings_per_tenant_most_first() -> None:
    """The whole-bucket report's `tenants` table: where a person looks next."""
    import pandas as pd

    from integrity.defs.reconciliation.assets import NO_TENANT, tenants_table

    findings = pd.DataFrame(
        {
            "kind": ["orphan_object", "stuck_job", "orphan_object", "foreign_reference"],
            "tenant": ["org-a", "org-b", "org-b", None],
        }
    )
    table = tenants_table(type("Report", (), {"findings": findings})())
    assert [r.data for r in table.records] == [
        {"tenant": "org-b", "findings": 2, "kinds": "orphan_object 1, stuck_job 1"},
        {"tenant": NO_TENANT, "findings": 1, "kinds": "foreign_reference 1"},
        {"tenant": "org-a", "findings": 1, "kinds": "orphan_object 1"},
    ]


def test_examples_table_puts_a_short_detail_second() -> None:
    """The UI cuts a wide table off on the right: the detail must not be the column it hides."""
    from integrity.defs.reconciliation.assets import _DETAIL_LIMIT, examples_table

    example = {"kind": "orphan_object", "key": "k" * 400, "row_id": "r1", "detail": "d" * 400}
    report = type("Report", (), {"examples": lambda self, limit: [example]})()
    table = examples_table(report)
    assert [c.name for c in table.schema.columns] == ["kind", "detail", "key", "row_id"]
    [record] = table.records
    assert len(record.data["detail"]) == _DETAIL_LIMIT and record.data["detail"].endswith("…")
