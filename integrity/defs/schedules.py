"""The daily reconciliation: every tenant at 02:00 UTC, one run per tenant partition."""

from __future__ import annotations

from collections.abc import Iterator

import dagster as dg
from dagster import ScheduleEvaluationContext

from integrity.defs.jobs import reconcile_job
from integrity.defs.partitions import TENANTS, DiscoveryFailed, discover
from integrity.defs.resources import DatabaseResource, SpecResource, StorageResource

DAILY_CRON = "0 2 * * *"
DAILY_TIMEZONE = "UTC"


@dg.schedule(
    name="daily_reconciliation",
    job=reconcile_job,
    cron_schedule=DAILY_CRON,
    execution_timezone=DAILY_TIMEZONE,
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def daily_reconciliation(
    context: ScheduleEvaluationContext,
    storage: StorageResource,
    database: DatabaseResource,
    spec: SpecResource,
) -> Iterator[dg.RunRequest | dg.SkipReason]:
    """Reconcile every tenant daily, tenants discovered at the tick so a new one is never missed.

    A plain schedule on a partitioned job would request one run with no partition; this yields
    one run per tenant, each independent (the whole-bucket `__all__` partition stays on demand).
    """
    try:
        tenants = discover(storage, database, spec)
    except DiscoveryFailed as exc:
        yield dg.SkipReason(f"tenant discovery failed: {exc}")
        return
    if not tenants:
        yield dg.SkipReason("no tenants found in storage or the database")
        return
    # Partitions must exist before the run requests are resolved against them.
    known = set(context.instance.get_dynamic_partitions(TENANTS))
    new = [t for t in tenants if t not in known]
    if new:
        context.instance.add_dynamic_partitions(TENANTS, new)
        context.log.info(f"added {len(new)} new tenant partitions")
    tick = context.scheduled_execution_time
    day = tick.strftime("%Y-%m-%d") if tick is not None else "manual"
    for tenant in tenants:
        yield dg.RunRequest(
            partition_key=tenant,
            run_key=f"daily-{day}-{tenant}",
            tags={"integrity/trigger": "daily_reconciliation"},
        )
