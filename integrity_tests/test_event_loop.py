"""The self-healing loop end to end: upload, notice (or miss), detect, re-queue, process.

Real parts only: a multi-page PDF made with pdfium in moto's S3 over HTTP, notifications and
the re-queue on moto's SQS, a SQLite database, and the code location's own `process_document`,
`remediate` and reconciliation assets run in-process on one test instance. `launch` does what
the daemon does with a tick's run requests: one run per run key and sensor, a key seen before
is skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from integrity import schema, settings
from integrity.defs.io_managers import ParquetSnapshotIOManager
from integrity.defs.names import PROCESS_JOB, PROCESS_OP, TRIGGER_TAG
from integrity.defs.partitions import TENANTS
from integrity.defs.processing.sensors import (
    NEW_OBJECT_SENSOR,
    NOTIFICATION_SENSOR,
    REQUEUE_SENSOR,
    bucket_notification_sensor,
    new_object_sensor,
    requeue_sensor,
)
from integrity.defs.reconciliation.assets import reconciliation_assets
from integrity.defs.resources import (
    DatabaseResource,
    QueueResource,
    SpecResource,
    StorageResource,
)
from integrity.diff import ReconciliationReport
from integrity.inventory import ALL_TENANTS
from integrity.processing import expected_tiles, parse_dzi
from integrity.processing.state import plan_id_for
from integrity.remediation import ledger
from integrity.schema import create_reference_schema
from integrity.storage import S3Storage
from integrity_tests.pdfs import make_pdf
from integrity_tests.test_events import r2_message, s3_message

# Whole event loops (sensors, runs, the nightly reconciliation) in one test each: slow.
pytestmark = pytest.mark.e2e

ORG = "org-1"
PAGES = [(300.0, 200.0), (200.0, 300.0), (150.0, 100.0)]  # points; 150 dpi: 625x417 px, ...
# Dagster's own tags for a sensor's runs (what the daemon matches run keys on).
RUN_KEY_TAG = "dagster/run_key"
SENSOR_NAME_TAG = "dagster/sensor_name"


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    from integrity.definitions import defs as loaded

    return loaded


@pytest.fixture(scope="module")
def pdf() -> bytes:
    return make_pdf(PAGES)


@pytest.fixture(autouse=True)
def event_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in dir(settings):
        if name.startswith(("ENV_WATCH_", "ENV_EVENTS_")) or name == "ENV_QUEUE_URL":
            monkeypatch.delenv(getattr(settings, name), raising=False)
    monkeypatch.setenv(settings.ENV_EVENTS_WAIT_SECONDS, "0")


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        test_instance.add_dynamic_partitions(TENANTS, [ALL_TENANTS, ORG])
        yield test_instance


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.sqlite'}")
    create_reference_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def resources(tmp_path: Path, moto_endpoint: str, bucket: str, engine: sa.Engine) -> dict[str, Any]:
    return {
        "storage": StorageResource(
            bucket=bucket, endpoint_url=moto_endpoint, region_name="us-east-1"
        ),
        "database": DatabaseResource(url=engine.url.render_as_string(hide_password=False)),
        "spec": SpecResource(),
        "queue": QueueResource(endpoint_url=moto_endpoint, region="us-east-1"),
        "snapshot_io_manager": ParquetSnapshotIOManager(base_dir=str(tmp_path / "snapshots")),
    }


def tick(
    sensor: dg.SensorDefinition,
    instance: dg.DagsterInstance,
    resources: dict[str, Any],
    cursor: str | None = None,
) -> dg.SensorResult | dg.SkipReason:
    sensor_resources = {k: resources[k] for k in ("storage", "database", "spec", "queue")}
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, resources=sensor_resources, sensor_name=sensor.name
    ) as context:
        return sensor(context)


def requests_of(result: dg.SensorResult | dg.SkipReason) -> list[dg.RunRequest]:
    return [] if isinstance(result, dg.SkipReason) else list(result.run_requests or [])


def launch(
    defs: dg.Definitions,
    sensor_name: str,
    result: dg.SensorResult | dg.SkipReason,
    resources: dict[str, Any],
    instance: dg.DagsterInstance,
) -> list[dg.ExecuteInProcessResult]:
    """Run each requested `process_document` whose run key this sensor has not used yet."""
    job = defs.resolve_job_def(PROCESS_JOB)
    runs = []
    for request in requests_of(result):
        assert request.job_name == PROCESS_JOB
        tags = {RUN_KEY_TAG: request.run_key, SENSOR_NAME_TAG: sensor_name}
        if instance.get_runs(filters=dg.RunsFilter(tags=tags)):
            continue  # the daemon skips a run key it has launched before
        runs.append(
            job.execute_in_process(
                run_config=request.run_config,
                instance=instance,
                resources={k: resources[k] for k in ("storage", "database", "spec")},
                tags={**request.tags, **tags},
                raise_on_error=False,
            )
        )
    return runs


def outcome(run: dg.ExecuteInProcessResult) -> str:
    assert run.success, run.get_step_failure_events()
    for event in run.all_node_events:
        if event.event_type_value == "STEP_OUTPUT":
            return event.step_output_data.metadata["outcome"].value
    raise AssertionError("no output")


def rows(engine: sa.Engine, table: sa.Table) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(table))]


def listing(store: S3Storage, prefix: str = "") -> dict[str, str]:
    return {k: e for page in store.list_pages(prefix) for k, e in zip(page.keys, page.etags)}


def assert_processed(key: str, store: S3Storage, engine: sa.Engine) -> int:
    """The documents row, the plan's progress and every sheet's complete pyramid; tiles made."""
    [document] = [d for d in rows(engine, schema.documents) if d["r2_key"] == key]
    assert document["status"] == "complete"
    [plan] = rows(engine, schema.plans)
    assert (plan["completed_pages"], plan["total_pages"], plan["status"]) == (
        len(PAGES),
        len(PAGES),
        "complete",
    )
    prefix = f"organizations/{ORG}/projects/{plan['project_id']}/plans/{plan_id_for(key)}/sheets/"
    objects = listing(store, prefix)
    descriptors = [k for k in objects if k.endswith(".dzi")]
    assert len(descriptors) == len(PAGES)
    tiles = 0
    for descriptor in descriptors:
        geometry = parse_dzi(store.get_bytes(descriptor))
        base = descriptor.removesuffix(".dzi") + "_files/"
        made = [k for k in objects if k.startswith(base)]
        assert len(made) == sum(expected_tiles(geometry).values()) and made
        tiles += len(made)
    return tiles


def reconcile(resources: dict[str, Any], instance: dg.DagsterInstance) -> ReconciliationReport:
    """Materialise the reconciliation assets for the tenant, fresh uploads included."""
    result = dg.materialize(
        reconciliation_assets,
        resources={k: v for k, v in resources.items() if k != "queue"},
        partition_key=ORG,
        instance=instance,
        run_config={"ops": {"reconciliation_report": {"config": {"min_age": 0}}}},
    )
    assert result.success
    path = result.output_for_node("reconciliation_report")
    return path if isinstance(path, ReconciliationReport) else ReconciliationReport.load(path)


def orphans(report: ReconciliationReport) -> list[str]:
    found = report.findings
    return sorted(found.loc[found["kind"] == "orphan_object", "key"])


# --------------------------------------------------------------------------- (a) noticed


def test_an_upload_is_noticed_by_the_poll_and_processed(
    defs, instance, resources, s3_client, bucket, engine, pdf
) -> None:
    key = f"documents/{ORG}/plans/tower.pdf"
    s3_client.put_object(Bucket=bucket, Key=key, Body=pdf)
    store = S3Storage(s3_client, bucket)

    first = tick(new_object_sensor, instance, resources)
    [request] = requests_of(first)
    assert request.run_config == {
        "ops": {PROCESS_OP: {"config": {"key": key, "source": NEW_OBJECT_SENSOR}}}
    }
    [run] = launch(defs, NEW_OBJECT_SENSOR, first, resources, instance)
    assert outcome(run) == "processed"
    assert run.dagster_run.tags[TRIGGER_TAG] == NEW_OBJECT_SENSOR
    assert assert_processed(key, store, engine) > len(PAGES)
    [job] = rows(engine, schema.processing_jobs)
    assert (job["object_key"], job["status"], job["attempts"]) == (key, "complete", 1)

    # the tiles the run wrote are new objects too, outside the watched prefix: nothing to do
    second = tick(new_object_sensor, instance, resources, first.cursor)
    assert launch(defs, NEW_OBJECT_SENSOR, second, resources, instance) == []


# --------------------------------------------------------------------------- (b) the loop


def test_a_lost_notification_is_healed_by_the_nightly_loop(
    defs, instance, resources, s3_client, bucket, engine, pdf, monkeypatch
) -> None:
    """Upload, notification lost, reconcile (orphan), remediate (re-queue), requeue_sensor, process.

    The re-queue is the `integrity_queue` table here; the SQS outbox's hand-over to
    requeue_sensor is covered in test_event_sensors.
    """
    key = f"documents/{ORG}/plans/annex.pdf"
    s3_client.put_object(Bucket=bucket, Key=key, Body=pdf)  # ... and its notification is lost
    store = S3Storage(s3_client, bucket)

    assert orphans(reconcile(resources, instance)) == [key]

    monkeypatch.setenv(settings.ENV_ALLOW_WRITES, "1")
    remediation = defs.resolve_job_def("remediate").execute_in_process(
        run_config={"ops": {"apply_remediation": {"config": {"dry_run": False, "tenant": ORG}}}},
        instance=instance,
        resources=resources,
        raise_on_error=False,
    )
    assert remediation.success, remediation.get_step_failure_events()
    [entry] = rows(engine, ledger.queue)
    assert (entry["object_key"], entry["backend"], entry["state"]) == (key, "table", "pending")

    first = tick(requeue_sensor, instance, resources)
    [run] = launch(defs, REQUEUE_SENSOR, first, resources, instance)
    assert run.dagster_run.run_config["ops"][PROCESS_OP]["config"] == {
        "key": key,
        "source": "requeue",
    }
    assert outcome(run) == "processed"
    assert_processed(key, store, engine)

    second = tick(requeue_sensor, instance, resources, first.cursor)
    assert requests_of(second) == []
    [entry] = rows(engine, ledger.queue)
    assert entry["state"] == "taken"
    assert orphans(reconcile(resources, instance)) == []  # the loop is closed


# --------------------------------------------------------------------------- (c) no double work


def test_duplicate_and_out_of_order_notifications_do_no_duplicate_work(
    defs, instance, resources, s3_client, bucket, engine, sqs_client, sqs_queue_url, monkeypatch
) -> None:
    monkeypatch.setenv(settings.ENV_EVENTS_QUEUE_URL, sqs_queue_url)
    key = f"documents/{ORG}/plans/lobby.pdf"
    encoded = key  # no characters S3 would encode
    s3_client.put_object(Bucket=bucket, Key=key, Body=make_pdf(PAGES, seed=1))
    old_etag = s3_client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
    s3_client.put_object(Bucket=bucket, Key=key, Body=make_pdf(PAGES, seed=2))
    new_etag = s3_client.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
    assert old_etag != new_etag
    store = S3Storage(s3_client, bucket)

    def r2(etag: str) -> str:
        body = json.loads(r2_message(key, bucket=bucket))
        body["object"]["eTag"] = etag
        return json.dumps(body)

    # the newer version's notification first, twice and in both formats; the older one late
    for body in (
        s3_message(("ObjectCreated:Put", encoded, new_etag), bucket=bucket),
        r2(new_etag),
        s3_message(("ObjectCreated:Put", encoded, new_etag), bucket=bucket),
    ):
        sqs_client.send_message(QueueUrl=sqs_queue_url, MessageBody=body)
    first = tick(bucket_notification_sensor, instance, resources)
    assert [r.run_key for r in requests_of(first)] == [f"{key}@{new_etag}"]
    [run] = launch(defs, NOTIFICATION_SENSOR, first, resources, instance)
    assert outcome(run) == "processed"
    tiles = assert_processed(key, store, engine)
    after_first = (listing(store), rows(engine, schema.documents), rows(engine, schema.plans))

    sqs_client.send_message(
        QueueUrl=sqs_queue_url,
        MessageBody=s3_message(("ObjectCreated:Put", encoded, old_etag), bucket=bucket),
    )
    sqs_client.send_message(QueueUrl=sqs_queue_url, MessageBody=r2(new_etag))  # redelivered
    second = tick(bucket_notification_sensor, instance, resources, first.cursor)
    assert sorted(r.run_key for r in requests_of(second)) == sorted(
        [f"{key}@{old_etag}", f"{key}@{new_etag}"]
    )
    runs = launch(defs, NOTIFICATION_SENSOR, second, resources, instance)
    assert len(runs) == 1  # the repeated run key collapsed; the late one runs ...
    assert outcome(runs[0]) == "already_processed"  # ... and finds nothing to do
    assert (listing(store), rows(engine, schema.documents), rows(engine, schema.plans)) == (
        after_first
    )
    # the poll agrees: the database knows the object, so its first pass requests nothing
    assert requests_of(tick(new_object_sensor, instance, resources)) == []
    [job] = rows(engine, schema.processing_jobs)
    assert (job["status"], job["attempts"]) == ("complete", 1)
    assert tiles == sum(1 for k in listing(store) if k.endswith(".jpg"))
    third = tick(bucket_notification_sensor, instance, resources, second.cursor)
    assert requests_of(third) == []
    attributes = sqs_client.get_queue_attributes(
        QueueUrl=sqs_queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    assert attributes == {
        "ApproximateNumberOfMessages": "0",
        "ApproximateNumberOfMessagesNotVisible": "0",
    }
