"""Alerts: a check that turns red, a check that recovers, and a failed run each reach a person once.

Open-source Dagster has no alert policies, so two sensors read the instance themselves:
`check_alert_sensor` reads asset check evaluations since its cursor and keeps the state of each
(asset, check, partition) in that cursor (the rules are in integrity.alerts.transitions);
`run_failure_alert_sensor` sends one message per failed reconcile, remediate, rollback or
process_document run. Destinations come from the environment through `AlertsResource`; with
none configured both sensors skip and say which variables to set.
"""

# No `from __future__ import annotations` here: Dagster 1.13 checks the `context` parameter's
# annotation as an object (see assets.py).

import math
import os
from collections.abc import Iterable, Sequence
from typing import Any

import dagster as dg
from pydantic import Field

from integrity import settings
from integrity.alerts import (
    RUN_FAILED,
    AlertCursor,
    AlertMessage,
    CheckBatch,
    CheckOutcome,
    Destination,
    EmailDestination,
    SlackDestination,
    WebhookDestination,
    deliver,
    run_tick,
    run_url,
)
from integrity.alerts.message import MAX_EXAMPLES
from integrity.defs.intervals import sensor_interval
from integrity.defs.processing.jobs import PROCESS_JOB, processing_jobs
from integrity.defs.reconciliation.jobs import reconcile_job
from integrity.defs.remediation.jobs import remediation_jobs

CHECK_ALERT_SENSOR = "check_alert_sensor"
RUN_FAILURE_ALERT_SENSOR = "run_failure_alert_sensor"
ALERTS_RESOURCE = "alerts"
TICK_SECONDS = 30
MAX_MESSAGES_PER_TICK = 20
SEND_SECONDS_PER_TICK = 15.0
"""No new message starts after this; with 5 s timeouts a tick stays within Dagster's 60 s."""
HISTORY_PAGE = 200
HISTORY_PAGES = 10
"""At most HISTORY_PAGE * HISTORY_PAGES evaluations of one check are read per tick."""

PARTITION_TAG = "dagster/partition"
NOT_CONFIGURED = (
    "no alert destination is configured: set "
    f"{settings.ENV_ALERT_WEBHOOK_URL}; or {settings.ENV_SLACK_TOKEN} and "
    f"{settings.ENV_SLACK_CHANNEL}; or {settings.ENV_SMTP_HOST}, "
    f"{settings.ENV_ALERT_EMAIL_FROM} and {settings.ENV_ALERT_EMAIL_TO}"
)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class AlertsResource(dg.ConfigurableResource):
    """Where alerts go. Any subset of destinations; secrets come from the environment (EnvVar)."""

    webhook_url: str | None = Field(
        default=None, description="Generic JSON webhook URL (a secret: never logged)."
    )
    slack_token: str | None = Field(default=None, description="Slack bot token (a secret).")
    slack_channel: str | None = Field(default=None, description="Slack channel, e.g. #data-ops.")
    slack_base_url: str | None = Field(
        default=None, description="Slack Web API base URL; unset means slack.com's."
    )
    smtp_host: str | None = Field(default=None, description="SMTP server host.")
    smtp_port: str | None = Field(default=None, description="SMTP port; unset means 25.")
    smtp_user: str | None = Field(default=None, description="SMTP login user; unset: no login.")
    smtp_password: str | None = Field(default=None, description="SMTP password (a secret).")
    smtp_starttls: str | None = Field(
        default=None, description="Force STARTTLS on (1) or off (0); unset: on for port 587."
    )
    email_from: str | None = Field(default=None, description="Sender address.")
    email_to: str | None = Field(default=None, description="Recipients, comma-separated.")
    ui_base_url: str | None = Field(
        default=None,
        description=f"Base URL of the Dagster UI for run links; unset means {settings.DEFAULT_UI_BASE_URL}.",
    )
    timeout: float = Field(default=5.0, description="Seconds per request to a destination.")
    attempts: int = Field(default=3, ge=1, description="Attempts per message and destination.")
    backoff: float = Field(default=0.5, ge=0, description="First retry pause, doubled each retry.")

    def destinations(self) -> tuple[list[Destination], list[str]]:
        """The usable destinations, and one line per destination that is only half configured."""
        found: list[Destination] = []
        problems: list[str] = []
        if self.webhook_url:
            found.append(
                WebhookDestination(
                    self.webhook_url,
                    timeout=self.timeout,
                    attempts=self.attempts,
                    backoff=self.backoff,
                )
            )
        if self.slack_token or self.slack_channel:
            if self.slack_token and self.slack_channel:
                found.append(SlackDestination(self._slack_client(), self.slack_channel))
            else:
                problems.append(
                    f"Slack needs both {settings.ENV_SLACK_TOKEN} and {settings.ENV_SLACK_CHANNEL}"
                )
        if self.smtp_host or self.email_to or self.email_from:
            email, problem = self._email()
            if email is not None:
                found.append(email)
            else:
                problems.append(problem)
        return found, problems

    def _slack_client(self) -> Any:
        from dagster_slack import SlackResource

        client = SlackResource(token=self.slack_token).get_client()
        client.timeout = max(1, round(self.timeout))
        if self.slack_base_url:
            client.base_url = self.slack_base_url.rstrip("/") + "/"
        return client

    def _email(self) -> tuple[EmailDestination | None, str]:
        recipients = [a.strip() for a in (self.email_to or "").split(",") if a.strip()]
        if not (self.smtp_host and self.email_from and recipients):
            return None, (
                f"email needs {settings.ENV_SMTP_HOST}, {settings.ENV_ALERT_EMAIL_FROM} and "
                f"{settings.ENV_ALERT_EMAIL_TO}"
            )
        try:
            port = int(self.smtp_port) if self.smtp_port else 25
        except ValueError:
            return None, f"{settings.ENV_SMTP_PORT} must be a port number"
        starttls = (self.smtp_starttls or "").strip().lower()
        if starttls and starttls not in _TRUE | _FALSE:
            return None, f"{settings.ENV_SMTP_STARTTLS} must be 1 or 0"
        return (
            EmailDestination(
                host=self.smtp_host,
                port=port,
                sender=self.email_from,
                recipients=recipients,
                user=self.smtp_user or None,
                password=self.smtp_password or None,
                starttls=(starttls in _TRUE) if starttls else None,
                timeout=self.timeout,
                attempts=min(self.attempts, 2),
                backoff=self.backoff,
            ),
            "",
        )


def _from_env(name: str) -> dg.EnvVar | None:
    """EnvVar when the variable is set (resolved at tick time, never shown), else None."""
    return dg.EnvVar(name) if os.environ.get(name) else None


def alerts_resource_from_env() -> AlertsResource:
    """The destinations the environment names; nothing is contacted here."""
    return AlertsResource(
        webhook_url=_from_env(settings.ENV_ALERT_WEBHOOK_URL),
        slack_token=_from_env(settings.ENV_SLACK_TOKEN),
        slack_channel=_from_env(settings.ENV_SLACK_CHANNEL),
        smtp_host=_from_env(settings.ENV_SMTP_HOST),
        smtp_port=_from_env(settings.ENV_SMTP_PORT),
        smtp_user=_from_env(settings.ENV_SMTP_USER),
        smtp_password=_from_env(settings.ENV_SMTP_PASSWORD),
        smtp_starttls=_from_env(settings.ENV_SMTP_STARTTLS),
        email_from=_from_env(settings.ENV_ALERT_EMAIL_FROM),
        email_to=_from_env(settings.ENV_ALERT_EMAIL_TO),
        ui_base_url=_from_env(settings.ENV_UI_BASE_URL),
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
        from integrity.defs.reconciliation.checks import reconciliation_checks

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


def _alerted_jobs() -> list[Any]:
    jobs: Iterable[Any] = [reconcile_job, *remediation_jobs, *processing_jobs]
    names = {reconcile_job.name, *(j.name for j in remediation_jobs), PROCESS_JOB}
    return [job for job in jobs if job.name in names]


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
    monitored_jobs=_alerted_jobs(),
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
