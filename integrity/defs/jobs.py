"""The on-demand reconciliation: the whole group for one tenant partition (or `__all__`)."""

from __future__ import annotations

import dagster as dg

from integrity.defs.assets import GROUP
from integrity.defs.partitions import tenant_partitions

RECONCILE_JOB = "reconcile"

reconcile_job = dg.define_asset_job(
    name=RECONCILE_JOB,
    selection=dg.AssetSelection.groups(GROUP),
    partitions_def=tenant_partitions,
    description="Reconcile storage with the database for one tenant, or `__all__` for the whole bucket. Reports only; changes nothing.",
)
