"""The auto-remediation policy: after each reconciliation_report materialization, remediation.

`auto_remediation_sensor` reads new report materializations from the event log (its cursor is
the last storage id it judged), judges each partition's report with the core policy
(integrity.policy: allowed kinds, circuit breaker, INTEGRITY_ALLOW_WRITES) and launches the
`remediate` job for that partition: applied when the policy allows it, else a dry run whose
tags say why. The run key is the materialization's storage id, so a re-evaluated tick never
launches twice. The freshness sensor of the checks runs here too (it is a policy on when a
reconciliation must have happened).
"""

# No `from __future__ import annotations` here: Dagster 1.13 checks the `context` parameter's
# annotation as an object (see assets.py).

from typing import Any

import dagster as dg
from dagster import SensorEvaluationContext

from integrity.defs.checks import REPORT_KEY, freshness_sensors
from integrity.defs.remediation import REMEDIATE_JOB
from integrity.defs.resources import SpecResource
from integrity.diff import ReconciliationReport
from integrity.errors import IntegrityError
from integrity.policy import SKIP, Decision, allowed_kinds, decide
from integrity.remediation import writes_allowed

AUTO_REMEDIATION_SENSOR = "auto_remediation_sensor"
TRIGGER_TAG = "integrity/trigger"
MODE_TAG = "integrity/auto_remediation"
"""`apply` or `dry_run`."""
REASON_TAG = "integrity/auto_remediation_reason"
TENANT_TAG = "integrity/tenant"
REPORT_TAG = "integrity/report_storage_id"
REMEDIATE_OP = "apply_remediation"
REPORTS_PER_TICK = 50
_TAG_LIMIT = 200


def run_key(storage_id: int) -> str:
    """One run per report materialization."""
    return f"auto-remediation-{storage_id}"


def remediation_request(
    partition: str, storage_id: int, decision: Decision, max_change_ratio: float
) -> dg.RunRequest:
    reason = decision.reason
    if len(reason) > _TAG_LIMIT:
        reason = reason[: _TAG_LIMIT - 1] + "…"
    return dg.RunRequest(
        run_key=run_key(storage_id),
        run_config={
            "ops": {
                REMEDIATE_OP: {
                    "config": {
                        "tenant": partition,
                        "dry_run": decision.dry_run,
                        "kinds": list(decision.kinds),
                        "max_change_ratio": max_change_ratio,
                    }
                }
            }
        },
        tags={
            TRIGGER_TAG: AUTO_REMEDIATION_SENSOR,
            MODE_TAG: decision.mode,
            REASON_TAG: reason,
            TENANT_TAG: partition,
            REPORT_TAG: str(storage_id),
        },
    )


def _snapshot_path(record: Any) -> str | None:
    materialization = record.asset_materialization
    snapshot = materialization.metadata.get("snapshot") if materialization is not None else None
    return None if snapshot is None else str(snapshot.value)


@dg.sensor(
    name=AUTO_REMEDIATION_SENSOR,
    job_name=REMEDIATE_JOB,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def auto_remediation_sensor(
    context: SensorEvaluationContext, spec: SpecResource
) -> dg.SensorResult | dg.SkipReason:
    """After each reconciliation, remediate its partition: applied when the policy allows every
    kind present, the circuit breaker passes and INTEGRITY_ALLOW_WRITES=1; else a dry run."""
    after = int(context.cursor) if context.cursor else None
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=REPORT_KEY, after_storage_id=after),
        limit=REPORTS_PER_TICK,
        ascending=True,
    ).records
    if not records:
        return dg.SkipReason("no new reconciliation_report materialization")
    try:
        policy = spec.load().policy
        allowed = allowed_kinds(policy)
    except IntegrityError as exc:
        # The cursor stays: once the policy is fixed, these reports are judged.
        return dg.SkipReason(f"auto-remediation policy: {exc}")
    partitions = {r.partition_key for r in records if r.partition_key is not None}
    latest = context.instance.get_latest_storage_id_by_partition(
        REPORT_KEY, dg.DagsterEventType.ASSET_MATERIALIZATION, partitions=partitions
    )
    may_write = writes_allowed()
    requests: list[dg.RunRequest] = []
    notes: list[str] = []
    for record in records:
        partition = record.partition_key
        if partition is None:
            continue
        if latest.get(partition, record.storage_id) != record.storage_id:
            notes.append(f"{partition}: superseded by a newer report")
            continue
        path = _snapshot_path(record)
        try:
            report = ReconciliationReport.load(path) if path else None
        except (OSError, ValueError, KeyError) as exc:
            notes.append(f"{partition}: cannot read the report snapshot {path}: {exc}")
            continue
        if report is None:
            notes.append(f"{partition}: the materialization names no report snapshot")
            continue
        decision = decide(
            report, allowed, max_change_ratio=policy.max_change_ratio, writes_allowed=may_write
        )
        if decision.mode == SKIP:
            notes.append(f"{partition}: no remediation run, {decision.reason}")
            continue
        notes.append(f"{partition}: {decision.mode}, {decision.reason}")
        requests.append(
            remediation_request(partition, record.storage_id, decision, policy.max_change_ratio)
        )
    for note in notes:
        context.log.info(note)
    cursor = str(records[-1].storage_id)
    if requests:
        return dg.SensorResult(run_requests=requests, cursor=cursor)
    return dg.SensorResult(skip_reason="; ".join(notes) or "nothing to remediate", cursor=cursor)


policy_sensors: list[dg.SensorDefinition] = [auto_remediation_sensor, *freshness_sensors]
