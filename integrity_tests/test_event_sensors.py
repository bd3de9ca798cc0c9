"""The event sensors against moto's S3 and SQS server over HTTP, SQLite and a test instance.

Each tick is evaluated as the daemon would (`build_sensor_context` with real resources), and
the next tick gets the cursor the last one returned.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from integrity import schema, settings
from integrity.defs.names import PROCESS_JOB
from integrity.defs.processing.jobs import process_run_config
from integrity.defs.processing.sensors import (
    NEW_OBJECT_SENSOR,
    NOTIFICATION_SENSOR,
    REQUEUE_SENSOR,
    bucket_notification_sensor,
    new_object_sensor,
    requeue_sensor,
)
from integrity.defs.resources import (
    DatabaseResource,
    QueueResource,
    SpecResource,
    StorageResource,
)
from integrity.events.messages import run_key
from integrity.remediation import ledger
from integrity.remediation.queue import QueueEntry, SqsQueue, TableQueue
from integrity.schema import create_reference_schema
from integrity_tests.test_events import r2_message, s3_message

EVENT_ENV = [
    name
    for name in dir(settings)
    if name.startswith(("ENV_WATCH_", "ENV_EVENTS_")) or name == "ENV_QUEUE_URL"
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in EVENT_ENV:
        monkeypatch.delenv(getattr(settings, name), raising=False)
    monkeypatch.setenv(settings.ENV_EVENTS_WAIT_SECONDS, "0")


@pytest.fixture(scope="module")
def instance() -> Iterator[dg.DagsterInstance]:
    """One instance for the module: these ticks launch no runs, so nothing leaks between tests."""
    with dg.instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'app.sqlite'}"
    engine = sa.create_engine(url)
    create_reference_schema(engine)
    engine.dispose()
    return url


@pytest.fixture
def resources(moto_endpoint: str, bucket: str, db_url: str) -> dict[str, Any]:
    return {
        "storage": StorageResource(
            bucket=bucket, endpoint_url=moto_endpoint, region_name="us-east-1", max_attempts=1
        ),
        "database": DatabaseResource(url=db_url),
        "spec": SpecResource(),
        "queue": QueueResource(endpoint_url=moto_endpoint, region="us-east-1"),
    }


def tick(
    sensor: dg.SensorDefinition,
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    cursor: str | None = None,
) -> dg.SensorResult | dg.SkipReason:
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, resources=resources, sensor_name=sensor.name
    ) as context:
        return sensor(context)


def run_keys(result: dg.SensorResult | dg.SkipReason) -> list[str]:
    if isinstance(result, dg.SkipReason):
        return []
    return [r.run_key for r in result.run_requests or []]


def keys_requested(result: dg.SensorResult | dg.SkipReason) -> list[str]:
    if isinstance(result, dg.SkipReason):
        return []
    return [r.run_config["ops"]["process_object"]["config"]["key"] for r in result.run_requests]


def skip_text(result: dg.SensorResult | dg.SkipReason) -> str:
    reason = result if isinstance(result, dg.SkipReason) else result.skip_reason
    return reason.skip_message if reason else ""


def etag(s3_client, bucket: str, key: str) -> str:
    return s3_client.head_object(Bucket=bucket, Key=key)["ETag"]


def next_second() -> None:
    """S3 stamps LastModified to the second: step into a later second than anything written."""
    time.sleep(1.05 - (time.time() % 1) + 0.05)


# --------------------------------------------------------------------------- defaults


def test_defaults_and_what_to_set(instance, resources, monkeypatch) -> None:
    from integrity.definitions import defs

    repo = defs.get_repository_def()
    for name in (NEW_OBJECT_SENSOR, NOTIFICATION_SENSOR, REQUEUE_SENSOR):
        sensor = repo.get_sensor_def(name)
        assert sensor.job_name == PROCESS_JOB
        assert sensor.minimum_interval_seconds == 30
    # the test environment sets neither INTEGRITY_WATCH_PREFIXES nor the notification queue
    assert repo.get_sensor_def(REQUEUE_SENSOR).default_status == dg.DefaultSensorStatus.RUNNING
    assert new_object_sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert bucket_notification_sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert "set INTEGRITY_EVENTS_QUEUE_URL" in skip_text(
        tick(bucket_notification_sensor, instance, resources)
    )
    monkeypatch.setenv(settings.ENV_WATCH_PAGES, "lots")
    assert skip_text(tick(new_object_sensor, instance, resources)) == (
        "INTEGRITY_WATCH_PAGES: 'lots' is not a whole number"
    )


# --------------------------------------------------------------------------- new objects


def test_new_object_sensor_continues_a_large_prefix_across_ticks(
    instance, resources, s3_client, bucket, monkeypatch
) -> None:
    keys = [f"documents/org-1/plan-{i}.pdf" for i in range(7)] + ["images/x.jpg"]
    for key in keys:
        s3_client.put_object(Bucket=bucket, Key=key, Body=key.encode())
    monkeypatch.setenv(settings.ENV_WATCH_PAGE_SIZE, "2")
    monkeypatch.setenv(settings.ENV_WATCH_SECONDS, "0.001")  # one page, then time is up
    cursor, requested, ticks = None, [], 0
    while ticks < 10:
        ticks += 1
        result = tick(new_object_sensor, instance, resources, cursor)
        assert isinstance(result, dg.SensorResult)
        cursor = result.cursor
        requested += result.run_requests
        if json.loads(cursor)["prefixes"]["documents/"]["since"]:
            break
    assert ticks == 4  # 7 keys under documents/, 2 a page, one page a tick
    assert [r.run_config for r in requested] == [
        process_run_config(k, NEW_OBJECT_SENSOR) for k in keys[:7]
    ]
    assert [r.run_key for r in requested] == [
        run_key(k, etag(s3_client, bucket, k)) for k in keys[:7]
    ]
    assert all(r.job_name == PROCESS_JOB for r in requested)
    progress = json.loads(cursor)["prefixes"]["documents/"]
    assert progress["since"] and progress["after"] is None  # the pass ended on the last page


def test_new_object_sensor_finds_new_objects_and_reuploads_only(
    instance, resources, s3_client, bucket, monkeypatch, db_url
) -> None:
    monkeypatch.setenv(settings.ENV_WATCH_LOOKBACK, "0")
    old = ["documents/org-1/a.pdf", "documents/org-1/b.pdf", "documents/org-1/done.pdf"]
    for key in old:
        s3_client.put_object(Bucket=bucket, Key=key, Body=b"v1")
    s3_client.put_object(Bucket=bucket, Key="documents/org-1/busy.pdf", Body=b"v1")
    engine = sa.create_engine(db_url)
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    with engine.begin() as conn:  # the database knows two of them already
        conn.execute(
            schema.documents.insert().values(
                id="d1",
                organization_id="org-1",
                r2_key="documents/org-1/done.pdf",
                status="complete",
                created_at=now,
                updated_at=now,
            )
        )
        conn.execute(
            schema.processing_jobs.insert().values(
                object_key="documents/org-1/busy.pdf", status="processing", updated_at=now
            )
        )
    engine.dispose()
    next_second()

    first = tick(new_object_sensor, instance, resources)
    assert keys_requested(first) == ["documents/org-1/a.pdf", "documents/org-1/b.pdf"]
    second = tick(new_object_sensor, instance, resources, first.cursor)
    assert keys_requested(second) == []  # nothing new since the first pass began
    assert "pass complete for documents/" in skip_text(second)

    s3_client.put_object(Bucket=bucket, Key="documents/org-1/0-new.pdf", Body=b"v1")
    s3_client.put_object(Bucket=bucket, Key="documents/org-1/a.pdf", Body=b"v2 content")
    next_second()
    third = tick(new_object_sensor, instance, resources, second.cursor)
    assert keys_requested(third) == ["documents/org-1/0-new.pdf", "documents/org-1/a.pdf"]
    reupload = run_keys(third)[1]
    assert reupload == run_key("documents/org-1/a.pdf", etag(s3_client, bucket, old[0]))
    assert reupload != run_keys(first)[0]  # new content: a new run key, so a new run
    fourth = tick(new_object_sensor, instance, resources, third.cursor)
    assert run_keys(fourth) == []


# --------------------------------------------------------------------------- notifications


@pytest.fixture
def dlq_url(sqs_client) -> str:
    return sqs_client.create_queue(QueueName=f"integrity-dlq-{uuid.uuid4().hex[:8]}")["QueueUrl"]


def send(sqs_client, queue_url: str, *bodies: str) -> None:
    for body in bodies:
        sqs_client.send_message(QueueUrl=queue_url, MessageBody=body)


def queue_counts(sqs_client, queue_url: str) -> tuple[int, int]:
    """(visible, in flight) messages."""
    attributes = sqs_client.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (
        int(attributes["ApproximateNumberOfMessages"]),
        int(attributes["ApproximateNumberOfMessagesNotVisible"]),
    )


def test_notifications_are_requested_filtered_dead_lettered_and_deleted_after_record(
    instance, resources, bucket, sqs_client, sqs_queue_url, dlq_url, monkeypatch
) -> None:
    monkeypatch.setenv(settings.ENV_EVENTS_QUEUE_URL, sqs_queue_url)
    monkeypatch.setenv(settings.ENV_EVENTS_DLQ_URL, dlq_url)
    monkeypatch.setenv(settings.ENV_EVENTS_PREFIXES, "documents/")
    monkeypatch.setenv(settings.ENV_EVENTS_SUFFIXES, ".pdf")
    send(
        sqs_client,
        sqs_queue_url,
        s3_message(("ObjectCreated:Put", "documents/org-1/site+plan.pdf", "e1"), bucket=bucket),
        r2_message("documents/org-1/r2 plan.pdf", bucket=bucket),
        # the same object and version again, in the other format: one run
        r2_message("documents/org-1/site plan.pdf", bucket=bucket).replace(
            "c846ff7a18f28c2e262116d6e8719ef0", "e1"
        ),
        s3_message(("ObjectCreated:Put", "documents/org-1/notes.txt", "e2"), bucket=bucket),
        s3_message(("ObjectCreated:Put", "documents/org-1/x.pdf", "e3"), bucket="elsewhere"),
        s3_message(("ObjectRemoved:Delete", "documents/org-1/y.pdf", ""), bucket=bucket),
        json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": bucket}),
        "this is not json",
        r2_message("", bucket=bucket),
    )
    first = tick(bucket_notification_sensor, instance, resources)
    assert isinstance(first, dg.SensorResult)
    assert sorted(keys_requested(first)) == [
        "documents/org-1/r2 plan.pdf",
        "documents/org-1/site plan.pdf",
    ]
    assert sorted(run_keys(first)) == [
        "documents/org-1/r2 plan.pdf@c846ff7a18f28c2e262116d6e8719ef0",
        "documents/org-1/site plan.pdf@e1",
    ]
    assert all(
        r.run_config["ops"]["process_object"]["config"]["source"] == NOTIFICATION_SENSOR
        for r in first.run_requests
    )
    # the three messages that requested runs wait for the next tick; the rest are gone
    assert queue_counts(sqs_client, sqs_queue_url) == (0, 3)
    assert len(json.loads(first.cursor)["delete"]) == 3

    dead = sqs_client.receive_message(
        QueueUrl=dlq_url, MaxNumberOfMessages=10, MessageAttributeNames=["All"]
    )["Messages"]
    reasons = {m["Body"]: m["MessageAttributes"]["integrity.reason"]["StringValue"] for m in dead}
    assert reasons["this is not json"] == "not JSON (Expecting value at character 0)"
    assert [r for b, r in reasons.items() if b != "this is not json"] == ["the object key is empty"]

    second = tick(bucket_notification_sensor, instance, resources, first.cursor)
    assert run_keys(second) == []
    assert "3 messages of the last tick deleted" in skip_text(second)
    assert queue_counts(sqs_client, sqs_queue_url) == (0, 0)
    assert json.loads(second.cursor)["delete"] == []


def test_without_a_dead_letter_queue_a_malformed_message_stays(
    instance, resources, sqs_client, sqs_queue_url, monkeypatch
) -> None:
    monkeypatch.setenv(settings.ENV_EVENTS_QUEUE_URL, sqs_queue_url)
    send(sqs_client, sqs_queue_url, '{"Records": "nope"}')
    first = tick(bucket_notification_sensor, instance, resources)
    assert "1 malformed left on the queue" in skip_text(first)
    second = tick(bucket_notification_sensor, instance, resources, first.cursor)
    assert run_keys(second) == []
    assert queue_counts(sqs_client, sqs_queue_url) == (0, 1)  # in flight, never deleted


def test_a_redelivered_notification_collapses_on_its_run_key(
    instance, resources, bucket, sqs_client, sqs_queue_url, monkeypatch
) -> None:
    monkeypatch.setenv(settings.ENV_EVENTS_QUEUE_URL, sqs_queue_url)
    send(sqs_client, sqs_queue_url, r2_message("documents/o/a.pdf", bucket=bucket))
    first = tick(bucket_notification_sensor, instance, resources)
    # the visibility timeout runs out before the next tick (a stalled daemon): it comes back
    [handle] = json.loads(first.cursor)["delete"]
    sqs_client.change_message_visibility(
        QueueUrl=sqs_queue_url, ReceiptHandle=handle, VisibilityTimeout=0
    )
    keys = set(run_keys(first))
    cursor = first.cursor
    for _ in range(3):
        result = tick(bucket_notification_sensor, instance, resources, cursor)
        keys |= set(run_keys(result))
        cursor = result.cursor
    assert keys == {"documents/o/a.pdf@c846ff7a18f28c2e262116d6e8719ef0"}
    assert queue_counts(sqs_client, sqs_queue_url) == (0, 0)


def test_a_crash_before_the_cursor_is_saved_loses_nothing(
    instance, resources, bucket, sqs_client, sqs_queue_url, monkeypatch
) -> None:
    """A tick whose result was never recorded deletes nothing: the messages come back."""
    monkeypatch.setenv(settings.ENV_EVENTS_QUEUE_URL, sqs_queue_url)
    send(sqs_client, sqs_queue_url, r2_message("documents/o/a.pdf", bucket=bucket))
    lost = tick(bucket_notification_sensor, instance, resources)
    assert run_keys(lost)
    for handle in json.loads(lost.cursor)["delete"]:  # as when the visibility timeout ends
        sqs_client.change_message_visibility(
            QueueUrl=sqs_queue_url, ReceiptHandle=handle, VisibilityTimeout=0
        )
    again = tick(bucket_notification_sensor, instance, resources, None)
    assert run_keys(again) == run_keys(lost)


# --------------------------------------------------------------------------- re-queue


def add_entries(db_url: str, bucket: str, queue, keys: list[str]) -> None:
    engine = sa.create_engine(db_url)
    ledger.create_ledger(engine)
    with engine.begin() as conn:
        queue.add(
            conn,
            [QueueEntry(k, "orphan_object") for k in keys],
            bucket=bucket,
            run_id="r1",
            now=datetime.now(timezone.utc),
        )
    queue.flush(engine)
    engine.dispose()


def queue_states(db_url: str) -> dict[str, str]:
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(ledger.queue.c.object_key, ledger.queue.c.state)).all()
    engine.dispose()
    return dict(rows)


def test_requeue_sensor_marks_entries_taken_only_after_the_next_tick(
    instance, resources, bucket, db_url
) -> None:
    keys = ["documents/o/a.pdf", "documents/o/b.pdf"]
    add_entries(db_url, bucket, TableQueue(), keys)
    add_entries(db_url, "another-bucket", TableQueue(), ["documents/o/elsewhere.pdf"])
    first = tick(requeue_sensor, instance, resources)
    assert keys_requested(first) == keys
    assert run_keys(first) == ["integrity_queue:1", "integrity_queue:2"]
    assert {
        r.run_config["ops"]["process_object"]["config"]["source"] for r in first.run_requests
    } == {"requeue"}
    assert set(queue_states(db_url).values()) == {"pending"}  # not yet recorded
    # a tick whose cursor was lost re-emits the same run keys, which collapse
    assert run_keys(tick(requeue_sensor, instance, resources)) == run_keys(first)
    second = tick(requeue_sensor, instance, resources, first.cursor)
    assert run_keys(second) == []
    assert "2 entries of the last tick marked taken" in skip_text(second)
    assert queue_states(db_url) == {
        "documents/o/a.pdf": "taken",
        "documents/o/b.pdf": "taken",
        "documents/o/elsewhere.pdf": "pending",  # another deployment's bucket
    }


def test_requeue_sensor_drains_the_sqs_outbox_two_phase(
    instance, resources, bucket, db_url, sqs_client, sqs_queue_url, moto_endpoint
) -> None:
    add_entries(db_url, bucket, SqsQueue(sqs_client, sqs_queue_url), ["documents/o/a.pdf"])
    assert queue_states(db_url) == {"documents/o/a.pdf": "sent"}
    resources["queue"] = QueueResource(
        queue_url=sqs_queue_url, endpoint_url=moto_endpoint, region="us-east-1"
    )
    first = tick(requeue_sensor, instance, resources)
    assert keys_requested(first) == ["documents/o/a.pdf"]
    assert run_keys(first)[0].startswith("integrity_queue:sqs:")
    assert queue_counts(sqs_client, sqs_queue_url) == (0, 1)
    second = tick(requeue_sensor, instance, resources, first.cursor)
    assert run_keys(second) == []
    assert queue_counts(sqs_client, sqs_queue_url) == (0, 0)
    assert queue_states(db_url) == {"documents/o/a.pdf": "taken"}


def test_a_tick_receives_a_bounded_number_of_messages(
    instance, resources, bucket, sqs_client, sqs_queue_url, monkeypatch
) -> None:
    monkeypatch.setenv(settings.ENV_EVENTS_QUEUE_URL, sqs_queue_url)
    monkeypatch.setenv(settings.ENV_EVENTS_RECEIVES, "1")  # one receive of up to 10 a tick
    sqs_client.send_message_batch(
        QueueUrl=sqs_queue_url,
        Entries=[
            {"Id": str(i), "MessageBody": r2_message(f"documents/o/{i}.pdf", bucket=bucket)}
            for i in range(10)
        ],
    )
    send(
        sqs_client,
        sqs_queue_url,
        *(r2_message(f"documents/o/x{i}.pdf", bucket=bucket) for i in range(5)),
    )
    first = tick(bucket_notification_sensor, instance, resources)
    second = tick(bucket_notification_sensor, instance, resources, first.cursor)
    third = tick(bucket_notification_sensor, instance, resources, second.cursor)
    assert [len(run_keys(r)) for r in (first, second, third)] == [10, 5, 0]
    assert len(set(run_keys(first)) | set(run_keys(second))) == 15
    assert queue_counts(sqs_client, sqs_queue_url) == (0, 0)
