"""Asset checks on the reconciliation graph: one per finding kind, inventory sanity, freshness.

The judgements are the core's (integrity.checks); this module feeds them from the report
snapshot and the event log and turns each outcome into an AssetCheckResult (passed, WARN or
ERROR severity) with the counts and at most five examples as metadata.

The kind and inventory checks are partitioned like their assets (`tenants`), so each tenant
partition's materialization has its own results. `partitions_def` on an asset check is a
preview feature in Dagster 1.13 (it emits a PreviewWarning where the specs are built, below).
`reconciliation_fresh` is unpartitioned: it judges every tenant's last report at once, runs
in every reconcile run, and a sensor launches it on its own when a nightly run is missed.
"""

# No `from __future__ import annotations` here: Dagster 1.13 checks the `context` parameter's
# annotation as an object (see assets.py).

import hashlib
import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import dagster as dg
from dagster import AssetCheckExecutionContext, SensorEvaluationContext

from integrity.checks import (
    PASSED,
    WARN,
    CheckOutcome,
    evaluate_findings,
    evaluate_freshness,
    evaluate_inventory,
)
from integrity.defs.helpers import fail_clearly, load_report
from integrity.defs.intervals import sensor_interval
from integrity.defs.io_managers import ParquetSnapshotIOManager
from integrity.defs.names import (
    DB_INVENTORY_CHECK,
    FRESHNESS_CHECK,
    FRESHNESS_JOB,
    REPORT_KEY,
    STORAGE_INVENTORY_CHECK,
    TRIGGER_TAG,
)
from integrity.defs.partitions import TENANTS, tenant_partitions
from integrity.defs.reconciliation.assets import (
    db_inventory,
    reconciliation_report,
    storage_inventory,
)
from integrity.defs.resources import SpecResource
from integrity.errors import IntegrityError
from integrity.kinds import KINDS, KindRegistry

FRESHNESS_SENSOR = "reconciliation_freshness_sensor"
FRESHNESS_INTERVAL_SECONDS = 900
"""How often the freshness sensor looks; it launches a check run only when the state changes."""

FINDING_CHECK_DESCRIPTIONS = {kind.check: kind.description for kind in KINDS}


def to_result(outcome: CheckOutcome, asset_key: dg.AssetKey) -> dg.AssetCheckResult:
    """passed, or failed with WARN or ERROR severity; metadata as plottable numbers and JSON."""
    metadata: dict[str, Any] = {}
    for name, value in outcome.metadata.items():
        if value is None:
            continue
        if isinstance(value, bool):
            metadata[name] = dg.MetadataValue.bool(value)
        elif isinstance(value, int):
            metadata[name] = dg.MetadataValue.int(value)
        elif isinstance(value, float):
            # Shown, never compared: four places are plenty for a ratio or a number of hours.
            metadata[name] = dg.MetadataValue.float(round(value, 4))
        elif isinstance(value, str):
            metadata[name] = dg.MetadataValue.text(value)
        else:
            metadata[name] = dg.MetadataValue.json(value)
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name=outcome.check,
        passed=outcome.passed,
        # A passed result keeps Dagster's default severity; a failed one says how bad.
        severity=dg.AssetCheckSeverity.WARN
        if outcome.level == WARN
        else dg.AssetCheckSeverity.ERROR,
        description=outcome.description,
        metadata=metadata,
    )


# --------------------------------------------------------------------------- finding kinds


# Preview feature: partitions_def on AssetCheckSpec (PreviewWarning in Dagster 1.13), so each
# tenant partition's report gets its own results.
def finding_check_specs(registry: KindRegistry = KINDS) -> list[dg.AssetCheckSpec]:
    """One check per finding kind on the report, named and described by the kind."""
    return [
        dg.AssetCheckSpec(
            kind.check,
            asset=REPORT_KEY,
            description=kind.description,
            partitions_def=tenant_partitions,
        )
        for kind in registry
    ]


FINDING_CHECK_SPECS = finding_check_specs()


@dg.multi_asset_check(specs=FINDING_CHECK_SPECS, can_subset=True)
def reconciliation_findings_checks(
    context: AssetCheckExecutionContext,
    spec: SpecResource,
    snapshot_io_manager: dg.ResourceParam[ParquetSnapshotIOManager],
) -> Iterator[dg.AssetCheckResult]:
    """Each finding kind against its warn and error thresholds (the spec's `checks.findings`).

    One step reads the partition's report snapshot once and judges every selected kind.
    """
    selected = {key.name for key in context.selected_asset_check_keys}
    with fail_clearly():
        reconciliation_spec = spec.load()
        report = load_report(snapshot_io_manager, context.partition_key)
    kinds = [kind.name for kind in KINDS if kind.check in selected]
    for outcome in evaluate_findings(report, reconciliation_spec, kinds):
        yield to_result(outcome, REPORT_KEY)


# --------------------------------------------------------------------------- inventories


def _last_two(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition: str
) -> list[dict[str, Any]]:
    """The metadata of the partition's latest materialization and of the one before it."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition]), limit=2
    ).records
    out = []
    for record in records:
        materialization = record.asset_materialization
        meta = materialization.metadata if materialization is not None else {}
        out.append({name: value.value for name, value in meta.items()})
    return out


def _inventory_outcome(
    context: AssetCheckExecutionContext,
    spec: SpecResource,
    asset_key: dg.AssetKey,
    check: str,
    count_field: str,
    what: str,
) -> dg.AssetCheckResult:
    partition = context.partition_key
    with fail_clearly():
        settings = spec.load().checks.inventory
    history = _last_two(context.instance, asset_key, partition)
    if not history:
        raise dg.Failure(
            description=f"{asset_key.to_user_string()} has no materialization for partition "
            f"{partition!r}: materialize it first"
        )
    latest = history[0]
    if count_field not in latest:
        raise dg.Failure(
            description=f"the latest materialization of {asset_key.to_user_string()} for "
            f"partition {partition!r} has no {count_field!r} metadata: materialize it again"
        )
    previous = history[1].get(count_field) if len(history) > 1 else None
    reasons = latest.get("reasons", "none")
    outcome = evaluate_inventory(
        check,
        what,
        int(latest.get(count_field, 0)),
        None if previous is None else int(previous),
        settings,
        complete=bool(latest.get("complete", True)),
        reasons=[] if reasons == "none" else [str(reasons)],
    )
    return to_result(outcome, asset_key)


# Preview feature: partitions_def on an asset check (PreviewWarning in Dagster 1.13), so the
# comparison is with the previous materialization of the same tenant partition.
@dg.asset_check(
    asset=storage_inventory,
    name=STORAGE_INVENTORY_CHECK,
    partitions_def=tenant_partitions,
)
def storage_inventory_sane(
    context: AssetCheckExecutionContext, spec: SpecResource
) -> dg.AssetCheckResult:
    """The listing is not empty and not much smaller than last time (wrong bucket or endpoint?)."""
    return _inventory_outcome(
        context,
        spec,
        storage_inventory.key,
        STORAGE_INVENTORY_CHECK,
        "objects_listed",
        "objects listed",
    )


# Preview feature: partitions_def on an asset check (see storage_inventory_sane).
@dg.asset_check(asset=db_inventory, name=DB_INVENTORY_CHECK, partitions_def=tenant_partitions)
def db_inventory_sane(
    context: AssetCheckExecutionContext, spec: SpecResource
) -> dg.AssetCheckResult:
    """The rows read are not none and not much fewer than last time (wrong database?)."""
    return _inventory_outcome(
        context, spec, db_inventory.key, DB_INVENTORY_CHECK, "rows_read", "rows read"
    )


# --------------------------------------------------------------------------- freshness


def latest_report_times(instance: dg.DagsterInstance) -> dict[str, datetime]:
    """Each partition's last reconciliation_report materialization time (two queries)."""
    by_partition = instance.get_latest_storage_id_by_partition(
        REPORT_KEY, dg.DagsterEventType.ASSET_MATERIALIZATION
    )
    if not by_partition:
        return {}
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=REPORT_KEY, storage_ids=list(by_partition.values())),
        limit=len(by_partition),
    ).records
    return {
        record.partition_key: datetime.fromtimestamp(record.timestamp, tz=timezone.utc)
        for record in records
        if record.partition_key is not None
    }


def freshness_outcome(instance: dg.DagsterInstance, max_age: timedelta) -> CheckOutcome:
    """The freshness verdict now, from the event log and the tenant partitions."""
    return evaluate_freshness(
        latest_report_times(instance),
        instance.get_dynamic_partitions(TENANTS),
        datetime.now(timezone.utc),
        max_age,
    )


@dg.asset_check(asset=reconciliation_report, name=FRESHNESS_CHECK)
def reconciliation_fresh(
    context: AssetCheckExecutionContext, spec: SpecResource
) -> dg.AssetCheckResult:
    """Every tenant's last reconciliation is younger than `checks.freshness.max_age` (26h).

    Reads only the event log, so it can run without a new report: the freshness sensor
    launches it when a nightly run is missed.
    """
    with fail_clearly():
        max_age = spec.load().checks.freshness.max_age_delta
    return to_result(freshness_outcome(context.instance, max_age), REPORT_KEY)


freshness_job = dg.define_asset_job(
    name=FRESHNESS_JOB,
    selection=dg.AssetSelection.checks(reconciliation_fresh),
    description="Evaluate reconciliation_fresh alone, from the event log (no reconciliation).",
)


def _cursor(raw: str | None) -> dict[str, Any]:
    try:
        value = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


@dg.sensor(
    name=FRESHNESS_SENSOR,
    job=freshness_job,
    minimum_interval_seconds=sensor_interval(FRESHNESS_INTERVAL_SECONDS),
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def reconciliation_freshness_sensor(
    context: SensorEvaluationContext, spec: SpecResource
) -> dg.SensorResult | dg.SkipReason:
    """Runs reconciliation_fresh when a tenant's last report grows too old, so a nightly run
    that never happened still turns the check red. One run per stale state (run key), so a
    check that stays stale is not re-run every tick; recoveries come from the next reconcile
    run, which evaluates the check too."""
    cursor = _cursor(context.cursor)
    now = datetime.now(timezone.utc)
    try:
        first_seen = datetime.fromisoformat(str(cursor["first_tick"]))
    except (KeyError, ValueError):
        first_seen = now
    first_tick = cursor["first_tick"] = first_seen.isoformat()
    try:
        max_age = spec.load().checks.freshness.max_age_delta
    except IntegrityError as exc:
        return dg.SkipReason(f"cannot judge freshness: {exc}")
    outcome = freshness_outcome(context.instance, max_age)
    new_cursor = json.dumps(cursor)
    if outcome.level == PASSED:
        return dg.SensorResult(skip_reason=outcome.description, cursor=new_cursor)
    if outcome.metadata.get("checked", 0) == 0:
        # Never reconciled: give a new deployment max_age from the sensor's first tick.
        if now - first_seen <= max_age:
            return dg.SensorResult(
                skip_reason=f"{outcome.description}; waiting until {max_age} after {first_tick}",
                cursor=new_cursor,
            )
        state = f"never-since-{first_tick}"
    else:
        stale = [(e["partition"], e["last_reconciled_at"]) for e in outcome.metadata["examples"]]
        state = f"stale-{outcome.metadata['count']}-{json.dumps(stale)}"
    run_key = "reconciliation_fresh-" + hashlib.sha256(state.encode()).hexdigest()[:16]
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=run_key,
                tags={TRIGGER_TAG: FRESHNESS_SENSOR},
            )
        ],
        cursor=new_cursor,
    )


reconciliation_checks: list[dg.AssetChecksDefinition] = [
    reconciliation_findings_checks,
    storage_inventory_sane,
    db_inventory_sane,
    reconciliation_fresh,
]
freshness_sensors: list[dg.SensorDefinition] = [reconciliation_freshness_sensor]
