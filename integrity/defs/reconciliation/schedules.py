"""The daily reconciliation: every tenant at 02:00 UTC, one run per tenant partition.

INTEGRITY_RECONCILE_CRON moves the time (any 5-field cron, still in UTC); it is read when the
definitions load, and a value Dagster cannot schedule stops the load with one line naming it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timezone

import dagster as dg
from dagster import ScheduleEvaluationContext

from integrity import settings
from integrity.defs.names import TRIGGER_TAG
from integrity.defs.partitions import TENANTS
from integrity.defs.reconciliation.discovery import DiscoveryFailed, discover
from integrity.defs.reconciliation.jobs import reconcile_job
from integrity.defs.resources import DatabaseResource, SpecResource, StorageResource
from integrity.errors import UsageError
from integrity.settings import Settings

DAILY_CRON = "0 2 * * *"
DAILY_TIMEZONE = "UTC"
SCHEDULE_NAME = "daily_reconciliation"


def reconcile_cron() -> str:
    """The cron of the daily reconciliation: INTEGRITY_RECONCILE_CRON, else 02:00 every day."""
    return (Settings.from_env().reconcile_cron or "").strip() or DAILY_CRON


def build_daily_reconciliation(cron: str) -> dg.ScheduleDefinition:
    """The schedule on `cron` (UTC); a cron Dagster rejects raises UsageError naming the variable."""
    try:
        return dg.schedule(
            name=SCHEDULE_NAME,
            job=reconcile_job,
            cron_schedule=cron,
            execution_timezone=DAILY_TIMEZONE,
            default_status=dg.DefaultScheduleStatus.RUNNING,
        )(_daily_reconciliation)
    except dg.DagsterInvalidDefinitionError:
        raise UsageError(
            f"{settings.ENV_RECONCILE_CRON}={cron!r} is not a valid cron schedule: use 5 fields "
            f"(minute hour day-of-month month day-of-week), e.g. {DAILY_CRON!r} for 02:00 UTC"
        ) from None


def _daily_reconciliation(
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
        tenants = discover(storage, database, spec, on_refused=context.log.warning)
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
    # One run per tenant per tick: the key names the tick, so a daemon retry of the same tick
    # launches nothing twice while a cron that ticks more than once a day still runs each time.
    tick = context.scheduled_execution_time
    when = (
        tick.astimezone(timezone.utc).strftime("%Y-%m-%dT%H%MZ") if tick is not None else "manual"
    )
    for tenant in tenants:
        yield dg.RunRequest(
            partition_key=tenant,
            run_key=f"daily-{when}-{tenant}",
            tags={TRIGGER_TAG: SCHEDULE_NAME},
        )


daily_reconciliation = build_daily_reconciliation(reconcile_cron())
