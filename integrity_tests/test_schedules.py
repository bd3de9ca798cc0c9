"""The daily schedule and the discovery sensor against a real store, database and instance."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from integrity.defs.partitions import TENANTS as TENANTS_PARTITIONS
from integrity.defs.resources import DatabaseResource, SpecResource, StorageResource
from integrity.defs.schedules import daily_reconciliation
from integrity.defs.sensors import tenant_discovery_sensor
from integrity.inventory import ALL_TENANTS
from integrity.storage import LocalStorage
from integrity_tests.dagster_world import TENANTS, plant_drift

TWO_AM_UTC = datetime(2026, 3, 14, 2, 0, tzinfo=timezone.utc)


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture
def resources(tmp_path: Path, sqlite_engine: sa.Engine) -> dict[str, Any]:
    root = tmp_path / "integrity-demo"
    root.mkdir()
    plant_drift(LocalStorage(root), sqlite_engine)
    return {
        "storage": StorageResource(storage_dir=str(root)),
        "database": DatabaseResource(url=str(sqlite_engine.url)),
        "spec": SpecResource(),
    }


@pytest.fixture(scope="module")
def repository() -> dg.RepositoryDefinition:
    from integrity.definitions import defs

    return defs.get_repository_def()


def test_schedule_requests_one_run_per_tenant_at_two_utc(
    instance: dg.DagsterInstance, resources: dict[str, Any], repository: dg.RepositoryDefinition
) -> None:
    instance.add_dynamic_partitions(TENANTS_PARTITIONS, ["org-1"])  # one known, two new
    context = dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=TWO_AM_UTC,
        resources=resources,
        repository_def=repository,
    )
    data = daily_reconciliation.evaluate_tick(context)

    assert data.skip_message is None
    assert [r.partition_key for r in data.run_requests] == TENANTS  # never __all__
    assert [r.run_key for r in data.run_requests] == [f"daily-2026-03-14-{t}" for t in TENANTS]
    assert all(r.tags["dagster/partition"] == r.partition_key for r in data.run_requests)
    assert sorted(instance.get_dynamic_partitions(TENANTS_PARTITIONS)) == TENANTS

    assert daily_reconciliation.cron_schedule == "0 2 * * *"
    assert daily_reconciliation.execution_timezone == "UTC"


def test_schedule_skips_with_the_reason_when_storage_is_missing(
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    repository: dg.RepositoryDefinition,
    tmp_path: Path,
) -> None:
    broken = {**resources, "storage": StorageResource(storage_dir=str(tmp_path / "gone"))}
    context = dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=TWO_AM_UTC,
        resources=broken,
        repository_def=repository,
    )
    data = daily_reconciliation.evaluate_tick(context)
    assert data.run_requests == []
    assert data.skip_message.startswith("tenant discovery failed: storage directory")
    assert "does not exist" in data.skip_message


def test_sensor_adds_discovered_tenants_and_the_whole_bucket_once(
    instance: dg.DagsterInstance, resources: dict[str, Any]
) -> None:
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        result = tenant_discovery_sensor(context)
    assert isinstance(result, dg.SensorResult)
    [request] = result.dynamic_partitions_requests
    assert request.partitions_def_name == TENANTS_PARTITIONS
    assert list(request.partition_keys) == [ALL_TENANTS, *TENANTS]
    assert not result.run_requests

    # What the daemon does with the request; the next tick then has nothing new to add.
    instance.add_dynamic_partitions(TENANTS_PARTITIONS, list(request.partition_keys))
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        again = tenant_discovery_sensor(context)
    assert isinstance(again, dg.SkipReason)
    assert "no new tenants" in again.skip_message


def test_sensor_skips_when_the_database_is_unreachable(
    instance: dg.DagsterInstance, resources: dict[str, Any]
) -> None:
    broken = {
        **resources,
        "database": DatabaseResource(url="postgresql+psycopg://app:s3cret@127.0.0.1:1/app"),
    }
    with dg.build_sensor_context(instance=instance, resources=broken) as context:
        result = tenant_discovery_sensor(context)
    assert isinstance(result, dg.SkipReason)
    assert result.skip_message.startswith(
        "tenant discovery failed: cannot read database postgresql+psycopg://app:***@"
    )
    assert "s3cret" not in result.skip_message
    assert instance.get_dynamic_partitions(TENANTS_PARTITIONS) == []
