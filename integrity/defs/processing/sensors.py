"""Event-driven triggers of `process_document`: new objects, bucket notifications, re-queue.

The nightly reconciliation is the safety net; these sensors are the everyday path. Each is a
thin shell over the `integrity.events` package: bounded work per tick, a JSON cursor, run keys built from
stable values, and at-least-once hand-over. A queue message (or a re-queue row) is deleted
(marked taken) only on the tick after the one that requested its run, because by then Dagster
has recorded that tick's run requests together with its cursor.

They live with the job they trigger: each targets `process_document` and builds its run config
with that job's `process_run_config`, and nothing else in the Dagster layer uses them.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timezone

import dagster as dg
import sqlalchemy as sa
from dagster import SensorEvaluationContext

from integrity import settings
from integrity.defs.intervals import sensor_interval
from integrity.defs.names import PROCESS_JOB, TRIGGER_TAG
from integrity.defs.processing.jobs import process_run_config
from integrity.defs.resources import (
    DatabaseResource,
    QueueResource,
    SpecResource,
    StorageResource,
)
from integrity.errors import IntegrityError, QueueError
from integrity.events.cursors import InboxCursor, WatchCursor
from integrity.events.filters import IGNORED_REASONS, KeyFilter, admit, unique_by_run_key
from integrity.events.messages import ObjectEvent, parse_requeue_message
from integrity.events.poll import PollResult, known_upload_keys, poll_new_objects
from integrity.events.settings import EventSettings, event_settings_from
from integrity.events.sqs import DeleteOutcome, SqsInbox
from integrity.inventory import db_error_reason, minimal_prefixes
from integrity.remediation.queue import mark_taken, peek_pending
from integrity.settings import Settings

NEW_OBJECT_SENSOR = "new_object_sensor"
NOTIFICATION_SENSOR = "bucket_notification_sensor"
REQUEUE_SENSOR = "requeue_sensor"
REQUEUE_SOURCE = "requeue"
INTERVAL_SECONDS = 30
REQUEUE_BATCH = 100

_IGNORED_WORDS = {
    "test_event": "test events",
    "other_bucket": "of another bucket",
    "filtered": "filtered out",
    "not_created": "not object-created",
}


def _status_when_set(value: str | None) -> dg.DefaultSensorStatus:
    """Running by default only where the environment configures the sensor."""
    return dg.DefaultSensorStatus.RUNNING if value else dg.DefaultSensorStatus.STOPPED


def _request(key: str, run_key: str, source: str) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=run_key,
        job_name=PROCESS_JOB,
        run_config=process_run_config(key, source),
        tags={TRIGGER_TAG: source},
    )


def _result(requests: list[dg.RunRequest], cursor: str, skip: str) -> dg.SensorResult:
    if requests:
        return dg.SensorResult(run_requests=requests, cursor=cursor)
    return dg.SensorResult(skip_reason=dg.SkipReason(skip), cursor=cursor)


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{counter[k]} {_IGNORED_WORDS[k]}" for k in IGNORED_REASONS if counter[k])


# --------------------------------------------------------------------------- new objects


def _poll_line(result: PollResult) -> str:
    parts = [
        f"listed {result.listed} objects in {result.pages} pages",
        f"{len(result.found)} new",
    ]
    if result.known:
        parts.append(f"{result.known} already known to the database")
    if result.completed:
        parts.append(f"pass complete for {', '.join(result.completed)}")
    for prefix, progress in result.in_progress.items():
        if progress.after:
            parts.append(f"{prefix} continues after {progress.after!r} (page {progress.pages})")
    if result.stopped_by:
        parts.append(f"stopped by the {result.stopped_by}")
    return "; ".join(parts)


@dg.sensor(
    name=NEW_OBJECT_SENSOR,
    job_name=PROCESS_JOB,
    minimum_interval_seconds=sensor_interval(INTERVAL_SECONDS),
    default_status=_status_when_set(Settings.from_env().watch_prefixes),
)
def new_object_sensor(
    context: SensorEvaluationContext,
    storage: StorageResource,
    database: DatabaseResource,
    spec: SpecResource,
) -> dg.SensorResult | dg.SkipReason:
    """Poll the watched prefixes and process objects not seen before (key and etag).

    Each tick continues a key-ordered pass over each prefix within a page and time budget. The
    first pass asks the database (one query per page) and skips what it knows; later passes
    request objects modified since the previous pass began.
    """
    try:
        conf = event_settings_from(os.environ)
        loaded = spec.load()
        store = storage.get_store()
    except IntegrityError as exc:
        return dg.SkipReason(str(exc))
    prefixes = conf.prefixes_or(loaded)
    if not prefixes:
        return dg.SkipReason(
            f"nothing to watch: set {settings.ENV_WATCH_PREFIXES} (the spec has no uploads prefix)"
        )
    if hasattr(store, "page_size"):
        store.page_size = conf.page_size  # type: ignore[union-attr]
    cursor = WatchCursor.load(context.cursor)
    first_pass = any(
        p not in cursor.prefixes or cursor.prefixes[p].since is None
        for p in minimal_prefixes(prefixes)
    )
    now = datetime.now(timezone.utc)
    try:
        if first_pass:
            with database.engine() as engine, engine.connect() as conn:
                result = poll_new_objects(
                    store,
                    prefixes,
                    cursor,
                    conf.watch,
                    now=now,
                    known_keys=lambda keys: known_upload_keys(conn, loaded, keys),
                )
        else:
            result = poll_new_objects(store, prefixes, cursor, conf.watch, now=now)
    except IntegrityError as exc:
        return dg.SkipReason(str(exc))
    except sa.exc.SQLAlchemyError as exc:
        return dg.SkipReason(
            f"cannot read {database.description} for the first pass: {db_error_reason(exc)}"
        )
    line = _poll_line(result)
    if result.error:
        context.log.warning(f"{result.error}; the next tick retries from the same place")
    context.log.info(line)
    requests = [_request(o.key, o.run_key, NEW_OBJECT_SENSOR) for o in result.found]
    return _result(requests, result.cursor.dump(), line)


# --------------------------------------------------------------------------- notifications


def _drain(context: SensorEvaluationContext, inbox: SqsInbox, owed: list[str]) -> DeleteOutcome:
    """Delete what the previous tick's recorded requests covered (handles to retry come back)."""
    if not owed:
        return DeleteOutcome()
    outcome = inbox.delete(owed)
    if outcome.gone:
        context.log.info(
            f"{outcome.gone} messages of the last tick could not be deleted (their receipt "
            "expired): they come back and collapse on their run keys"
        )
    if outcome.retry:
        context.log.warning(
            f"deleting {len(outcome.retry)} messages from {inbox.name} failed "
            f"({', '.join(sorted(set(outcome.errors)))}); retried next tick"
        )
    return outcome


@dg.sensor(
    name=NOTIFICATION_SENSOR,
    job_name=PROCESS_JOB,
    minimum_interval_seconds=sensor_interval(INTERVAL_SECONDS),
    default_status=_status_when_set(Settings.from_env().events_queue_url),
)
def bucket_notification_sensor(
    context: SensorEvaluationContext,
    storage: StorageResource,
    queue: QueueResource,
) -> dg.SensorResult | dg.SkipReason:
    """Process objects named by the bucket's object-created notifications (S3 or R2 format).

    Malformed messages go to the dead-letter queue with the reason; messages of another bucket,
    filtered out or not about a new object are deleted and counted. A message that requested a
    run is deleted on the next tick, once the request is recorded (at least once; run keys per
    key and etag collapse duplicates and redeliveries).
    """
    try:
        conf = event_settings_from(os.environ)
    except IntegrityError as exc:
        return dg.SkipReason(str(exc))
    if not conf.events_queue_url:
        return dg.SkipReason(
            f"no notification queue: set {settings.ENV_EVENTS_QUEUE_URL} to the SQS queue the "
            "bucket's object-created notifications go to"
        )
    if not storage.bucket:
        return dg.SkipReason(
            f"bucket notifications need a bucket: set {settings.ENV_BUCKET} to the bucket they "
            "come from"
        )
    try:
        client = queue.sqs_client(conf.events_queue_url)
    except QueueError as exc:
        return dg.SkipReason(str(exc))
    inbox = SqsInbox(client, conf.events_queue_url, visibility_timeout=conf.visibility_timeout)
    dlq = SqsInbox(client, conf.events_dlq_url) if conf.events_dlq_url else None
    cursor = InboxCursor.load(context.cursor)
    drained = _drain(context, inbox, cursor.delete)
    owed = drained.retry
    try:
        messages = inbox.receive(
            batches=conf.receives,
            deadline=time.monotonic() + conf.tick_seconds,
            wait_seconds=conf.wait_seconds,
        )
    except QueueError as exc:
        context.log.warning(str(exc))
        return dg.SensorResult(skip_reason=dg.SkipReason(str(exc)), cursor=InboxCursor(owed).dump())

    admissions = admit(messages, bucket=storage.bucket, key_filter=conf.events_filter)
    ignored: Counter[str] = Counter()
    events: list[ObjectEvent] = []
    later: list[str] = []
    now: list[str] = []
    dead_lettered = left = 0
    for admission in admissions:
        message = admission.message
        ignored.update(admission.ignored)
        deletable = True
        if admission.dead_letter:
            deletable = _dead_letter(
                context,
                dlq,
                message.message_id,
                message.body,
                admission.dead_letter,
                message.receive_count,
            )
            dead_lettered += deletable
            left += not deletable
        events.extend(admission.requests)
        if deletable:
            (later if admission.requests else now).append(message.receipt_handle)
    retry_now = inbox.delete(now).retry if now else []
    unique = unique_by_run_key(events)
    requests = [_request(e.key, e.run_key, NOTIFICATION_SENSOR) for e in unique]
    line = (
        f"{NOTIFICATION_SENSOR}: {len(messages)} messages from {inbox.name}: "
        f"{len(requests)} run requests ({len(events) - len(unique)} repeats collapsed)"
    )
    if ignored:
        line += f"; deleted without a run: {_counts(ignored)}"
    if dead_lettered:
        line += f"; {dead_lettered} malformed sent to {dlq.name if dlq else '?'}"
    if left:
        line += f"; {left} malformed left on the queue"
    if drained.deleted:
        line += f"; {drained.deleted} messages of the last tick deleted (their runs are recorded)"
    context.log.info(line)
    next_cursor = InboxCursor(delete=later + owed + retry_now).dump()
    return _result(requests, next_cursor, line)


def _dead_letter(
    context: SensorEvaluationContext,
    dlq: SqsInbox | None,
    message_id: str,
    body: str,
    reason: str,
    receive_count: int,
) -> bool:
    """Send a malformed message to the dead-letter queue; True when it may be deleted."""
    if dlq is None:
        context.log.warning(
            f"message {message_id} is malformed: {reason}; no dead-letter queue is set "
            f"({settings.ENV_EVENTS_DLQ_URL}), so it stays on the queue for its redrive policy "
            f"(received {receive_count} times)"
        )
        return False
    try:
        dlq.send(body, reason=reason, source_id=message_id)
    except QueueError as exc:
        context.log.error(
            f"message {message_id} is malformed: {reason}; {exc}, so it stays on the queue"
        )
        return False
    context.log.warning(f"message {message_id} sent to dead-letter queue {dlq.name}: {reason}")
    return True


# --------------------------------------------------------------------------- re-queue


def _requeue_requests(entries: Iterable[dict]) -> list[dg.RunRequest]:
    return [
        _request(e["object_key"], f"integrity_queue:{e['id']}", REQUEUE_SOURCE) for e in entries
    ]


@dg.sensor(
    name=REQUEUE_SENSOR,
    job_name=PROCESS_JOB,
    minimum_interval_seconds=sensor_interval(INTERVAL_SECONDS),
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def requeue_sensor(
    context: SensorEvaluationContext,
    storage: StorageResource,
    database: DatabaseResource,
    queue: QueueResource,
) -> dg.SensorResult | dg.SkipReason:
    """Process what remediation re-queued: `integrity_queue` rows and, with
    INTEGRITY_QUEUE_URL, its SQS queue.

    Entries are marked taken (messages deleted) on the tick after the one that requested
    their runs; run keys per entry make a re-emitted request collapse.
    """
    try:
        conf = event_settings_from(os.environ)
        bucket = storage.bucket or storage.get_store().bucket  # no client just for a name
    except IntegrityError as exc:
        return dg.SkipReason(str(exc))
    cursor = InboxCursor.load(context.cursor)
    try:
        with database.engine() as engine:
            taken = mark_taken(engine, cursor.taken_ids, cursor.taken_message_ids)
            entries = peek_pending(engine, bucket=bucket, limit=REQUEUE_BATCH)
    except IntegrityError as exc:
        return dg.SkipReason(str(exc))
    except sa.exc.SQLAlchemyError as exc:
        return dg.SkipReason(
            f"cannot read the re-queue in {database.description}: {db_error_reason(exc)}"
        )
    requests = _requeue_requests(entries)
    next_cursor = InboxCursor(taken_ids=[e["id"] for e in entries])
    parts = [f"{len(entries)} re-queued entries in integrity_queue"]
    if taken:
        parts.append(f"{taken} entries of the last tick marked taken")

    if queue.queue_url:
        try:
            parts += _drain_requeue_queue(
                context, queue, conf, bucket, cursor, next_cursor, requests
            )
        except QueueError as exc:
            context.log.warning(f"{exc}; the SQS re-queue waits for the next tick")
            next_cursor.delete.extend(h for h in cursor.delete if h not in next_cursor.delete)
            next_cursor.taken_message_ids = list(cursor.taken_message_ids)
    line = f"{REQUEUE_SENSOR}: " + "; ".join(parts) + f"; {len(requests)} run requests"
    context.log.info(line)
    return _result(requests, next_cursor.dump(), line)


def _drain_requeue_queue(
    context: SensorEvaluationContext,
    queue: QueueResource,
    conf: EventSettings,
    bucket: str,
    cursor: InboxCursor,
    next_cursor: InboxCursor,
    requests: list[dg.RunRequest],
) -> list[str]:
    """The SQS half of requeue_sensor: delete what the last tick requested, receive, request.

    Adds to `requests` and `next_cursor`; returns the parts of the tick's log line.
    """
    client = queue.sqs_client()
    inbox = SqsInbox(client, queue.queue_url or "", visibility_timeout=conf.visibility_timeout)
    next_cursor.delete.extend(_drain(context, inbox, cursor.delete).retry)
    messages = inbox.receive(
        batches=conf.receives,
        deadline=time.monotonic() + conf.tick_seconds,
        wait_seconds=conf.wait_seconds,
    )
    admissions = admit(messages, bucket=bucket, key_filter=KeyFilter(), parse=parse_requeue_message)
    ignored: Counter[str] = Counter()
    delete_now: list[str] = []
    left = 0
    for admission in admissions:
        message = admission.message
        ignored.update(admission.ignored)
        if admission.dead_letter:
            left += 1
            context.log.warning(
                f"re-queue message {message.message_id} is malformed: {admission.dead_letter}; "
                f"it stays on {inbox.name} for its redrive policy "
                f"(received {message.receive_count} times)"
            )
            continue
        for event in admission.requests:
            requests.append(
                _request(event.key, f"integrity_queue:sqs:{message.message_id}", REQUEUE_SOURCE)
            )
        if admission.requests:
            next_cursor.delete.append(message.receipt_handle)
            next_cursor.taken_message_ids.append(message.message_id)
        else:
            delete_now.append(message.receipt_handle)
    if delete_now:
        next_cursor.delete.extend(inbox.delete(delete_now).retry)
    parts = [f"{len(messages)} messages from {inbox.name}"]
    if ignored:
        parts.append(f"deleted without a run: {_counts(ignored)}")
    if left:
        parts.append(f"{left} malformed left on the queue")
    return parts


event_sensors: list[dg.SensorDefinition] = [
    new_object_sensor,
    bucket_notification_sensor,
    requeue_sensor,
]
