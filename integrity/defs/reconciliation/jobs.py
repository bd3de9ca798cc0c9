"""The on-demand reconciliation: the whole group for one tenant partition (or `__all__`).

Its partitions (`tenants`) are inferred from the selected assets. Its steps run in the run
worker's process: they form a chain (database, storage, diff, then the cheap checks), so a
process per step would only add a Python start-up and an import of Dagster, pandas and pyarrow
to each of them.
"""

from __future__ import annotations

import dagster as dg

from integrity.defs.names import RECONCILE_JOB, RECONCILIATION_GROUP

reconcile_job = dg.define_asset_job(
    name=RECONCILE_JOB,
    selection=dg.AssetSelection.groups(RECONCILIATION_GROUP),
    executor_def=dg.in_process_executor,
    description="Reconcile storage with the database for one tenant, or `__all__` for the whole bucket. Reports only; changes nothing.",
)
