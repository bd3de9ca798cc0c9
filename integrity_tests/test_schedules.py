"""The daily schedule (and its cron override) and the discovery sensor against a real store,
database and instance."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from integrity import schema, settings
from integrity.defs.partitions import TENANTS as TENANTS_PARTITIONS
from integrity.defs.reconciliation.discovery import tenant_discovery_sensor
from integrity.defs.reconciliation.schedules import (
    build_daily_reconciliation,
    daily_reconciliation,
    reconcile_cron,
)
from integrity.defs.resources import DatabaseResource, SpecResource, StorageResource
from integrity.errors import UsageError
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
    assert [r.run_key for r in data.run_requests] == [
        f"daily-2026-03-14T0200Z-{t}" for t in TENANTS
    ]
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


def test_discovery_never_makes_a_partition_of_a_value_that_is_not_a_tenant(
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    repository: dg.RepositoryDefinition,
    sqlite_engine: sa.Engine,
) -> None:
    """Tenant columns holding 'org-acme/', '..' or 'org-1/x': the sensor and the schedule skip
    them, so no partition or run reconciles outside a tenant's prefixes."""
    at = datetime(2026, 3, 1)
    with sqlite_engine.begin() as conn:
        conn.execute(
            schema.documents.insert(),
            [
                {"id": f"d{n}", "organization_id": tenant, "r2_key": f"k{n}", "status": "complete"}
                | {"created_at": at, "updated_at": at}
                for n, tenant in enumerate(["org-acme/", "..", "org-1/x"])
            ],
        )
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        result = tenant_discovery_sensor(context)
    [request] = result.dynamic_partitions_requests
    assert list(request.partition_keys) == [ALL_TENANTS, *TENANTS]

    context = dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=TWO_AM_UTC,
        resources=resources,
        repository_def=repository,
    )
    data = daily_reconciliation.evaluate_tick(context)
    assert [r.partition_key for r in data.run_requests] == TENANTS
    assert sorted(instance.get_dynamic_partitions(TENANTS_PARTITIONS)) == TENANTS


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


def test_cron_override_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(settings.ENV_RECONCILE_CRON, raising=False)
    assert reconcile_cron() == "0 2 * * *"
    monkeypatch.setenv(settings.ENV_RECONCILE_CRON, " */15 * * * * ")
    assert reconcile_cron() == "*/15 * * * *"
    monkeypatch.setenv(settings.ENV_RECONCILE_CRON, "")
    assert reconcile_cron() == "0 2 * * *"


def test_a_cron_ticking_more_than_daily_launches_every_tick(
    instance: dg.DagsterInstance, resources: dict[str, Any], repository: dg.RepositoryDefinition
) -> None:
    every_minute = build_daily_reconciliation("* * * * *")
    assert every_minute.name == "daily_reconciliation"
    assert every_minute.cron_schedule == "* * * * *"
    keys = []
    for minute in (0, 1):
        context = dg.build_schedule_context(
            instance=instance,
            scheduled_execution_time=TWO_AM_UTC.replace(minute=minute),
            resources=resources,
            repository_def=repository,
        )
        keys.append({r.run_key for r in every_minute.evaluate_tick(context).run_requests})
    assert keys[0] == {f"daily-2026-03-14T0200Z-{t}" for t in TENANTS}
    assert keys[1] == {f"daily-2026-03-14T0201Z-{t}" for t in TENANTS}


@pytest.mark.parametrize("cron", ["61 * * * *", "0 2 * *", "every day"])
def test_a_bad_cron_is_one_line_naming_the_variable(cron: str) -> None:
    with pytest.raises(UsageError) as caught:
        build_daily_reconciliation(cron)
    message = str(caught.value)
    assert message.startswith(f"INTEGRITY_RECONCILE_CRON={cron!r} is not a valid cron schedule")
    assert "\n" not in message


@pytest.mark.e2e
def test_a_bad_cron_stops_the_code_location_from_loading(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INTEGRITY_", "DAGSTER_"))}
    env.update(
        {
            "INTEGRITY_HOME": str(tmp_path / "home"),
            settings.ENV_RECONCILE_CRON: "0 25 * * *",
        }
    )
    done = subprocess.run(
        [sys.executable, "-c", "import integrity.definitions"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert (
        "UsageError: INTEGRITY_RECONCILE_CRON='0 25 * * *' is not a valid cron schedule"
        in done.stderr
    )
