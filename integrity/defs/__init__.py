"""The Dagster shell over the core: assets and their checks, jobs (reconcile, remediate, rollback,
process_document), schedules, sensors (discovery, events, alerts, policy), resources, IO manager."""

from __future__ import annotations

import dagster as dg

from integrity.defs.alerts import alert_sensors
from integrity.defs.assets import SNAPSHOT_IO_MANAGER, reconciliation_assets
from integrity.defs.checks import reconciliation_checks
from integrity.defs.event_sensors import event_sensors
from integrity.defs.io_managers import ParquetSnapshotIOManager
from integrity.defs.jobs import reconcile_job
from integrity.defs.policy import policy_sensors
from integrity.defs.processing import processing_jobs
from integrity.defs.remediation import remediation_jobs
from integrity.defs.resources import resources_from_env
from integrity.defs.schedules import daily_reconciliation
from integrity.defs.sensors import tenant_discovery_sensor


def build_resources() -> dict[str, dg.ConfigurableResource | dg.ConfigurableIOManager]:
    """Resources from the environment, plus the Parquet snapshot IO manager."""
    return {**resources_from_env(), SNAPSHOT_IO_MANAGER: ParquetSnapshotIOManager()}


__all__ = [
    "alert_sensors",
    "build_resources",
    "daily_reconciliation",
    "event_sensors",
    "policy_sensors",
    "processing_jobs",
    "reconcile_job",
    "reconciliation_assets",
    "reconciliation_checks",
    "remediation_jobs",
    "tenant_discovery_sensor",
]
