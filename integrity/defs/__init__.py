"""The Dagster shell over the core: assets and their checks, jobs (reconcile, remediate, rollback,
process_document), schedules, sensors (discovery, events, alerts, policy), resources, IO manager."""

from __future__ import annotations

import dagster as dg

from integrity.defs.alerts.sensors import alert_sensors
from integrity.defs.io_managers import ParquetSnapshotIOManager
from integrity.defs.processing.jobs import processing_jobs
from integrity.defs.processing.sensors import event_sensors
from integrity.defs.reconciliation.assets import SNAPSHOT_IO_MANAGER, reconciliation_assets
from integrity.defs.reconciliation.checks import reconciliation_checks
from integrity.defs.reconciliation.discovery import tenant_discovery_sensor
from integrity.defs.reconciliation.jobs import reconcile_job
from integrity.defs.reconciliation.schedules import daily_reconciliation
from integrity.defs.remediation.jobs import remediation_jobs
from integrity.defs.remediation.sensors import policy_sensors
from integrity.defs.resources import resources_from_env


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
