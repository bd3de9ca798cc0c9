"""Tenant discovery: keeps the `tenants` partitions in step with storage and the database."""

from __future__ import annotations

import dagster as dg
from dagster import SensorEvaluationContext

from integrity.defs.intervals import sensor_interval
from integrity.defs.partitions import TENANTS, DiscoveryFailed, discover, tenant_partitions
from integrity.defs.resources import DatabaseResource, SpecResource, StorageResource
from integrity.inventory import ALL_TENANTS

DISCOVERY_INTERVAL_SECONDS = 60


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
