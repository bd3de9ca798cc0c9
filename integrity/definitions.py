"""The code location: one Definitions assembled from integrity.defs, and nothing else."""

from __future__ import annotations

import dagster as dg

from integrity.defs import (
    build_resources,
    daily_reconciliation,
    reconcile_job,
    reconciliation_assets,
    remediation_jobs,
    tenant_discovery_sensor,
)

defs = dg.Definitions(
    assets=reconciliation_assets,
    jobs=[reconcile_job, *remediation_jobs],
    schedules=[daily_reconciliation],
    sensors=[tenant_discovery_sensor],
    resources=build_resources(),
)
