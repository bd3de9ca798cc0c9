"""The alert sensors on a real Dagster instance, posting to a real HTTP server on loopback.

`check_alert_sensor` is ticked with build_sensor_context after real materializations: the
reconciliation with planted drift and the project's checks (one message per failing check,
silence while unchanged, a recovery after the repair), and a small partitioned asset whose
check the test turns red and green (delivery failures, secrets, the message budget).
`run_failure_alert_sensor` is ticked the way the daemon does (evaluate_tick) after a reconcile
run that fails on a database that does not exist.
"""

# No `from __future__ import annotations`: Dagster checks the check's `context` annotation.

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster import AssetCheckExecutionContext

from integrity import schema, settings
from integrity.defs.alerts.resources import (
    ALERTS_RESOURCE,
    AlertsResource,
    alerts_resource_from_env,
)
from integrity.defs.alerts.sensors import (
    MAX_MESSAGES_PER_TICK,
    NOT_CONFIGURED,
    check_alert_sensor,
    counts_and_examples,
    run_failure_alert_sensor,
)
from integrity.defs.io_managers import ParquetSnapshotIOManager
from integrity.defs.names import RECONCILE_JOB
from integrity.defs.reconciliation.assets import reconciliation_assets
from integrity.defs.reconciliation.jobs import reconcile_job
from integrity.defs.resources import DatabaseResource, SpecResource, StorageResource
from integrity.storage import LocalStorage
from integrity_tests.dagster_world import plant_drift
from integrity_tests.test_alerts import (
    SECRET_PATH,
    MailServer,
    RecordingServer,
    free_port,
    running_smtp,
)

UI = "http://dagster.example:3000"


@pytest.fixture
def http_server() -> Iterator[RecordingServer]:
    server = RecordingServer().start()
    yield server
    server.stop()


@pytest.fixture
def smtp_server() -> Iterator[MailServer]:
    with running_smtp() as server:
        yield server


def webhook(server: RecordingServer, **fields: Any) -> AlertsResource:
    return AlertsResource(
        webhook_url=server.base_url + SECRET_PATH, ui_base_url=UI, backoff=0.01, **fields
    )


def tick(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    cursor: str | None,
    alerts: AlertsResource,
) -> dg.SensorResult | dg.SkipReason:
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, definitions=defs, resources={ALERTS_RESOURCE: alerts}
    ) as context:
        return check_alert_sensor(context)


# --------------------------------------------------------------------------- the project's checks


def project_checks() -> list[dg.AssetChecksDefinition]:
    from integrity.defs.reconciliation.checks import reconciliation_checks

    return reconciliation_checks


@pytest.fixture
def world(tmp_path: Path, sqlite_engine: sa.Engine) -> dict[str, Any]:
    root = tmp_path / "integrity-demo"
    root.mkdir()
    store = LocalStorage(root)
    plant_drift(store, sqlite_engine)
    resources = {
        "storage": StorageResource(storage_dir=str(root)),
        "database": DatabaseResource(url=sqlite_engine.url.render_as_string(hide_password=False)),
        "spec": SpecResource(),
        "snapshot_io_manager": ParquetSnapshotIOManager(base_dir=str(tmp_path / "snapshots")),
    }
    return {"store": store, "engine": sqlite_engine, "resources": resources}


def reconcile(
    world: dict[str, Any], instance: dg.DagsterInstance, partition: str
) -> dict[str, bool]:
    """Materialize the graph and its checks; each check's verdict for the partition."""
    result = dg.materialize(
        [*reconciliation_assets, *project_checks()],
        resources=world["resources"],
        partition_key=partition,
        instance=instance,
        run_config={"ops": {"reconciliation_report": {"config": {"min_age": 0}}}},
    )
    assert result.success
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


@pytest.mark.e2e
def test_planted_drift_alerts_once_per_failing_check_then_recovers(
    world: dict[str, Any], instance: dg.DagsterInstance, http_server: RecordingServer
) -> None:
    alerts = webhook(http_server)
    defs = dg.Definitions(
        assets=reconciliation_assets,
        asset_checks=project_checks(),
        sensors=[check_alert_sensor],
        resources={**world["resources"], ALERTS_RESOURCE: alerts},
    )

    verdicts = reconcile(world, instance, "proj-1")
    failing = {name for name, passed in verdicts.items() if not passed}
    # proj-1's planted drift: a missing staged copy (ERROR) and a foreign reference (WARN).
    assert {"missing_staged", "foreign_reference"} <= failing

    result = tick(defs, instance, None, alerts)
    bodies = [post.json() for post in http_server.posts]
    assert sorted(b["check"] for b in bodies) == sorted(failing)  # exactly one per failing check
    assert {b["event"] for b in bodies} == {"check_failed"}
    by_check = {b["check"]: b for b in bodies}
    staged = by_check["missing_staged"]
    assert staged["asset"] == "reconciliation_report" and staged["partition"] == "proj-1"
    assert staged["severity"] == "ERROR" and by_check["foreign_reference"]["severity"] == "WARN"
    assert staged["counts"]["count"] == 1
    assert staged["examples"] and staged["examples"][0].startswith("images/proj-1/b-staged.jpg")
    run_id = staged["run_url"].rsplit("/", 1)[1]
    assert staged["run_url"] == f"{UI}/runs/{run_id}" and instance.get_run_by_id(run_id)
    assert "missing_staged" in staged["text"] and staged["run_url"] in staged["text"]

    # Unchanged drift, reconciled again: no new message.
    reconcile(world, instance, "proj-1")
    result = tick(defs, instance, result.cursor, alerts)
    assert len(http_server.posts) == len(failing)

    # Repair: the staged copy exists and the foreign row is gone; reconcile; recoveries.
    store: LocalStorage = world["store"]
    store.put_bytes("images/proj-1/b-staged.jpg", b"x")
    old = os.stat(store.root / "images/proj-1/b.jpg").st_mtime
    os.utime(store.root / "images/proj-1/b-staged.jpg", (old, old))
    with world["engine"].begin() as conn:
        conn.execute(sa.delete(schema.images).where(schema.images.c.id == "img-foreign"))
    verdicts = reconcile(world, instance, "proj-1")
    assert verdicts["missing_staged"] and verdicts["foreign_reference"]
    recovered_now = {name for name in failing if verdicts[name]}

    result = tick(defs, instance, result.cursor, alerts)
    new = [post.json() for post in http_server.posts[len(failing) :]]
    assert sorted(b["check"] for b in new) == sorted(recovered_now)
    assert {b["event"] for b in new} == {"check_recovered"}
    assert {b["partition"] for b in new if b["check"] == "missing_staged"} == {"proj-1"}

    # And quiet again.
    result = tick(defs, instance, result.cursor, alerts)
    assert len(http_server.posts) == len(failing) + len(recovered_now)


# --------------------------------------------------------------------------- a small checked asset

TOY_PARTITIONS = dg.StaticPartitionsDefinition(["a", "b", "c"])
BAD: dict[str, int] = {}
"""Findings per partition that the toy check reports; the tests set it between runs."""


@dg.asset(partitions_def=TOY_PARTITIONS)
def toy() -> dg.MaterializeResult:
    return dg.MaterializeResult()


# Preview feature in Dagster 1.13: a partitioned asset check (as the project's checks are).
@dg.asset_check(asset=toy, partitions_def=TOY_PARTITIONS)
def toy_clean(context: AssetCheckExecutionContext) -> dg.AssetCheckResult:
    bad = BAD.get(context.partition_key, 0)
    return dg.AssetCheckResult(
        passed=bad == 0,
        severity=dg.AssetCheckSeverity.WARN if bad < 5 else dg.AssetCheckSeverity.ERROR,
        metadata={
            "count": bad,
            "examples": dg.MetadataValue.json([{"key": f"k/{i}"} for i in range(bad)]),
        },
    )


TOY_DEFS = dg.Definitions(assets=[toy], asset_checks=[toy_clean], sensors=[check_alert_sensor])


def run_toy(instance: dg.DagsterInstance, partition: str, bad: int) -> None:
    BAD[partition] = bad
    assert dg.materialize([toy, toy_clean], partition_key=partition, instance=instance).success


def test_toy_check_fails_escalates_recovers_and_fails_again(
    instance: dg.DagsterInstance, http_server: RecordingServer
) -> None:
    alerts = webhook(http_server)
    events: list[tuple[str, str, str | None]] = []
    cursor = None
    for partition, bad in [("a", 0), ("a", 2), ("a", 3), ("a", 7), ("a", 0), ("a", 1)]:
        run_toy(instance, partition, bad)
        result = tick(TOY_DEFS, instance, cursor, alerts)
        cursor = result.cursor
        events = [
            (p.json()["event"], p.json()["severity"], p.json()["partition"])
            for p in http_server.posts
        ]
    assert events == [
        ("check_failed", "WARN", "a"),
        ("check_failed", "ERROR", "a"),  # the escalation
        ("check_recovered", "ERROR", "a"),  # the severity the failure had
        ("check_failed", "WARN", "a"),
    ]
    first = http_server.posts[0].json()
    assert first["examples"] == ["k/0", "k/1"] and first["counts"] == {"count": 2}
    assert first["check"] == "toy_clean" and first["asset"] == "toy"


def test_failing_destination_keeps_the_transition_for_the_next_tick(
    instance: dg.DagsterInstance, http_server: RecordingServer, capfd: pytest.CaptureFixture[str]
) -> None:
    run_toy(instance, "b", 2)
    secret_url = f"http://127.0.0.1:{free_port()}{SECRET_PATH}?token=hunter2"
    broken = AlertsResource(webhook_url=secret_url, attempts=2, backoff=0.01, timeout=2)
    capfd.readouterr()
    result = tick(TOY_DEFS, instance, None, broken)
    output = capfd.readouterr()
    assert "delivery failed on every destination" in result.skip_reason.skip_message
    log = output.out + output.err + result.skip_reason.skip_message + (result.cursor or "")
    assert "not delivered to webhook http://127.0.0.1" in log  # the one line per destination
    assert "T0KEN" not in log and "hunter2" not in log and "/hooks/" not in log
    assert '"failing":{}' in result.cursor  # state not advanced

    result = tick(TOY_DEFS, instance, result.cursor, webhook(http_server))
    [post] = http_server.posts
    assert post.json()["event"] == "check_failed" and post.json()["partition"] == "b"
    result = tick(TOY_DEFS, instance, result.cursor, webhook(http_server))
    assert len(http_server.posts) == 1


def test_one_destination_failing_does_not_hold_back_the_others(
    instance: dg.DagsterInstance, http_server: RecordingServer
) -> None:
    run_toy(instance, "c", 1)
    alerts = webhook(http_server, slack_token="xoxb-1", slack_channel="#ops")
    alerts = alerts.model_copy(update={"slack_base_url": f"http://127.0.0.1:{free_port()}/api"})
    result = tick(TOY_DEFS, instance, None, alerts)
    assert [p.json()["event"] for p in http_server.posts] == ["check_failed"]
    assert "toy|toy_clean|c" in result.cursor
    result = tick(TOY_DEFS, instance, result.cursor, alerts)
    assert len(http_server.posts) == 1


def test_every_configured_destination_gets_the_message(
    instance: dg.DagsterInstance, http_server: RecordingServer, smtp_server: MailServer
) -> None:
    slack_api = RecordingServer(body=b'{"ok": true, "channel": "C1", "ts": "1.0"}').start()
    try:
        alerts = webhook(
            http_server,
            slack_token="xoxb-secret-token",
            slack_channel="#data-ops",
            slack_base_url=slack_api.base_url + "/api",
            smtp_host="127.0.0.1",
            smtp_port=str(smtp_server.port),
            email_from="integrity@example.com",
            email_to="ops@example.com, oncall@example.com",
        )
        run_toy(instance, "a", 3)
        result = tick(TOY_DEFS, instance, None, alerts)
        assert result.skip_reason.skip_message.startswith("1 alert(s) sent")
        [hook] = http_server.posts
        [chat] = slack_api.posts
    finally:
        slack_api.stop()
    assert hook.json()["check"] == "toy_clean" and hook.json()["counts"] == {"count": 3}
    assert chat.path == "/api/chat.postMessage" and chat.json()["channel"] == "#data-ops"
    assert chat.headers["Authorization"] == "Bearer xoxb-secret-token"
    [(sender, recipients, email)] = smtp_server.recorder.messages
    assert recipients == ["ops@example.com", "oncall@example.com"]
    assert email["Subject"] == "integrity: toy_clean on toy failed (WARN) [a]"
    link = hook.json()["run_url"]
    assert link.startswith(UI + "/runs/") and link in chat.json()["text"]
    assert link in email.get_payload(decode=True).decode()


def test_message_budget_spreads_a_burst_over_ticks(
    instance: dg.DagsterInstance, http_server: RecordingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import integrity.defs.alerts.sensors as alerts_module

    monkeypatch.setattr(alerts_module, "MAX_MESSAGES_PER_TICK", 2)
    assert MAX_MESSAGES_PER_TICK >= 10
    for partition in ("a", "b", "c"):
        run_toy(instance, partition, 1)
    result = tick(TOY_DEFS, instance, None, webhook(http_server))
    assert len(http_server.posts) == 2
    assert "1 transition(s) left for the next tick" in result.skip_reason.skip_message
    result = tick(TOY_DEFS, instance, result.cursor, webhook(http_server))
    assert sorted(p.json()["partition"] for p in http_server.posts) == ["a", "b", "c"]


def test_no_destination_skips_and_names_the_variables(instance: dg.DagsterInstance) -> None:
    result = tick(TOY_DEFS, instance, None, AlertsResource())
    assert isinstance(result, dg.SkipReason)
    assert result.skip_message.startswith(NOT_CONFIGURED)
    for name in ("INTEGRITY_ALERT_WEBHOOK_URL", "INTEGRITY_SLACK_TOKEN", "INTEGRITY_SMTP_HOST"):
        assert name in result.skip_message
    half = tick(TOY_DEFS, instance, None, AlertsResource(slack_token="xoxb-secret"))
    assert "Slack needs both" in half.skip_message and "xoxb-secret" not in half.skip_message


def test_resource_from_env_keeps_secrets_as_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (settings.ENV_SLACK_TOKEN, settings.ENV_SMTP_HOST, settings.ENV_ALERT_EMAIL_TO):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(settings.ENV_ALERT_WEBHOOK_URL, "https://hooks.example.com/T0KEN")
    monkeypatch.setenv(settings.ENV_SMTP_PASSWORD, "pw-secret")
    resource = alerts_resource_from_env()
    assert isinstance(resource.webhook_url, dg.EnvVar)
    assert isinstance(resource.smtp_password, dg.EnvVar) and resource.slack_token is None
    with dg.build_resources({ALERTS_RESOURCE: resource}) as built:
        destinations, problems = built.alerts.destinations()
    assert [d.description for d in destinations] == ["webhook https://hooks.example.com"]
    assert problems == []


def test_counts_and_examples_from_check_metadata() -> None:
    table = dg.MetadataValue.table(
        records=[dg.TableRecord({"kind": "orphan_object", "key": "documents/a.pdf"})],
        schema=dg.TableSchema(
            columns=[dg.TableColumn("kind", "string"), dg.TableColumn("key", "string")]
        ),
    )
    stale = dg.MetadataValue.json([{"partition": "org-1", "age": "30h"}] * 7)
    counts, examples = counts_and_examples(
        {
            "count": dg.MetadataValue.int(3),
            "ratio": dg.MetadataValue.float(float("nan")),  # not valid JSON: left out
            "complete": dg.MetadataValue.bool(True),
            "warn_above": dg.MetadataValue.text("0"),
            "examples": table,
            "examples_stale": stale,
        }
    )
    assert counts == {"count": 3}
    assert examples == ["documents/a.pdf", *["org-1 (30h)"] * 4]


# --------------------------------------------------------------------------- failed runs


def test_failed_reconcile_run_sends_one_message(
    tmp_path: Path, instance: dg.DagsterInstance, http_server: RecordingServer
) -> None:
    missing_db = tmp_path / "nowhere" / "missing.sqlite"
    resources = {
        "storage": StorageResource(storage_dir=str(tmp_path)),
        "database": DatabaseResource(url=f"sqlite:///{missing_db}"),
        "spec": SpecResource(),
        "snapshot_io_manager": ParquetSnapshotIOManager(base_dir=str(tmp_path / "snapshots")),
    }
    defs = dg.Definitions(assets=reconciliation_assets, jobs=[reconcile_job], resources=resources)
    alerts = webhook(http_server)

    def evaluate(cursor: str | None) -> Any:
        with dg.build_sensor_context(
            instance=instance, cursor=cursor, resources={ALERTS_RESOURCE: alerts}
        ) as context:
            return run_failure_alert_sensor.evaluate_tick(context)

    first = evaluate(None)  # the first tick only sets the cursor, as under the daemon
    result = defs.resolve_job_def(RECONCILE_JOB).execute_in_process(
        instance=instance, partition_key="org-1", raise_on_error=False
    )
    assert not result.success
    # A failed run of a job that is not alerted on (an ad-hoc materialization) says nothing.
    assert not dg.materialize(
        reconciliation_assets,
        resources=resources,
        partition_key="org-2",
        instance=instance,
        raise_on_error=False,
    ).success

    second = evaluate(first.cursor)
    [post] = http_server.posts
    body = post.json()
    assert body["event"] == "run_failed" and body["job"] == RECONCILE_JOB
    assert body["partition"] == "org-1"
    assert body["run_url"] == f"{UI}/runs/{result.run_id}"
    assert "does not exist" in body["error"] and "\n" not in body["error"]
    assert "Traceback" not in body["text"]
    evaluate(second.cursor)
    assert len(http_server.posts) == 1  # once per run
