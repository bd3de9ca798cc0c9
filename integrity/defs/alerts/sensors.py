"""Alerts: a check that turns red, a check that recovers, and a failed run each reach a person once.

Open-source Dagster has no alert policies, so two sensors read the instance themselves:
`check_alert_sensor` reads asset check evaluations since its cursor and keeps the state of each
(asset, check, partition) in that cursor (the rules are in integrity.alerts.transitions);
`run_failure_alert_sensor` sends one message per failed reconcile, remediate, rollback or
process_document run. Destinations come from the environment through `AlertsResource`
(integrity.defs.alerts.resources); with none configured both sensors skip and say which
variables to set. The top of the Dagster layer: alerts import the jobs and checks they watch,
and no domain imports alerts.
"""

# No `from __future__ import annotations` here: Dagster 1.13 checks the `context` parameter's
# annotation as an object (see reconciliation/assets.py).

import math
from collections.abc import Sequence
from typing import Any

import dagster as dg

from integrity import settings
from integrity.alerts import (
    RUN_FAILED,
    AlertCursor,
    AlertMessage,
    CheckBatch,
    CheckOutcome,
    Destination,
    deliver,
    run_tick,
    run_url,
)
from integrity.alerts.message import MAX_EXAMPLES
from integrity.defs.alerts.resources import AlertsResource
from integrity.defs.intervals import sensor_interval
from integrity.defs.names import PARTITION_TAG
from integrity.defs.processing.jobs import process_document_job
from integrity.defs.reconciliation.checks import reconciliation_checks
from integrity.defs.reconciliation.jobs import reconcile_job
from integrity.defs.remediation.jobs import remediate_job, rollback_job

CHECK_ALERT_SENSOR = "check_alert_sensor"
RUN_FAILURE_ALERT_SENSOR = "run_failure_alert_sensor"
TICK_SECONDS = 30
MAX_MESSAGES_PER_TICK = 20
SEND_SECONDS_PER_TICK = 15.0
"""No new message starts after this; with 5 s timeouts a tick stays within Dagster's 60 s."""
HISTORY_PAGE = 200
HISTORY_PAGES = 10
"""At most HISTORY_PAGE * HISTORY_PAGES evaluations of one check are read per tick."""

NOT_CONFIGURED = (
    "no alert destination is configured: set "
    f"{settings.ENV_ALERT_WEBHOOK_URL}; or {settings.ENV_SLACK_TOKEN} and "
    f"{settings.ENV_SLACK_CHANNEL}; or {settings.ENV_SMTP_HOST}, "
    f"{settings.ENV_ALERT_EMAIL_FROM} and {settings.ENV_ALERT_EMAIL_TO}"
)


def _not_configured(problems: Sequence[str]) -> str:
    return NOT_CONFIGURED + ("" if not problems else " (" + "; ".join(problems) + ")")


# --------------------------------------------------------------------------- check evaluations


def _number(value: Any) -> int | float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def _example_text(item: Any) -> str:
    """A finding's key (and detail), a stale partition, or the fields of anything else."""
    if not isinstance(item, dict):
        return str(item)
    for name in ("key", "partition"):
        if item.get(name):
            rest = [str(v) for k, v in item.items() if k != name and v not in (None, "")]
            return f"{item[name]}" + (f" ({', '.join(rest)})" if rest else "")
    return ", ".join(f"{k}={v}" for k, v in item.items() if v not in (None, ""))


def _examples_from(value: dg.MetadataValue) -> list[str]:
    """Example keys from a table (its `key` column when it has one), a JSON list or lines of text."""
    raw = value.value
    if isinstance(value, dg.TableMetadataValue):
        found = []
        for record in raw.records:
            data = record.data
            key = data.get("key")
            found.append(
                str(key) if key else ", ".join(f"{k}={v}" for k, v in data.items() if v is not None)
            )
        return found
    if isinstance(raw, list):
        return [_example_text(item) for item in raw]
    if isinstance(raw, str):
        return [line for line in raw.splitlines() if line.strip()]
    return []


def counts_and_examples(
    metadata: dict[str, dg.MetadataValue],
) -> tuple[dict[str, int | float], list[str]]:
    """Numbers become counts; entries named like `example*` become up to 5 examples."""
    counts: dict[str, int | float] = {}
    examples: list[str] = []
    for label, value in metadata.items():
        number = _number(value.value)
        if number is not None:
            counts[label] = number
        elif "example" in label.lower() and len(examples) < MAX_EXAMPLES:
            examples.extend(_examples_from(value))
    return counts, examples[:MAX_EXAMPLES]


def _check_keys(context: dg.SensorEvaluationContext) -> list[dg.AssetCheckKey]:
    """Every check of this code location (its own checks when run outside one)."""
    if context.repository_def is not None:
        keys = context.repository_def.asset_graph.asset_check_keys
    else:
        keys = {key for checks in reconciliation_checks for key in checks.check_keys}
    return sorted(keys, key=lambda k: (k.asset_key.to_user_string(), k.name))


def _check_id(key: dg.AssetCheckKey) -> str:
    return f"{key.asset_key.to_user_string()}:{key.name}"


def _read_new(
    instance: dg.DagsterInstance, key: dg.AssetCheckKey, after: int | None
) -> tuple[list[Any], bool]:
    """This check's execution records newer than `after`, newest first, and whether that is all."""
    records: list[Any] = []
    page_cursor = None
    for _ in range(HISTORY_PAGES):
        page = instance.event_log_storage.get_asset_check_execution_history(
            key, limit=HISTORY_PAGE, cursor=page_cursor
        )
        fresh = [r for r in page if after is None or r.id > after]
        records.extend(fresh)
        if len(page) < HISTORY_PAGE or len(fresh) < len(page):
            return records, True
        page_cursor = page[-1].id
    return records, False


def read_batches(context: dg.SensorEvaluationContext, cursor: AlertCursor) -> list[CheckBatch]:
    """One batch per check: its resolved evaluations since the cursor, and where to hold."""
    instance = context.instance
    read: list[tuple[dg.AssetCheckKey, list[Any]]] = []
    for key in _check_keys(context):
        records, complete = _read_new(instance, key, cursor.after.get(_check_id(key)))
        if not complete:
            context.log.warning(
                f"more than {HISTORY_PAGE * HISTORY_PAGES} evaluations of {_check_id(key)} since "
                "the last tick: only the newest are compared"
            )
        read.append((key, records))

    # One query for the runs of evaluations not resolved yet: are they still running?
    run_ids = {
        r.run_id
        for _, records in read
        for r in records
        if r.event is None or r.event.asset_check_evaluation is None
    }
    runs = (
        {run.run_id: run for run in instance.get_runs(filters=dg.RunsFilter(run_ids=list(run_ids)))}
        if run_ids
        else {}
    )

    batches = []
    for key, records in read:
        outcomes: list[CheckOutcome] = []
        hold_before: int | None = None
        for record in records:
            evaluation = record.event.asset_check_evaluation if record.event else None
            if evaluation is None:
                run = runs.get(record.run_id)
                if run is not None and not run.is_finished:
                    hold_before = record.id if hold_before is None else min(hold_before, record.id)
                continue
            # An unpartitioned check (reconciliation_fresh) has one state, whatever the run's
            # partition: its evaluation carries none.
            partition = record.partition or evaluation.partition
            counts, examples = counts_and_examples(dict(evaluation.metadata))
            outcomes.append(
                CheckOutcome(
                    asset=key.asset_key.to_user_string(),
                    check=key.name,
                    partition=partition,
                    passed=evaluation.passed,
                    severity=evaluation.severity.value,
                    record_id=record.id,
                    run_id=record.run_id,
                    counts=counts,
                    examples=examples,
                    description=evaluation.description,
                )
            )
        batches.append(
            CheckBatch(
                check_id=_check_id(key),
                outcomes=outcomes,
                newest_id=max((r.id for r in records), default=None),
                hold_before=hold_before,
            )
        )
    return batches


def _send_with(context: Any, destinations: Sequence[Destination]):
    """A sender for one tick: a destination that failed is not tried again in the same tick."""
    working = list(destinations)

    def send(message: AlertMessage) -> bool:
        result = deliver(working, message, log=context.log.warning)
        if result.ok:
            working[:] = [d for d in working if d.description in result.delivered]
            context.log.info(
                f"alert {message.event}: {message.subject} -> {len(result.delivered)} destination(s)"
            )
        return result.ok

    return send


@dg.sensor(
    name=CHECK_ALERT_SENSOR,
    minimum_interval_seconds=sensor_interval(TICK_SECONDS),
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def check_alert_sensor(
    context: dg.SensorEvaluationContext, alerts: AlertsResource
) -> dg.SensorResult | dg.SkipReason:
    """Sends a message when an asset check goes from passing to failing, and when it recovers.

    No repeats while a check stays red; the state per (asset, check, partition) is the cursor.
    """
    destinations, problems = alerts.destinations()
    for problem in problems:
        context.log.warning(f"alert destination ignored: {problem}")
    if not destinations:
        return dg.SkipReason(_not_configured(problems))
    cursor = AlertCursor.from_json(context.cursor)
    batches = read_batches(context, cursor)
    summary = run_tick(
        cursor,
        batches,
        _send_with(context, destinations),
        alerts.ui_base_url,
        MAX_MESSAGES_PER_TICK,
        SEND_SECONDS_PER_TICK,
    )
    parts = [f"{len(summary.sent)} alert(s) sent", f"{len(cursor.failing)} check(s) failing"]
    if summary.undelivered:
        parts.append("delivery failed on every destination: retrying next tick")
    if summary.deferred:
        parts.append(f"{summary.deferred} transition(s) left for the next tick")
    return dg.SensorResult(skip_reason="; ".join(parts), cursor=cursor.to_json())


# --------------------------------------------------------------------------- failed runs


ALERTED_JOBS = [reconcile_job, remediate_job, rollback_job, process_document_job]


def failure_reason(context: dg.RunFailureSensorContext) -> str:
    """The first step's own one-line reason when it has one, else the run's failure message."""
    for event in context.get_step_failure_events():
        data = event.step_failure_data
        if data.user_failure_data is not None and data.user_failure_data.description:
            return data.user_failure_data.description
        if data.error is not None:
            return data.error.message
    return context.failure_event.message or "the run failed"


@dg.run_failure_sensor(
    name=RUN_FAILURE_ALERT_SENSOR,
    monitored_jobs=ALERTED_JOBS,
    minimum_interval_seconds=sensor_interval(TICK_SECONDS),
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def run_failure_alert_sensor(
    context: dg.RunFailureSensorContext, alerts: AlertsResource
) -> dg.SkipReason | None:
    """Sends one message per failed reconcile, remediate, rollback or process_document run."""
    destinations, problems = alerts.destinations()
    if not destinations:
        return dg.SkipReason(_not_configured(problems))
    run = context.dagster_run
    message = AlertMessage(
        event=RUN_FAILED,
        job=run.job_name,
        partition=run.tags.get(PARTITION_TAG),
        error=failure_reason(context),
        run_id=run.run_id,
        run_url=run_url(alerts.ui_base_url, run.run_id),
    )
    # The run status sensor advances past this run whatever happens: each destination retries
    # on its own, and a message that reaches none is logged here, once.
    _send_with(context, destinations)(message)
    return None


alert_sensors: list[dg.SensorDefinition] = [check_alert_sensor, run_failure_alert_sensor]
