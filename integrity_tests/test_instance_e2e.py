"""End to end on a real Dagster instance: `dagster-webserver` and `dagster-daemon run` started
from workspace.yaml, driven over GraphQL the way the UI drives them.

The production instance (deploy/production/dagster.yaml, PostgreSQL storage) gets the whole
story when INTEGRITY_TEST_POSTGRES_URL is set: a world with drift in three tenants on moto's S3
server, tenants discovered by the sensor, a reconcile run and a backfill launched over GraphQL
with their check results, the schedule ticking under INTEGRITY_RECONCILE_CRON, a webhook alert
sent once and its recovery once, uploads processed through the new-object and bucket
notification sensors, remediation runs kept apart by the run queue and a re-queue processed.
The local instance (dagster.yaml, SQLite) gets a smoke test in test_local_instance_e2e.py.

The production tests are one story on one instance, in file order: each starts from what the
ones before it left. Each waits with a limit and fails with the tails of both logs and the
reasons of any failed run.

What the story waits for is chosen, not sat out: the instance's sensors tick every
SENSOR_SECONDS (INTEGRITY_SENSOR_INTERVAL_SECONDS, asserted as the UI shows it), so a wait for
"a tick after this moment" lasts seconds, not a sensor's production interval; the schedule's cron
is every minute, and its one wait for the next minute overlaps the backfills launched before it.
Each path is proven once by the daemon itself: a scheduled run, sensor runs, two backfills, an
alert once and a recovery once. Evaluations at chosen times (build_schedule_context,
build_sensor_context) are in test_schedules, test_alert_sensors and test_event_sensors.

Every test here starts real processes: the module is marked `e2e` (`pytest -m "not e2e"` is the
quick loop; CI runs everything).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote_plus

import boto3
import dagster as dg
import pytest
import sqlalchemy as sa

from integrity import schema
from integrity.defs.names import PROCESS_JOB, PROCESS_OP, REMEDIATION_TAG, TRIGGER_TAG
from integrity.defs.partitions import TENANTS as TENANTS_PARTITIONS
from integrity.demo import minimal_pdf
from integrity.inventory import ALL_TENANTS
from integrity.schema import create_reference_schema
from integrity.storage import S3Storage
from integrity_tests.conftest import POSTGRES_URL
from integrity_tests.dagster_world import EXPECTED, NO_FINDINGS, TENANTS, plant_drift
from integrity_tests.instance_harness import (
    BACKFILL_DONE,
    HOST,
    PRODUCTION_DAGSTER_YAML,
    RunningInstance,
    free_port,
    log_tails_on_failure,
    running_instance,
    scratch_database,
)

# Each wait below fails once the instance has stood still for its timeout (see
# RunningInstance.wait_for); on a loaded machine a test lasts as long as its runs take, so the
# limit per test is wider than the default.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

REPORT = "reconciliation_report"
GROUP_ASSETS = ["db_inventory", "storage_inventory", REPORT]
# Runs launched here count objects uploaded a moment ago (moto's LastModified is now).
NO_MIN_AGE = {"ops": {REPORT: {"config": {"min_age": 0}}}}
FINDINGS = {**EXPECTED, "org-2": ({**NO_FINDINGS, "orphan_object": 1}, 1, 0)}
RUN_SECONDS = 120
BACKFILL_TENANTS = ["org-1", "org-2", "proj-1"]
ASSET_BACKFILL_TENANTS = ["org-2", "proj-1"]
INVENTORY_CHECKS = ["storage_inventory_sane", "db_inventory_sane"]
FRESHNESS_CHECK = "reconciliation_fresh"
REPORTED_ONLY = {"foreign_reference", "normalization_mismatch"}
SCHEDULED_RUN_SECONDS = 150
QUEUED_RUN_SECONDS = 180
NEW_TENANT = "org-3"
NEW_UPLOAD = f"documents/{NEW_TENANT}/new-plan.pdf"
NOTIFIED_TENANT = "org-4"
NOTIFIED_UPLOAD = f"documents/{NOTIFIED_TENANT}/notified plan.pdf"
ORG2_ORPHAN = "documents/org-2/orphan.pdf"
MISSING_ORIGINAL = "documents/org-1/missing.pdf"
WEBHOOK_TOKEN = "e2e-" + uuid.uuid4().hex
# Every sensor's minimum interval on the production instance; the daemon's sensor loop itself
# runs every 5 s, so a shorter one would change nothing.
SENSOR_SECONDS = 5


# --------------------------------------------------------------------------- the world


class WebhookReceiver:
    """A JSON webhook on a loopback port: it keeps every body it is sent."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                with receiver._lock:
                    receiver.bodies.append(body)
                    receiver.paths.append(self.path)
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((HOST, free_port()), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/hooks/{WEBHOOK_TOKEN}"

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def messages(self, **fields: Any) -> list[dict[str, Any]]:
        with self._lock:
            bodies = list(self.bodies)
        return [b for b in bodies if all(b.get(k) == v for k, v in fields.items())]


@dataclass
class S3World:
    """Drift in three tenants on a moto bucket, rows in a SQLite file."""

    bucket: str
    s3: Any
    sqs: Any
    events_queue_url: str
    engine: sa.Engine
    env: dict[str, str]

    def put(self, key: str, data: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)

    def notify_created(self, key: str) -> None:
        """What S3 sends the notification queue for a new object (the key URL-encoded)."""
        record = {
            "eventName": "ObjectCreated:Put",
            "s3": {"bucket": {"name": self.bucket}, "object": {"key": quote_plus(key)}},
        }
        self.sqs.send_message(
            QueueUrl=self.events_queue_url, MessageBody=json.dumps({"Records": [record]})
        )


@pytest.fixture(scope="module")
def s3_world(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3World]:
    workdir = tmp_path_factory.mktemp("s3_world")
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    bucket = f"integrity-e2e-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    sqs = boto3.client("sqs", endpoint_url=moto_endpoint, region_name="us-east-1")
    events_queue_url = sqs.create_queue(QueueName=f"{bucket}-events")["QueueUrl"]
    db_url = f"sqlite:///{workdir / 'integrity.sqlite'}"
    engine = sa.create_engine(db_url)
    create_reference_schema(engine)
    plant_drift(S3Storage(s3, bucket), engine)
    # Same key, a real PDF: when remediation re-queues this orphan, processing it succeeds.
    s3.put_object(Bucket=bucket, Key=ORG2_ORPHAN, Body=minimal_pdf("Orphan", ["Page"]))
    env = {
        "INTEGRITY_HOME": str(workdir / "integrity_home"),
        "INTEGRITY_DB_URL": db_url,
        "INTEGRITY_BUCKET": bucket,
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
        "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
        # The new-object sensor watches one tenant that has no planted drift.
        "INTEGRITY_WATCH_PREFIXES": f"documents/{NEW_TENANT}/",
        # Bucket notifications arrive on an SQS queue (here for org-4 only: nothing watches it).
        "INTEGRITY_EVENTS_QUEUE_URL": events_queue_url,
        "INTEGRITY_ALLOW_WRITES": "1",
    }
    yield S3World(
        bucket=bucket,
        s3=s3,
        sqs=sqs,
        events_queue_url=events_queue_url,
        engine=engine,
        env=env,
    )
    engine.dispose()


# --------------------------------------------------------------------------- reading the instance


def materialized(instance: dg.DagsterInstance, run_id: str) -> set[tuple[str, str | None]]:
    """(asset, partition) for every materialization the run recorded."""
    return {
        (
            event.dagster_event.asset_key.to_user_string(),
            event.dagster_event.partition,
        )
        for event in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
    }


def check_results(instance: dg.DagsterInstance, run_id: str) -> dict[str, Any]:
    """The run's asset check evaluations by check name."""
    results = {}
    for event in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
        evaluation = event.dagster_event.event_specific_data
        results[evaluation.check_name] = evaluation
    return results


def runs(instance: dg.DagsterInstance, **tags: str) -> list[dg.DagsterRun]:
    return list(instance.get_runs(filters=dg.RunsFilter(tags=tags)))


def _remediation_config(
    tenant: str, *, dry_run: bool = True, kinds: list[str] | None = None
) -> dict[str, Any]:
    config: dict[str, Any] = {"tenant": tenant, "dry_run": dry_run}
    if kinds is not None:
        config["kinds"] = kinds
    return {"ops": {"apply_remediation": {"config": config}}}


# --------------------------------------------------------------------------- production instance


@pytest.fixture(scope="module")
def webhook() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def production(
    s3_world: S3World, webhook: WebhookReceiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningInstance]:
    """The production dagster.yaml on a scratch PostgreSQL database, the schedule every minute,
    every sensor every SENSOR_SECONDS."""
    if not POSTGRES_URL:
        pytest.skip("INTEGRITY_TEST_POSTGRES_URL is not set")
    with scratch_database() as dagster_pg_url:
        yield from _production_instance(dagster_pg_url, s3_world, webhook, tmp_path_factory)


def _production_instance(
    dagster_pg_url: str,
    s3_world: S3World,
    webhook: WebhookReceiver,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningInstance]:
    port = free_port()
    env = {
        **s3_world.env,
        "DAGSTER_POSTGRES_URL": dagster_pg_url,
        "INTEGRITY_RECONCILE_CRON": "* * * * *",
        "INTEGRITY_SENSOR_INTERVAL_SECONDS": str(SENSOR_SECONDS),
        "INTEGRITY_ALERT_WEBHOOK_URL": webhook.url,
        "INTEGRITY_UI_BASE_URL": f"http://{HOST}:{port}",
    }
    with pytest.MonkeyPatch.context() as patch:
        # The test process opens the same instance, so it resolves the same configuration.
        patch.setenv("DAGSTER_POSTGRES_URL", dagster_pg_url)
        with running_instance(
            PRODUCTION_DAGSTER_YAML, env, tmp_path_factory.mktemp("production"), port=port
        ) as running:
            yield running


@pytest.fixture(scope="module")
def instance(production: RunningInstance) -> Iterator[dg.DagsterInstance]:
    with production.instance() as opened:
        yield opened


@pytest.fixture(autouse=True)
def _log_tails_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a failed test, the instance's log tails and the reasons of its failed runs."""
    reporter = yield from log_tails_on_failure(request, ("production",))
    if reporter is not None and "instance" in request.fixturenames:
        reporter.write_line(failed_run_reasons(request.getfixturevalue("instance")))


def failed_run_reasons(instance: dg.DagsterInstance) -> str:
    """Each failed run's job, partition and failure messages: why, when a story step fails."""
    lines = []
    failed = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
    for run in failed:
        lines.append(f"failed run {run.run_id} {run.job_name} {dict(run.tags)}")
        for event in instance.all_logs(run.run_id):
            if event.dagster_event is not None and event.dagster_event.event_type in {
                dg.DagsterEventType.STEP_FAILURE,
                dg.DagsterEventType.RUN_FAILURE,
                dg.DagsterEventType.ENGINE_EVENT,
            }:
                lines.append(f"  {event.dagster_event.event_type_value}: {event.message}")
    return "\n".join(lines) or "no failed runs"


def test_instance_storage_is_postgresql(instance: dg.DagsterInstance) -> None:
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"


def test_the_daemon_runs_every_sensor_at_the_interval_the_test_set(
    production: RunningInstance,
) -> None:
    """INTEGRITY_SENSOR_INTERVAL_SECONDS reached the code location the UI and the daemon load."""
    from integrity.definitions import defs

    names = sorted(sensor.name for sensor in defs.sensors or [])
    assert len(names) == 8
    intervals = {name: production.sensor(name)["minIntervalSeconds"] for name in names}
    assert intervals == dict.fromkeys(names, SENSOR_SECONDS)


def test_tenant_discovery_sensor_adds_the_tenants(
    production: RunningInstance, instance: dg.DagsterInstance
) -> None:
    expected = {ALL_TENANTS, *TENANTS}
    found = production.wait_for(
        "tenant_discovery_sensor added the tenant partitions",
        lambda: expected <= set(instance.get_dynamic_partitions(TENANTS_PARTITIONS)),
        timeout=60,
    )
    assert found


def _assert_checks_match_the_drift(
    instance: dg.DagsterInstance, run_id: str, partition: str
) -> None:
    """Every check ran for the partition; the failing ones are exactly the planted drift."""
    counts, _objects, rows = FINDINGS[partition]
    results = check_results(instance, run_id)
    assert set(results) == {*NO_FINDINGS, *INVENTORY_CHECKS, FRESHNESS_CHECK}
    for kind, count in counts.items():
        result = results[kind]
        assert result.asset_key == dg.AssetKey(REPORT), kind
        assert result.partition == partition, kind
        assert result.metadata["count"].value == count, (partition, kind)
        assert result.passed == (count == 0), (partition, kind, result.description)
        if count:
            # Reported-only kinds warn; the others are errors at these shares.
            expected = "WARN" if kind in REPORTED_ONLY else "ERROR"
            assert result.severity.value == expected, (partition, kind)
    assert results["storage_inventory_sane"].passed
    # A tenant with files and no rows at all: the database inventory is empty.
    assert results["db_inventory_sane"].passed == (rows > 0), partition
    assert results[FRESHNESS_CHECK].passed


@pytest.fixture(scope="module")
def launched(production: RunningInstance, s3_world: S3World) -> dict[str, Any]:
    """What the early tests wait for, started together so the waits overlap: a backfill, a
    reconcile run, an upload for the new-object sensor (watching `documents/org-3/`) and one
    announced by a bucket notification."""
    backfill_id = production.launch_backfill("reconcile", BACKFILL_TENANTS, NO_MIN_AGE)
    asset_backfill_id = production.launch_asset_backfill(
        GROUP_ASSETS, ASSET_BACKFILL_TENANTS, NO_MIN_AGE
    )
    run_id = production.submit("reconcile", NO_MIN_AGE, {"dagster/partition": "org-1"})
    s3_world.put(NEW_UPLOAD, minimal_pdf("A new plan", ["Ground floor"]))
    s3_world.put(NOTIFIED_UPLOAD, minimal_pdf("A notified plan", ["First floor"]))
    s3_world.notify_created(NOTIFIED_UPLOAD)
    return {
        "backfill": backfill_id,
        "asset_backfill": asset_backfill_id,
        "run": run_id,
        "at": time.time(),
    }


def test_schedule_ticks_on_the_cron_override(
    production: RunningInstance, instance: dg.DagsterInstance, launched: dict[str, Any]
) -> None:
    """INTEGRITY_RECONCILE_CRON reached the code location; the daemon ticked it within a minute.

    First of the waits: the schedule launches a run per tenant every minute until stopped.
    """
    schedule = production.schedule("daily_reconciliation")
    assert schedule["cronSchedule"] == "* * * * *"
    assert schedule["executionTimezone"] == "UTC"

    def launched_tick() -> dict[str, Any] | None:
        ticks = production.schedule("daily_reconciliation")["scheduleState"]["ticks"]
        return next((t for t in ticks if t["status"] == "SUCCESS" and t["runIds"]), None)

    tick = production.wait_for("a schedule tick that launched runs", launched_tick, timeout=75)
    # One tick proves it; stop it as a person would, so it does not launch every minute.
    assert production.stop_schedule("daily_reconciliation") == "STOPPED"
    scheduled = [instance.get_run_by_id(run_id) for run_id in tick["runIds"]]
    # One run per tenant found at the tick (org-3 and org-4 too once their uploads landed).
    partitions = [run.tags["dagster/partition"] for run in scheduled]
    assert len(partitions) == len(set(partitions))
    assert set(TENANTS) <= set(partitions) <= {*TENANTS, NEW_TENANT, NOTIFIED_TENANT}
    assert {run.tags[TRIGGER_TAG] for run in scheduled} == {"daily_reconciliation"}
    # org-1's scheduled run is the one the alert story counts; the others' runs are the same
    # job on other partitions (the backfills prove those), so they are terminated while they
    # wait in the queue rather than run on a 2-core machine.
    [kept] = [run for run in scheduled if run.tags["dagster/partition"] == "org-1"]
    for run in scheduled:
        if run is not kept:
            production.terminate(run.run_id)
    for run in scheduled:
        status = production.wait_for_run(run.run_id, SCHEDULED_RUN_SECONDS)
        if run is not kept:
            # Terminated in the queue, or finished before the termination reached it.
            assert status in {dg.DagsterRunStatus.CANCELED, dg.DagsterRunStatus.SUCCESS}
            continue
        assert status == dg.DagsterRunStatus.SUCCESS
        assert materialized(instance, run.run_id) == {(name, "org-1") for name in GROUP_ASSETS}


def test_reconcile_launched_over_graphql(
    production: RunningInstance, instance: dg.DagsterInstance, launched: dict[str, Any]
) -> None:
    run_id = launched["run"]
    assert production.wait_for_run(run_id, RUN_SECONDS) == dg.DagsterRunStatus.SUCCESS
    assert materialized(instance, run_id) == {(name, "org-1") for name in GROUP_ASSETS}
    _assert_checks_match_the_drift(instance, run_id, "org-1")


def test_backfill_over_tenant_partitions(
    production: RunningInstance, instance: dg.DagsterInstance, launched: dict[str, Any]
) -> None:
    backfill_id = launched["backfill"]
    status = production.wait_for(
        f"backfill {backfill_id} done",
        lambda: (s := production.backfill_status(backfill_id)) in BACKFILL_DONE and s,
        timeout=180,
        interval=2,
    )
    assert status in {"COMPLETED", "COMPLETED_SUCCESS"}
    backfill_runs = runs(instance, **{"dagster/backfill": backfill_id})
    assert all(run.status == dg.DagsterRunStatus.SUCCESS for run in backfill_runs)
    by_partition = {run.tags["dagster/partition"]: run.run_id for run in backfill_runs}
    assert set(by_partition) == set(BACKFILL_TENANTS)
    for partition, run_id in by_partition.items():
        assert materialized(instance, run_id) == {(name, partition) for name in GROUP_ASSETS}
        _assert_checks_match_the_drift(instance, run_id, partition)


def test_asset_backfill_as_the_ui_launches_it(
    production: RunningInstance, instance: dg.DagsterInstance, launched: dict[str, Any]
) -> None:
    """Selecting the three assets and several tenants in the UI is an asset backfill: the
    daemon plans it, one run per partition, each with its check results."""
    backfill_id = launched["asset_backfill"]
    status = production.wait_for(
        f"asset backfill {backfill_id} done",
        lambda: (s := production.backfill_status(backfill_id)) in BACKFILL_DONE and s,
        timeout=180,
        interval=2,
    )
    assert status in {"COMPLETED", "COMPLETED_SUCCESS"}
    backfill_runs = runs(instance, **{"dagster/backfill": backfill_id})
    assert backfill_runs and all(r.status == dg.DagsterRunStatus.SUCCESS for r in backfill_runs)
    done = set().union(*(materialized(instance, r.run_id) for r in backfill_runs))
    assert done == {(name, p) for name in GROUP_ASSETS for p in ASSET_BACKFILL_TENANTS}
    for run in backfill_runs:
        _assert_checks_match_the_drift(instance, run.run_id, run.tags["dagster/partition"])


def _process_runs(instance: dg.DagsterInstance, key: str, source: str) -> list[dg.DagsterRun]:
    return [
        run
        for run in runs(instance, **{TRIGGER_TAG: source})
        if run.job_name == PROCESS_JOB and run.run_config["ops"][PROCESS_OP]["config"]["key"] == key
    ]


def _document_keys(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.select(schema.documents.c.r2_key)).scalars())


def _wait_processed(
    production: RunningInstance, instance: dg.DagsterInstance, key: str, source: str
) -> dg.DagsterRun:
    [run] = production.wait_for(
        f"a process_document run for {key} from {source}",
        lambda: _process_runs(instance, key, source),
        timeout=90,
    )
    assert production.wait_for_run(run.run_id, RUN_SECONDS) == dg.DagsterRunStatus.SUCCESS
    return run


def test_event_sensors_process_new_uploads(
    production: RunningInstance,
    instance: dg.DagsterInstance,
    s3_world: S3World,
    launched: dict[str, Any],
) -> None:
    """An upload under a watched prefix (new_object_sensor) and one announced on the
    notification queue (bucket_notification_sensor) each become a process_document run."""
    _wait_processed(production, instance, NEW_UPLOAD, "new_object_sensor")
    _wait_processed(production, instance, NOTIFIED_UPLOAD, "bucket_notification_sensor")
    assert {NEW_UPLOAD, NOTIFIED_UPLOAD} <= _document_keys(s3_world.engine)


def test_remediation_runs_one_at_a_time_and_failures_alert(
    production: RunningInstance,
    instance: dg.DagsterInstance,
    s3_world: S3World,
    webhook: WebhookReceiver,
) -> None:
    """Remediation runs (the auto-remediation sensor's dry runs after each reconciliation, and
    two submitted at once here) never run at the same time: the tag limit. The applied one
    re-queues org-2's orphan, which requeue_sensor hands to process_document; the one with no
    report fails, and run_failure_alert_sensor says so once."""
    # A fresh report that counts org-2's just-uploaded orphan (the schedule's run did not).
    reconciled = production.submit("reconcile", NO_MIN_AGE, {"dagster/partition": "org-2"})
    assert production.wait_for_run(reconciled, RUN_SECONDS) == dg.DagsterRunStatus.SUCCESS
    apply_id = production.submit(
        "remediate", _remediation_config("org-2", dry_run=False, kinds=["orphan_object"])
    )
    no_report_id = production.submit("remediate", _remediation_config(ALL_TENANTS))
    assert production.wait_for_run(apply_id, QUEUED_RUN_SECONDS) == dg.DagsterRunStatus.SUCCESS
    assert production.wait_for_run(no_report_id, RUN_SECONDS) == dg.DagsterRunStatus.FAILURE

    auto = runs(instance, **{TRIGGER_TAG: "auto_remediation_sensor"})
    assert auto, "auto_remediation_sensor launched no remediation after the reconciliations"
    assert {run.tags["integrity/auto_remediation"] for run in auto} == {"dry_run"}
    records = instance.get_run_records(filters=dg.RunsFilter(tags={REMEDIATION_TAG: "true"}))
    spans = sorted((r.start_time, r.end_time) for r in records if r.start_time and r.end_time)
    assert len(spans) >= 3
    for (_, earlier_end), (later_start, _) in zip(spans, spans[1:]):
        assert earlier_end <= later_start, "two remediation runs were in progress at once"

    _wait_processed(production, instance, ORG2_ORPHAN, "requeue")
    assert ORG2_ORPHAN in _document_keys(s3_world.engine)

    [message] = production.wait_for(
        "the run_failed alert",
        lambda: webhook.messages(event="run_failed", run_id=no_report_id),
        timeout=75,
    )
    assert message["job"] == "remediate"
    assert "no reconciliation_report snapshot for partition '__all__'" in message["error"]
    assert message["run_url"] == f"{production.url}/runs/{no_report_id}"


def test_check_alert_once_then_recovery_once(
    production: RunningInstance,
    instance: dg.DagsterInstance,
    s3_world: S3World,
    webhook: WebhookReceiver,
) -> None:
    """org-1's missing original was reconciled several times (run, backfill, schedule): one
    alert. Repaired and reconciled twice: one recovery."""
    where = {"check": "missing_original", "partition": "org-1"}
    org1_runs = instance.get_run_records(
        filters=dg.RunsFilter(job_name="reconcile", tags={"dagster/partition": "org-1"})
    )
    assert len(org1_runs) >= 3
    assert all(record.dagster_run.status == dg.DagsterRunStatus.SUCCESS for record in org1_runs)
    # The alert sensor has read every one of those failing evaluations before the repair.
    last_failing = max(record.end_time for record in org1_runs)
    production.wait_for_sensor_tick_after("check_alert_sensor", last_failing, timeout=75)
    [failed] = webhook.messages(event="check_failed", **where)
    assert failed["asset"] == REPORT
    assert failed["severity"] == "ERROR"
    assert failed["counts"]["count"] == 1
    assert any(MISSING_ORIGINAL in example for example in failed["examples"])
    assert failed["run_url"].startswith(f"{production.url}/runs/")

    s3_world.put(MISSING_ORIGINAL, minimal_pdf("Restored", ["The original, back"]))
    for _ in range(2):
        run_id = production.submit("reconcile", NO_MIN_AGE, {"dagster/partition": "org-1"})
        assert production.wait_for_run(run_id, RUN_SECONDS) == dg.DagsterRunStatus.SUCCESS
        assert check_results(instance, run_id)["missing_original"].passed
    last_run_ended = time.time()
    production.wait_for(
        "the check_recovered alert",
        lambda: webhook.messages(event="check_recovered", **where),
        timeout=75,
    )
    production.wait_for_sensor_tick_after("check_alert_sensor", last_run_ended, timeout=75)
    assert len(webhook.messages(event="check_failed", **where)) == 1
    assert len(webhook.messages(event="check_recovered", **where)) == 1


def test_discovery_adds_a_tenant_that_appears_later(
    production: RunningInstance, instance: dg.DagsterInstance
) -> None:
    """org-3 and org-4 had nothing when the instance started; their uploads made them tenants."""
    production.wait_for(
        "tenant_discovery_sensor added org-3 and org-4",
        lambda: (
            {NEW_TENANT, NOTIFIED_TENANT}
            <= set(instance.get_dynamic_partitions(TENANTS_PARTITIONS))
        ),
        timeout=75,
    )


def test_no_run_failed_but_the_planted_one(
    instance: dg.DagsterInstance, webhook: WebhookReceiver
) -> None:
    """Across everything the module launched (runs, sensors, schedule, backfill), the only
    failed run is the remediation with no report, and it is the only run_failed alert."""
    failed = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
    assert [
        (run.job_name, run.run_config["ops"]["apply_remediation"]["config"]["tenant"])
        for run in failed
    ] == [("remediate", ALL_TENANTS)]
    assert [m["run_id"] for m in webhook.messages(event="run_failed")] == [failed[0].run_id]


def test_the_webhook_url_never_reaches_logs_or_run_events(
    production: RunningInstance, instance: dg.DagsterInstance, webhook: WebhookReceiver
) -> None:
    assert webhook.bodies, "no alert was sent at all"
    assert all(path == f"/hooks/{WEBHOOK_TOKEN}" for path in webhook.paths)
    for path in [*production.log_dir.rglob("*"), *production.home.rglob("*")]:
        if path.is_file():
            assert WEBHOOK_TOKEN.encode() not in path.read_bytes(), path
    for run in instance.get_runs():
        for event in instance.all_logs(run.run_id):
            assert WEBHOOK_TOKEN not in (event.message or ""), run.job_name
