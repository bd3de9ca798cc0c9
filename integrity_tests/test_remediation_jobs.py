"""The `remediate` and `rollback` op jobs run in-process on a real instance, SQLite and PostgreSQL.

The reconciliation assets are materialized first (the jobs read the report snapshot they
wrote), then the jobs are executed as the UI would launch them: dry run by default, writes only
with `dry_run: false` and INTEGRITY_ALLOW_WRITES=1, refusals as one-line step failures, audit
records under the Dagster run id, and a rollback that restores the rows.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

from integrity import schema, settings
from integrity.defs.helpers import report_path
from integrity.defs.io_managers import ParquetSnapshotIOManager
from integrity.defs.names import REMEDIATION_TAG
from integrity.defs.reconciliation.assets import reconciliation_assets
from integrity.defs.resources import (
    DatabaseResource,
    QueueResource,
    SpecResource,
    StorageResource,
    resources_from_env,
)
from integrity.diff import ACTION_KINDS
from integrity.inventory import ALL_TENANTS
from integrity.remediation import COMPLETED_MSG, ledger
from integrity.remediation.queue import SqsQueue, TableQueue
from integrity.remediation.rollback import ROLLBACK_COMPLETED_MSG
from integrity.storage import LocalStorage, S3Storage
from integrity_tests.dagster_world import EXPECTED, plant_drift
from integrity_tests.flaky_proxy import FlakyProxy
from integrity_tests.remediation_worker import kill_mid_batch, wait_for_lease_to_run_out

REPO_ROOT = Path(__file__).resolve().parents[1]
REMEDIATE_OP = "apply_remediation"
ROLLBACK_OP = "apply_rollback"
TABLES = (schema.documents, schema.images, schema.processing_jobs, schema.plans)
# plant_drift marks 1 of 2 documents and 1 of 4 images: above the default ratio of 0.2.
RATIO = 0.5


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    from integrity.definitions import defs as loaded

    return loaded


@pytest.fixture
def no_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(settings.ENV_ALLOW_WRITES, raising=False)


@pytest.fixture
def allow_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(settings.ENV_ALLOW_WRITES, "1")


def _resources(tmp_path: Path, engine: sa.Engine, storage: StorageResource) -> dict[str, Any]:
    return {
        "storage": storage,
        "database": DatabaseResource(url=engine.url.render_as_string(hide_password=False)),
        "spec": SpecResource(),
        "queue": QueueResource(),
        "snapshot_io_manager": ParquetSnapshotIOManager(base_dir=str(tmp_path / "snapshots")),
    }


@pytest.fixture
def resources(tmp_path: Path, engine: sa.Engine) -> dict[str, Any]:
    """Planted drift in the database and a storage directory named like the demo bucket."""
    root = tmp_path / "integrity-demo"
    root.mkdir()
    plant_drift(LocalStorage(root), engine)
    return _resources(tmp_path, engine, StorageResource(storage_dir=str(root)))


def reconcile(
    resources: dict[str, Any], instance: dg.DagsterInstance, partition: str = ALL_TENANTS
) -> None:
    result = dg.materialize(
        reconciliation_assets,
        resources={k: v for k, v in resources.items() if k != "queue"},
        partition_key=partition,
        instance=instance,
        run_config={"ops": {"reconciliation_report": {"config": {"min_age": 0}}}},
    )
    assert result.success


def run_job(
    defs: dg.Definitions,
    name: str,
    resources: dict[str, Any],
    instance: dg.DagsterInstance,
    config: dict[str, Any] | None = None,
) -> dg.ExecuteInProcessResult:
    """The job from the code location's Definitions, with the test's resources."""
    op = REMEDIATE_OP if name == "remediate" else ROLLBACK_OP
    return defs.resolve_job_def(name).execute_in_process(
        run_config={"ops": {op: {"config": config or {}}}},
        instance=instance,
        resources=resources,
        raise_on_error=False,
    )


def output_metadata(result: dg.ExecuteInProcessResult, op: str) -> dict[str, Any]:
    [output] = [e for e in result.events_for_node(op) if e.is_successful_output]
    return {k: v.value for k, v in output.step_output_data.metadata.items()}


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    assert not result.success
    [failure] = result.get_step_failure_events()
    assert failure.step_failure_data.user_failure_data is not None, failure.step_failure_data.error
    message = failure.step_failure_data.user_failure_data.description
    assert "\n" not in message.strip() and "Traceback" not in message
    return message


def op_log_lines(instance: dg.DagsterInstance, run_id: str, op: str) -> list[str]:
    """What the op itself logged, in order (not Dagster's own events)."""
    return [
        entry.user_message
        for entry in instance.all_logs(run_id)
        if entry.dagster_event is None and entry.step_key == op
    ]


def last_json_line(instance: dg.DagsterInstance, run_id: str, op: str) -> dict[str, Any]:
    lines = op_log_lines(instance, run_id, op)
    assert lines, "the op logged nothing"
    return json.loads(lines[-1])


def table_contents(engine: sa.Engine) -> dict[str, list[dict[str, Any]]]:
    with engine.connect() as conn:
        return {
            t.name: sorted(
                (dict(r) for r in conn.execute(sa.select(t)).mappings()),
                key=lambda r: str(r[t.primary_key.columns[0].name]),
            )
            for t in TABLES
        }


def ledger_tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names()) & {
        ledger.RUNS_TABLE,
        ledger.AUDIT_TABLE,
        ledger.QUEUE_TABLE,
    }


def rows_by_key(engine: sa.Engine, table: sa.Table, key: str) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        return {str(r[key]): dict(r) for r in conn.execute(sa.select(table)).mappings()}


# --------------------------------------------------------------------------- definitions


def test_config_schemas_show_the_fields_with_defaults(defs: dg.Definitions) -> None:
    remediate = defs.resolve_job_def("remediate")
    resolved = dg.validate_run_config(remediate, {})["ops"][REMEDIATE_OP]["config"]
    assert resolved == {
        "dry_run": True,
        "kinds": list(ACTION_KINDS),
        "tenant": ALL_TENANTS,
        "status": None,
        "batch_size": 100,
        "concurrency": 5,
        "limit": None,
        "max_change_ratio": 0.2,
        "force": False,
        "pause": 0.0,
        "recheck_budget": 300.0,
    }
    op_config = remediate.run_config_schema.config_type.fields["ops"].config_type.fields
    fields = op_config[REMEDIATE_OP].config_type.fields["config"].config_type.fields
    assert all(len(fields[name].description or "") > 20 for name in resolved), {
        name: fields[name].description for name in resolved
    }
    assert "INTEGRITY_ALLOW_WRITES=1" in fields["dry_run"].description

    rollback = defs.resolve_job_def("rollback")
    with pytest.raises(dg.DagsterInvalidConfigError, match="run_id"):
        dg.validate_run_config(rollback, {"ops": {ROLLBACK_OP: {"config": {}}}})
    resolved = dg.validate_run_config(rollback, {"ops": {ROLLBACK_OP: {"config": {"run_id": "x"}}}})
    assert resolved["ops"][ROLLBACK_OP]["config"] == {
        "run_id": "x",
        "dry_run": True,
        "batch_size": 100,
    }


def test_both_jobs_carry_the_tag_dagster_yaml_limits_to_one(
    defs: dg.Definitions, tmp_path: Path
) -> None:
    for name in ("remediate", "rollback"):
        job = defs.resolve_job_def(name)
        assert job.tags.get(REMEDIATION_TAG) == "true", name
        assert job.description and "dry run" in job.description
    assert defs.resolve_job_def("reconcile").tags.get(REMEDIATION_TAG) is None

    # The project's dagster.yaml, loaded the way `dagster dev` and the daemon load it.
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_concurrency_config().run_queue_config
        assert runs is not None
        assert runs.max_concurrent_runs == 4
        assert [dict(limit) for limit in runs.tag_concurrency_limits] == [
            {"key": REMEDIATION_TAG, "limit": 1}
        ]
    # Not under run_coordinator.config as well: that combination is a config error.
    raw = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
    assert "config" not in raw["run_coordinator"]


def test_queue_resource_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (settings.ENV_QUEUE_URL, settings.ENV_ENDPOINT_URL):
        monkeypatch.delenv(name, raising=False)
    with dg.build_resources({"queue": resources_from_env()["queue"]}) as built:
        assert isinstance(built.queue.get_queue(), TableQueue)
        assert not isinstance(built.queue.get_queue(), SqsQueue)

    url = "http://127.0.0.1:9/123456789012/remediation"
    monkeypatch.setenv(settings.ENV_QUEUE_URL, url)
    monkeypatch.setenv(settings.ENV_ENDPOINT_URL, "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    configured = resources_from_env()["queue"]
    assert isinstance(configured, QueueResource)
    assert url not in repr(configured)  # an EnvVar: the UI shows the variable's name
    with dg.build_resources({"queue": configured}) as built:
        work_queue = built.queue.get_queue()  # builds a client; sends nothing
        assert isinstance(work_queue, SqsQueue)
        assert work_queue.queue_url == url
        assert work_queue.client.meta.endpoint_url == "http://127.0.0.1:9"
        assert work_queue.description == "SQS queue remediation"


# --------------------------------------------------------------------------- runs


@pytest.mark.usefixtures("no_writes")
def test_dry_run_by_default_changes_nothing_and_ends_with_the_completed_line(
    defs: dg.Definitions,
    resources: dict[str, Any],
    instance: dg.DagsterInstance,
    engine: sa.Engine,
) -> None:
    reconcile(resources, instance)
    before = table_contents(engine)

    result = run_job(defs, "remediate", resources, instance, {"max_change_ratio": RATIO})

    assert result.success
    assert table_contents(engine) == before
    assert ledger_tables(engine) == set()
    meta = output_metadata(result, REMEDIATE_OP)
    assert meta["dry_run"] is True and meta["run_id"] == result.run_id
    assert meta["scope"] == ALL_TENANTS
    assert (meta["marked_error"], meta["jobs_created"], meta["retried"]) == (2, 2, 1)
    assert (meta["progress_fixed"], meta["requeued"]) == (1, 3)
    assert meta["planned/mark_error"] == 2 and meta["planned/requeue"] == 2
    assert meta["updated"] == 6 and meta["queue"] == "table integrity_queue"

    line = last_json_line(instance, result.run_id, REMEDIATE_OP)
    assert line["msg"] == COMPLETED_MSG and line["level"] == "INFO"
    assert line["dry_run"] is True and line["run_id"] == result.run_id
    assert (line["updated"], line["requeued"], line["skipped_changed"]) == (6, 3, 0)
    assert line["scope"] == ALL_TENANTS and line["complete"] is True
    expected_counts, objects, rows = EXPECTED[ALL_TENANTS]
    assert {k: line[k] for k in expected_counts} == expected_counts
    assert line["checked"] == {"objects": objects, "rows": rows}  # the shape --json prints
    assert instance.get_run_by_id(result.run_id).tags[REMEDIATION_TAG] == "true"


@pytest.mark.usefixtures("no_writes")
def test_writes_without_the_environment_opt_in_fail_and_write_nothing(
    defs: dg.Definitions,
    resources: dict[str, Any],
    instance: dg.DagsterInstance,
    engine: sa.Engine,
) -> None:
    reconcile(resources, instance)
    before = table_contents(engine)

    result = run_job(
        defs, "remediate", resources, instance, {"dry_run": False, "max_change_ratio": RATIO}
    )
    message = failure_message(result)
    assert message.startswith("writes are not enabled for this database")
    assert "INTEGRITY_ALLOW_WRITES=1" in message
    assert table_contents(engine) == before
    assert ledger_tables(engine) == set()

    result = run_job(defs, "rollback", resources, instance, {"run_id": "r1", "dry_run": False})
    assert "INTEGRITY_ALLOW_WRITES=1" in failure_message(result)
    logged = op_log_lines(instance, result.run_id, ROLLBACK_OP)
    assert not any(ROLLBACK_COMPLETED_MSG in line for line in logged)


@pytest.mark.usefixtures("allow_writes")
def test_apply_audits_under_the_dagster_run_id_and_rollback_restores_the_rows(
    defs: dg.Definitions,
    resources: dict[str, Any],
    instance: dg.DagsterInstance,
    engine: sa.Engine,
) -> None:
    reconcile(resources, instance)
    before = table_contents(engine)

    applied = run_job(
        defs, "remediate", resources, instance, {"dry_run": False, "max_change_ratio": RATIO}
    )

    assert applied.success, applied.get_step_failure_events()
    run_id = applied.run_id
    documents = rows_by_key(engine, schema.documents, "id")
    assert documents["d-missing"]["status"] == "error" and documents["d-missing"]["error"]
    assert documents["d-ok"] == next(r for r in before["documents"] if r["id"] == "d-ok")
    assert rows_by_key(engine, schema.images, "id")["img-staged"]["status"] == "error"
    jobs = rows_by_key(engine, schema.processing_jobs, "object_key")
    assert jobs["documents/org-1/stuck.pdf"]["status"] == "not_started"
    assert jobs["documents/org-1/stuck.pdf"]["attempts"] == 1
    for orphan in ("documents/org-1/orphan.pdf", "documents/org-2/orphan.pdf"):
        assert jobs[orphan]["status"] == "not_started"
    plan = rows_by_key(engine, schema.plans, "plan_id")["plan-1"]
    assert plan["completed_pages"] == 2 and plan["reconciled"]

    with engine.connect() as conn:
        audit = conn.execute(sa.select(ledger.audit)).mappings().all()
        queued = conn.execute(sa.select(ledger.queue)).mappings().all()
        [run] = conn.execute(sa.select(ledger.remediation_runs)).mappings().all()
    assert {r["run_id"] for r in audit} == {run_id}
    assert sorted(r["action"] for r in audit) == [
        "create_job",
        "create_job",
        "fix_progress",
        "mark_error",
        "mark_error",
        "retry_job",
    ]
    assert {r["run_id"] for r in queued} == {run_id} and len(queued) == 3
    assert (run["run_id"], run["kind"], run["state"]) == (run_id, "remediate", "completed")

    meta = output_metadata(applied, REMEDIATE_OP)
    assert meta["dry_run"] is False and meta["updated"] == 6 and meta["requeued"] == 3
    line = last_json_line(instance, run_id, REMEDIATE_OP)
    assert line["msg"] == COMPLETED_MSG
    assert (line["dry_run"], line["run_id"], line["updated"], line["requeued"]) == (
        False,
        run_id,
        6,
        3,
    )

    # Idempotent: the same report again changes and queues nothing.
    after = table_contents(engine)
    again = run_job(
        defs, "remediate", resources, instance, {"dry_run": False, "max_change_ratio": RATIO}
    )
    assert again.success
    assert table_contents(engine) == after
    again_line = last_json_line(instance, again.run_id, REMEDIATE_OP)
    assert (again_line["updated"], again_line["requeued"]) == (0, 0)

    # Rollback: a dry run by default, then for real, audited under its own Dagster run id.
    preview = run_job(defs, "rollback", resources, instance, {"run_id": run_id})
    assert preview.success
    assert table_contents(engine) == after
    preview_meta = output_metadata(preview, ROLLBACK_OP)
    assert (preview_meta["restored"], preview_meta["removed"]) == (4, 2)
    assert preview_meta["dry_run"] is True

    undone = run_job(defs, "rollback", resources, instance, {"run_id": run_id, "dry_run": False})
    assert undone.success, undone.get_step_failure_events()
    assert table_contents(engine) == before
    undone_meta = output_metadata(undone, ROLLBACK_OP)
    assert (undone_meta["restored"], undone_meta["removed"]) == (4, 2)
    assert undone_meta["queue_cancelled"] == 3
    assert undone_meta["rolled_back_run_id"] == run_id and undone_meta["run_id"] == undone.run_id
    with engine.connect() as conn:
        restores = conn.execute(
            sa.select(ledger.audit).where(ledger.audit.c.run_id == undone.run_id)
        ).all()
        states = conn.execute(sa.select(ledger.queue.c.state)).scalars().all()
    assert len(restores) == 6
    assert set(states) == {"cancelled"}
    rollback_line = last_json_line(instance, undone.run_id, ROLLBACK_OP)
    assert rollback_line["msg"] == ROLLBACK_COMPLETED_MSG
    assert rollback_line["rolled_back_run_id"] == run_id and rollback_line["dry_run"] is False
    assert instance.get_run_by_id(undone.run_id).tags[REMEDIATION_TAG] == "true"


@pytest.mark.usefixtures("allow_writes")
def test_circuit_breaker_fails_the_step_and_force_overrides_it(
    defs: dg.Definitions,
    resources: dict[str, Any],
    instance: dg.DagsterInstance,
    engine: sa.Engine,
) -> None:
    reconcile(resources, instance)
    before = table_contents(engine)

    tripped = run_job(defs, "remediate", resources, instance, {"dry_run": False})

    message = failure_message(tripped)
    assert message.startswith("circuit breaker: marking 1 of 2 rows of documents as error (50%)")
    assert "max_change_ratio 0.2" in message and "wrong bucket, endpoint or prefix" in message
    assert "integrity-demo" in message
    assert table_contents(engine) == before
    assert ledger_tables(engine) == set()

    forced = run_job(defs, "remediate", resources, instance, {"force": True})
    assert forced.success
    assert output_metadata(forced, REMEDIATE_OP)["marked_error"] == 2
    assert table_contents(engine) == before


@pytest.mark.usefixtures("allow_writes")
def test_missing_snapshot_wrong_bucket_and_bad_kinds_fail_clearly(
    defs: dg.Definitions,
    resources: dict[str, Any],
    instance: dg.DagsterInstance,
    engine: sa.Engine,
    tmp_path: Path,
) -> None:
    message = failure_message(
        run_job(defs, "remediate", resources, instance, {"tenant": "org-2", "dry_run": False})
    )
    assert "materialize reconciliation_report for partition 'org-2' first" in message

    reconcile(resources, instance, "org-2")
    before = table_contents(engine)
    other = tmp_path / "another-bucket"
    other.mkdir()
    elsewhere = {**resources, "storage": StorageResource(storage_dir=str(other))}
    message = failure_message(
        run_job(defs, "remediate", elsewhere, instance, {"tenant": "org-2", "dry_run": False})
    )
    assert "made on bucket 'integrity-demo'" in message and "'another-bucket'" in message

    message = failure_message(
        run_job(defs, "remediate", resources, instance, {"tenant": "org-2", "kinds": ["nope"]})
    )
    assert message.startswith("kinds: unknown finding kind 'nope'")
    message = failure_message(
        run_job(defs, "remediate", resources, instance, {"tenant": "org-2/", "dry_run": False})
    )
    assert message.startswith("tenant: 'org-2/' holds a '/'")
    message = failure_message(
        run_job(defs, "rollback", resources, instance, {"run_id": "no-such-run", "dry_run": False})
    )
    assert message.startswith("no audit records in ") and message.endswith("nothing to roll back")
    assert table_contents(engine) == before
    assert ledger_tables(engine) == set()


@pytest.mark.usefixtures("allow_writes")
def test_incomplete_report_is_refused_with_its_reasons(
    defs: dg.Definitions,
    moto_endpoint: str,
    s3_client: Any,
    bucket: str,
    sqlite_engine: sa.Engine,
    instance: dg.DagsterInstance,
    tmp_path: Path,
) -> None:
    plant_drift(S3Storage(s3_client, bucket), sqlite_engine)
    with FlakyProxy(moto_endpoint) as proxy:
        proxy.fail_lists_after = 1  # the top-level listing succeeds, every prefix then gets 503
        flaky = StorageResource(
            bucket=bucket,
            endpoint_url=proxy.endpoint,
            region_name="us-east-1",
            max_attempts=1,
            listing_attempts=1,
        )
        reconcile(_resources(tmp_path, sqlite_engine, flaky), instance)
    before = table_contents(sqlite_engine)
    direct = StorageResource(bucket=bucket, endpoint_url=moto_endpoint, region_name="us-east-1")
    resources = _resources(tmp_path, sqlite_engine, direct)

    result = run_job(defs, "remediate", resources, instance, {"dry_run": False, "force": True})

    message = failure_message(result)
    assert message.startswith(f"the report for {ALL_TENANTS} is incomplete")
    assert "SlowDown" in message and "reconcile again" in message
    assert table_contents(sqlite_engine) == before
    assert ledger_tables(sqlite_engine) == set()


@pytest.mark.usefixtures("allow_writes")
def test_tenant_partition_requeues_through_sqs_on_moto(
    defs: dg.Definitions,
    moto_endpoint: str,
    s3_client: Any,
    bucket: str,
    sqs_client: Any,
    sqs_queue_url: str,
    sqlite_engine: sa.Engine,
    instance: dg.DagsterInstance,
    tmp_path: Path,
) -> None:
    plant_drift(S3Storage(s3_client, bucket), sqlite_engine)
    storage = StorageResource(
        bucket=bucket, endpoint_url=moto_endpoint, region_name="us-east-1", max_attempts=1
    )
    resources = {
        **_resources(tmp_path, sqlite_engine, storage),
        "queue": QueueResource(
            queue_url=sqs_queue_url, endpoint_url=moto_endpoint, region="us-east-1"
        ),
    }
    reconcile(resources, instance, "org-1")

    result = run_job(
        defs,
        "remediate",
        resources,
        instance,
        {"tenant": "org-1", "dry_run": False, "max_change_ratio": RATIO},
    )

    assert result.success, result.get_step_failure_events()
    meta = output_metadata(result, REMEDIATE_OP)
    assert meta["scope"] == "org-1" and meta["queue"].startswith("SQS queue integrity-")
    assert (meta["requeued"], meta["marked_error"], meta["progress_fixed"]) == (2, 1, 1)
    messages = sqs_client.receive_message(
        QueueUrl=sqs_queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
    ).get("Messages", [])
    bodies = sorted((json.loads(m["Body"]) for m in messages), key=lambda b: b["key"])
    assert [(b["key"], b["bucket"], b["run_id"]) for b in bodies] == [
        ("documents/org-1/orphan.pdf", bucket, result.run_id),
        ("documents/org-1/stuck.pdf", bucket, result.run_id),
    ]
    with sqlite_engine.connect() as conn:
        states = conn.execute(sa.select(ledger.queue.c.state)).scalars().all()
    assert states == ["sent", "sent"]
    # Other tenants' rows are untouched: org-2's orphan got no job.
    jobs = rows_by_key(sqlite_engine, schema.processing_jobs, "object_key")
    assert "documents/org-2/orphan.pdf" not in jobs
    assert "testing" not in repr(meta)


@pytest.mark.e2e
@pytest.mark.usefixtures("allow_writes")
def test_a_killed_remediation_is_named_recorded_as_failed_and_rolled_back(
    defs: dg.Definitions,
    resources: dict[str, Any],
    instance: dg.DagsterInstance,
    engine: sa.Engine,
) -> None:
    """A remediation whose process was SIGKILLed mid-batch (two batches committed): once its lease
    has run out, a dry run of `remediate` names it in a warning and its metadata, an applying
    run records it as failed, and the `rollback` job undoes it exactly."""
    reconcile(resources, instance)
    before = table_contents(engine)
    killed = "killed-" + uuid.uuid4().hex[:8]
    kill_mid_batch(
        engine,
        Path(resources["storage"].storage_dir),
        report_path(resources["snapshot_io_manager"], ALL_TENANTS),
        killed,
        batch_size=1,
        hang_after=2,
        lease=1.0,
    )
    wait_for_lease_to_run_out(engine, killed)

    def raw_states() -> dict[str, tuple[str, str | None]]:
        with engine.connect() as conn:
            found = conn.execute(
                sa.select(
                    ledger.remediation_runs.c.run_id,
                    ledger.remediation_runs.c.state,
                    ledger.remediation_runs.c.failed_by,
                )
            ).all()
        return {run_id: (state, by) for run_id, state, by in found}

    dry = run_job(defs, "remediate", resources, instance, {"max_change_ratio": RATIO})
    assert dry.success
    meta = output_metadata(dry, REMEDIATE_OP)
    assert (meta["interrupted_runs"], meta["interrupted_run_ids"]) == (1, killed)
    [warning] = [m for m in op_log_lines(instance, dry.run_id, REMEDIATE_OP) if killed in m]
    assert warning.startswith(
        f"remediate run {killed} was interrupted: its process stopped without finishing "
        "(2 batches applied; its lease ran out at "
    )
    assert "shown as failed (the next applying run records it)" in warning
    assert f"the rollback job with run_id {killed} undoes them" in warning
    assert raw_states() == {killed: ("running", None)}  # a dry run records nothing

    applied = run_job(
        defs, "remediate", resources, instance, {"dry_run": False, "max_change_ratio": RATIO}
    )
    assert applied.success, applied.get_step_failure_events()
    meta = output_metadata(applied, REMEDIATE_OP)
    assert (meta["interrupted_runs"], meta["interrupted_run_ids"]) == (1, killed)
    assert meta["updated"] == 4  # what the killed run left to do
    assert any(
        killed in m and "; recorded as failed." in m
        for m in op_log_lines(instance, applied.run_id, REMEDIATE_OP)
    )
    assert raw_states() == {
        killed: ("failed", applied.run_id),
        applied.run_id: ("completed", None),
    }
    undone = run_job(defs, "rollback", resources, instance, {"run_id": killed, "dry_run": False})
    assert undone.success, undone.get_step_failure_events()
    undone_meta = output_metadata(undone, ROLLBACK_OP)
    assert undone_meta["restored"] + undone_meta["removed"] == 2
    undone = run_job(
        defs, "rollback", resources, instance, {"run_id": applied.run_id, "dry_run": False}
    )
    assert undone.success, undone.get_step_failure_events()
    assert table_contents(engine) == before


@pytest.mark.usefixtures("allow_writes")
def test_a_store_failing_every_head_fails_the_step_within_the_recheck_budget(
    defs: dg.Definitions,
    moto_endpoint: str,
    s3_client: Any,
    bucket: str,
    sqlite_engine: sa.Engine,
    instance: dg.DagsterInstance,
    tmp_path: Path,
) -> None:
    """Every HEAD answers 503 (slowly): the run stops when its re-check budget is spent, the
    step fails with one line naming the run, and the counts are on the failure."""
    plant_drift(S3Storage(s3_client, bucket), sqlite_engine)
    direct = StorageResource(bucket=bucket, endpoint_url=moto_endpoint, region_name="us-east-1")
    reconcile(_resources(tmp_path, sqlite_engine, direct), instance)
    before = table_contents(sqlite_engine)
    with FlakyProxy(moto_endpoint) as proxy:
        proxy.fail_heads_after, proxy.fail_delay = 0, 0.3
        flaky = StorageResource(
            bucket=bucket,
            endpoint_url=proxy.endpoint,
            region_name="us-east-1",
            max_attempts=1,
            listing_attempts=1,
        )
        result = run_job(
            defs,
            "remediate",
            _resources(tmp_path, sqlite_engine, flaky),
            instance,
            {"dry_run": False, "force": True, "concurrency": 1, "recheck_budget": 0.1},
        )

    message = failure_message(result)
    assert message.startswith("storage re-checks ran out of their 0.1s time budget in batch ")
    assert f"(remediation run {result.run_id}, recorded as failed)" in message
    [failure] = result.get_step_failure_events()
    meta = {k: v.value for k, v in failure.step_failure_data.user_failure_data.metadata.items()}
    assert meta["run_id"] == result.run_id and meta["updated"] == 0
    assert meta["skipped_unverified"] == 1 and meta["not_verified"] >= 1
    assert sum(n for k, n in meta.items() if k.startswith("skipped_unverified/")) == 1
    with sqlite_engine.connect() as conn:
        [state] = conn.execute(
            sa.select(ledger.remediation_runs.c.state).where(
                ledger.remediation_runs.c.run_id == result.run_id
            )
        ).scalars()
    assert state == "failed"
    after = table_contents(sqlite_engine)
    assert {t: after[t] for t in ("documents", "images", "processing_jobs")} == {
        t: before[t] for t in ("documents", "images", "processing_jobs")
    }
