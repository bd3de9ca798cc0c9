"""Tenant discovery: keeps the `tenants` partitions in step with storage and the database.

`discover` finds the tenants (after a preflight of both sides) for the discovery sensor here
and for the daily schedule.
"""

from __future__ import annotations

from collections.abc import Callable

import dagster as dg
import sqlalchemy as sa
from dagster import SensorEvaluationContext

from integrity.defs.intervals import sensor_interval
from integrity.defs.partitions import TENANTS, tenant_partitions
from integrity.defs.resources import DatabaseResource, SpecResource, StorageResource
from integrity.errors import IntegrityError
from integrity.inventory import ALL_TENANTS, check_database, db_error_reason, discover_tenants
from integrity.spec import tenant_problem
from integrity.storage.base import ListingFailed

DISCOVERY_INTERVAL_SECONDS = 60


class DiscoveryFailed(Exception):
    """Tenants could not be discovered; the message is one line for a tick's skip reason."""


def discover(
    storage: StorageResource,
    database: DatabaseResource,
    spec: SpecResource,
    on_refused: Callable[[str], None] | None = None,
) -> list[str]:
    """Every tenant found in storage and the database, after a preflight of both sides.

    A value that cannot be a tenant (see integrity.spec.tenant_problem: 'org-acme/', '..') never
    becomes a partition; `on_refused` gets one line naming how many and the first.
    """
    try:
        reconciliation_spec = spec.load()
        store = storage.get_store()
        store.check_access()
        with database.engine() as engine:
            check_database(engine, reconciliation_spec)
            tenants = discover_tenants(store, engine, reconciliation_spec)
    except (IntegrityError, ListingFailed) as exc:
        raise DiscoveryFailed(str(exc)) from None
    except sa.exc.SQLAlchemyError as exc:
        reason = db_error_reason(exc)
        raise DiscoveryFailed(f"cannot read database {database.description}: {reason}") from None
    refused = {t: p for t in tenants if (p := tenant_problem(t)) is not None}
    if refused and on_refused is not None:
        first = next(iter(refused.values()))
        on_refused(
            f"ignored {len(refused)} value(s) of the tenant columns or prefixes that cannot be "
            f"a tenant partition; the first: {first}"
        )
    # A tenant literally named like the reserved key would shadow the whole-bucket partition.
    return [t for t in tenants if t != ALL_TENANTS and t not in refused]


@dg.sensor(
    name="tenant_discovery_sensor",
    minimum_interval_seconds=sensor_interval(DISCOVERY_INTERVAL_SECONDS),
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def tenant_discovery_sensor(
    context: SensorEvaluationContext,
    storage: StorageResource,
    database: DatabaseResource,
    spec: SpecResource,
) -> dg.SensorResult | dg.SkipReason:
    """Add newly found tenants (and `__all__`, the whole bucket) as partitions, so they can be reconciled from the UI.

    Each tick is one delimiter listing per tenant prefix template and one SELECT DISTINCT per
    tenant column: bounded by the number of tenants, not of objects or rows.
    """
    try:
        tenants = discover(storage, database, spec, on_refused=context.log.warning)
    except DiscoveryFailed as exc:
        return dg.SkipReason(f"tenant discovery failed: {exc}")
    known = set(context.instance.get_dynamic_partitions(TENANTS))
    new = [key for key in [ALL_TENANTS, *tenants] if key not in known]
    if not new:
        return dg.SkipReason(f"no new tenants ({len(known)} partitions known)")
    context.log.info(f"adding {len(new)} tenant partitions")
    return dg.SensorResult(dynamic_partitions_requests=[tenant_partitions.build_add_request(new)])
