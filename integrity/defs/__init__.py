"""The Dagster shell over the core: assets, jobs (reconcile, remediate, rollback), schedules,
sensors, resources, IO manager."""

from __future__ import annotations

import dagster as dg

from integrity.defs.assets import SNAPSHOT_IO_MANAGER, reconciliation_assets
from integrity.defs.io_managers import ParquetSnapshotIOManager
from integrity.defs.jobs import reconcile_job
from integrity.defs.remediation import remediation_jobs
from integrity.defs.resources import resources_from_env
from integrity.defs.schedules import daily_reconciliation
from integrity.defs.sensors import tenant_discovery_sensor


def build_resources() -> dict[str, dg.ConfigurableResource | dg.ConfigurableIOManager]:
    """Resources from the environment, plus the Parquet snapshot IO manager."""
    return {**resources_from_env(), SNAPSHOT_IO_MANAGER: ParquetSnapshotIOManager()}


__all__ = [
    "build_resources",
    "daily_reconciliation",
    "reconcile_job",
    "reconciliation_assets",
    "remediation_jobs",
    "tenant_discovery_sensor",
]
