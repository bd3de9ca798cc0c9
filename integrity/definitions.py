"""The code location: one Definitions assembled from the domains of integrity.defs, and nothing else."""

from __future__ import annotations

import dagster as dg

from integrity.defs.alerts.sensors import alert_sensors
from integrity.defs.io_managers import ParquetSnapshotIOManager
from integrity.defs.names import SNAPSHOT_IO_MANAGER
from integrity.defs.processing.jobs import process_document_job
from integrity.defs.processing.sensors import event_sensors
from integrity.defs.reconciliation.assets import reconciliation_assets
from integrity.defs.reconciliation.checks import freshness_sensors, reconciliation_checks
from integrity.defs.reconciliation.discovery import tenant_discovery_sensor
from integrity.defs.reconciliation.jobs import reconcile_job
from integrity.defs.reconciliation.schedules import daily_reconciliation
from integrity.defs.reconciliation.shards import shard_assets, shard_jobs, shard_resources
from integrity.defs.remediation.jobs import remediation_jobs
from integrity.defs.remediation.sensors import remediation_sensors
from integrity.defs.resources import resources_from_env

defs = dg.Definitions(
    assets=[*reconciliation_assets, *shard_assets],
    asset_checks=reconciliation_checks,
    jobs=[reconcile_job, *shard_jobs, *remediation_jobs, process_document_job],
    schedules=[daily_reconciliation],
    sensors=[
        tenant_discovery_sensor,
        *freshness_sensors,
        *remediation_sensors,
        *event_sensors,
        *alert_sensors,
    ],
    resources={
        **resources_from_env(),
        SNAPSHOT_IO_MANAGER: ParquetSnapshotIOManager(),
        **shard_resources(),
    },
    # Every step here is one bulk call into the core; a process per step (the default) costs
    # more than the step. This also covers materializations and asset backfills from the UI.
    executor=dg.in_process_executor,
)
