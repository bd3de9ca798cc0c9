"""The on-demand reconciliation: the whole group for one tenant partition (or `__all__`).

Its partitions (`tenants`) are inferred from the selected assets.
"""

from __future__ import annotations

import dagster as dg

from integrity.defs.assets import GROUP

RECONCILE_JOB = "reconcile"

reconcile_job = dg.define_asset_job(
    name=RECONCILE_JOB,
    selection=dg.AssetSelection.groups(GROUP),
    description="Reconcile storage with the database for one tenant, or `__all__` for the whole bucket. Reports only; changes nothing.",
)
