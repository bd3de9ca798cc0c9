"""The auto-remediation policy: after each reconciliation_report materialization, remediation.

`auto_remediation_sensor` reads new report materializations from the event log (its cursor is
the last storage id it judged), judges each partition's report with the core policy
(integrity.policy: allowed kinds, circuit breaker, INTEGRITY_ALLOW_WRITES, and the inventory
sanity checks of the report's run, once that run has ended) and launches the
`remediate` job for that partition: applied when the policy allows it, else a dry run whose
tags say why. The run key is the materialization's storage id, so a re-evaluated tick never
launches twice. The sensor names the report asset and the job by string (integrity.defs.names):
remediation imports nothing of the reconciliation domain.
"""

# No `from __future__ import annotations` here: Dagster 1.13 checks the `context` parameter's
# annotation as an object (see reconciliation/assets.py).

import time
from typing import Any

import dagster as dg
from dagster import SensorEvaluationContext

from integrity.defs.intervals import sensor_interval
from integrity.defs.names import (
    AUTO_REMEDIATION_REASON_TAG,
    AUTO_REMEDIATION_TAG,
    DB_INVENTORY_CHECK,
    REMEDIATE_JOB,
    REMEDIATE_OP,
    REPORT_KEY,
    REPORT_STORAGE_ID_TAG,
    STORAGE_INVENTORY_CHECK,
    TENANT_TAG,
    TRIGGER_TAG,
)
from integrity.defs.resources import SpecResource
from integrity.diff import ReconciliationReport
from integrity.errors import IntegrityError
from integrity.policy import SKIP, RemediationDecision, allowed_kinds, decide_remediation
from integrity.settings import Settings

AUTO_REMEDIATION_SENSOR = "auto_remediation_sensor"
REPORTS_PER_TICK = 50
TICK_BUDGET_SECONDS = 30.0
"""Reports are judged until this much time has passed; the rest wait for the next tick."""
RUN_WAIT_SECONDS = 3600.0
"""How long a report waits for its run to end (a run that died without ending cannot block)."""
_TAG_LIMIT = 200


def run_key(storage_id: int) -> str:
    """One run per report materialization."""
    return f"auto-remediation-{storage_id}"


def remediation_request(
    partition: str, storage_id: int, decision: RemediationDecision, max_change_ratio: float
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
            AUTO_REMEDIATION_TAG: decision.mode,
            AUTO_REMEDIATION_REASON_TAG: reason,
            TENANT_TAG: partition,
            REPORT_STORAGE_ID_TAG: str(storage_id),
        },
    )


SANITY_CHECKS = (STORAGE_INVENTORY_CHECK, DB_INVENTORY_CHECK)


def failed_sanity_checks(
    instance: dg.DagsterInstance, run_id: str, partition: str
) -> dict[str, str]:
    """The inventory sanity checks that failed with ERROR in the report's run, for its partition."""
    failed: dict[str, str] = {}
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
        event = entry.dagster_event
        evaluation = event.event_specific_data if event is not None else None
        if (
            isinstance(evaluation, dg.AssetCheckEvaluation)
            and evaluation.check_name in SANITY_CHECKS
            and evaluation.partition in (None, partition)
            and not evaluation.passed
            and evaluation.severity == dg.AssetCheckSeverity.ERROR
        ):
            failed[evaluation.check_name] = evaluation.description or "failed"
    return failed


def _snapshot_path(record: Any) -> str | None:
    materialization = record.asset_materialization
    snapshot = materialization.metadata.get("snapshot") if materialization is not None else None
    return None if snapshot is None else str(snapshot.value)


@dg.sensor(
    name=AUTO_REMEDIATION_SENSOR,
    job_name=REMEDIATE_JOB,
    minimum_interval_seconds=sensor_interval(30),
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
    conf = Settings.from_env()
    try:
        policy = spec.load().policy
        allowed = allowed_kinds(policy, conf.auto_remediate)
    except IntegrityError as exc:
        # The cursor stays: once the policy is fixed, these reports are judged.
        return dg.SkipReason(f"auto-remediation policy: {exc}")
    partitions = {r.partition_key for r in records if r.partition_key is not None}
    latest = context.instance.get_latest_storage_id_by_partition(
        REPORT_KEY, dg.DagsterEventType.ASSET_MATERIALIZATION, partitions=partitions
    )
    may_write = conf.allow_writes
    requests: list[dg.RunRequest] = []
    notes: list[str] = []
    started = time.monotonic()
    judged = 0
    for record in records:
        if judged and time.monotonic() - started > TICK_BUDGET_SECONDS:
            notes.append(f"{len(records) - judged} reports left for the next tick")
            break
        run = context.instance.get_run_by_id(record.run_id)
        if (
            run is not None
            and not run.is_finished
            and time.time() - record.timestamp < RUN_WAIT_SECONDS
        ):
            # Its checks may still be running: judge it when the run has ended.
            notes.append(f"waiting for run {record.run_id} to finish")
            break
        judged += 1
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
        decision = decide_remediation(
            report,
            allowed,
            max_change_ratio=policy.max_change_ratio,
            writes_allowed=may_write,
            failed_checks=failed_sanity_checks(context.instance, record.run_id, partition),
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
    if not judged:
        return dg.SkipReason("; ".join(notes))
    cursor = str(records[judged - 1].storage_id)
    if requests:
        return dg.SensorResult(run_requests=requests, cursor=cursor)
    return dg.SensorResult(skip_reason="; ".join(notes) or "nothing to remediate", cursor=cursor)


remediation_sensors: list[dg.SensorDefinition] = [auto_remediation_sensor]
