"""The code location: one Definitions assembled from integrity.defs, and nothing else."""

from __future__ import annotations

import dagster as dg

from integrity.defs import (
    alert_sensors,
    build_resources,
    daily_reconciliation,
    event_sensors,
    policy_sensors,
    processing_jobs,
    reconcile_job,
    reconciliation_assets,
    reconciliation_checks,
    remediation_jobs,
    tenant_discovery_sensor,
)
from integrity.defs.reconciliation.shards import shard_assets, shard_jobs, shard_resources

defs = dg.Definitions(
    assets=[*reconciliation_assets, *shard_assets],
    asset_checks=reconciliation_checks,
    jobs=[reconcile_job, *remediation_jobs, *processing_jobs, *shard_jobs],
    schedules=[daily_reconciliation],
    sensors=[tenant_discovery_sensor, *event_sensors, *alert_sensors, *policy_sensors],
    resources={**build_resources(), **shard_resources()},
    # Every step here is one bulk call into the core; a process per step (the default) costs
    # more than the step. This also covers materializations and asset backfills from the UI.
    executor=dg.in_process_executor,
)
