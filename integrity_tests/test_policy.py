"""The auto-remediation policy: the core decision on real reports, then auto_remediation_sensor
on a real instance after in-process materializations, with its run requests executed as the
daemon would launch them (the `remediate` job on SQLite and a storage directory).

Dry run by default; applied only when every actionable kind present is allowed, the circuit
breaker passes and INTEGRITY_ALLOW_WRITES=1; one run key per report materialization.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

from integrity import schema, settings
from integrity.defs.io_managers import ParquetSnapshotIOManager
from integrity.defs.names import (
    AUTO_REMEDIATION_REASON_TAG,
    AUTO_REMEDIATION_TAG,
    REMEDIATE_OP,
    REPORT_KEY,
    TRIGGER_TAG,
)
from integrity.defs.reconciliation.assets import reconciliation_assets
from integrity.defs.reconciliation.checks import reconciliation_checks
from integrity.defs.remediation.sensors import (
    AUTO_REMEDIATION_SENSOR,
    auto_remediation_sensor,
    remediation_sensors,
)
from integrity.defs.resources import (
    DatabaseResource,
    QueueResource,
    SpecResource,
    StorageResource,
)
from integrity.diff import ACTION_KINDS, DiffOptions, ReconciliationReport
from integrity.errors import SpecError
from integrity.inventory import ALL_TENANTS
from integrity.policy import (
    APPLY,
    AUTO_REMEDIATE_ENV,
    DRY_RUN,
    SKIP,
    allowed_kinds,
    decide_remediation,
)
from integrity.reconcile import reconcile
from integrity.settings import Settings
from integrity.spec import PolicySpec, default_spec
from integrity.storage import LocalStorage

# org-1: orphan_object, stuck_job, missing_original (1 of its 2 documents) and progress_behind.
ORG_KINDS = ("orphan_object", "stuck_job", "missing_original", "progress_behind")
SAFE_KINDS = ("orphan_object", "stuck_job", "progress_behind")


@pytest.fixture
def org_report(storage_root: Path, sqlite_engine: sa.Engine) -> ReconciliationReport:
    return reconcile(
        LocalStorage(storage_root), sqlite_engine, default_spec(), DiffOptions(tenant="org-1")
    )


# --------------------------------------------------------------------------- the core


def test_decision_on_a_real_report(org_report: ReconciliationReport) -> None:
    present = tuple(k for k in ACTION_KINDS if org_report.counts()[k])
    assert present == ORG_KINDS

    # Nothing allowed (the default): a dry run of every kind present.
    default = decide_remediation(org_report, (), max_change_ratio=0.5, writes_allowed=True)
    assert (default.mode, default.kinds) == (DRY_RUN, ORG_KINDS)
    assert default.reason == "the policy does not allow " + ", ".join(ORG_KINDS)

    # One kind present but not allowed keeps the whole report a dry run.
    partial = decide_remediation(org_report, SAFE_KINDS, max_change_ratio=0.5, writes_allowed=True)
    assert (
        partial.mode == DRY_RUN and partial.reason == "the policy does not allow missing_original"
    )

    allowed = decide_remediation(org_report, ORG_KINDS, max_change_ratio=0.5, writes_allowed=True)
    assert (allowed.mode, allowed.kinds, allowed.dry_run) == (APPLY, ORG_KINDS, False)

    no_opt_in = decide_remediation(
        org_report, ORG_KINDS, max_change_ratio=0.5, writes_allowed=False
    )
    assert no_opt_in.mode == DRY_RUN
    assert no_opt_in.reason == "INTEGRITY_ALLOW_WRITES=1 is not set for the sensor"

    # 1 of 2 documents to mark is 50%: above a 0.2 breaker. The dry run leaves out the kind
    # the breaker refuses (remediation would refuse the whole dry run otherwise).
    tripped = decide_remediation(org_report, ORG_KINDS, max_change_ratio=0.2, writes_allowed=True)
    assert (tripped.mode, tripped.kinds) == (DRY_RUN, SAFE_KINDS)
    assert tripped.reason.startswith("circuit breaker: marking 1 of 2 rows of documents")
    assert "\n" not in tripped.reason


def test_a_failed_inventory_check_keeps_it_a_dry_run(org_report: ReconciliationReport) -> None:
    decision = decide_remediation(
        org_report,
        ORG_KINDS,
        max_change_ratio=1,
        writes_allowed=True,
        failed_checks={"db_inventory_sane": "rows read: empty"},
    )
    assert (decision.mode, decision.kinds) == (DRY_RUN, ORG_KINDS)
    assert decision.reason == "db_inventory_sane failed: rows read: empty"


def test_no_run_for_an_incomplete_report_or_nothing_to_do(
    org_report: ReconciliationReport,
) -> None:
    incomplete = dataclasses.replace(org_report, complete=False, reasons=["storage: SlowDown"])
    decision = decide_remediation(incomplete, ORG_KINDS, max_change_ratio=1, writes_allowed=True)
    assert decision.mode == SKIP and decision.reason.endswith("storage: SlowDown")

    clean = dataclasses.replace(org_report, findings=org_report.findings.iloc[0:0])
    assert (
        decide_remediation(clean, ORG_KINDS, max_change_ratio=1, writes_allowed=True).mode == SKIP
    )


def test_allowed_kinds_from_the_environment_or_the_spec() -> None:
    policy = PolicySpec(auto_remediate=["orphan_object"])
    assert allowed_kinds(policy, Settings.from_env({}).auto_remediate) == ("orphan_object",)
    assert allowed_kinds(PolicySpec(), None) == ()
    env = {AUTO_REMEDIATE_ENV: " stuck_job, progress_behind,stuck_job "}
    configured = Settings.from_env(env).auto_remediate
    assert allowed_kinds(policy, configured) == ("stuck_job", "progress_behind")
    assert allowed_kinds(policy, "none") == ()
    with pytest.raises(SpecError) as raised:
        allowed_kinds(policy, "orphan_object,foreign_reference")
    assert str(raised.value) == (
        "INTEGRITY_AUTO_REMEDIATE: 'foreign_reference' is not a kind remediation acts on "
        "(a comma list of " + ", ".join(ACTION_KINDS) + ", or none)"
    )


# --------------------------------------------------------------------------- the sensor


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(settings.ENV_ALLOW_WRITES, raising=False)
    monkeypatch.delenv(AUTO_REMEDIATE_ENV, raising=False)


def write_policy(
    tmp_path: Path, policy: dict[str, Any] | None = None, name: str = "spec.yaml"
) -> Path:
    data = default_spec().model_dump(mode="json", exclude={"checks", "policy"})
    if policy is not None:
        data["policy"] = policy
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def resources(tmp_path: Path, sqlite_engine: sa.Engine, storage_root: Path) -> dict[str, Any]:
    return {
        "storage": StorageResource(storage_dir=str(storage_root)),
        "database": DatabaseResource(url=str(sqlite_engine.url)),
        "spec": SpecResource(path=str(write_policy(tmp_path))),
        "queue": QueueResource(),
        "snapshot_io_manager": ParquetSnapshotIOManager(base_dir=str(tmp_path / "snapshots")),
    }


def materialize(resources: dict[str, Any], instance: dg.DagsterInstance, partition: str) -> int:
    """Reconcile one partition; the report materialization's storage id."""
    result = dg.materialize(
        reconciliation_assets,
        resources={k: v for k, v in resources.items() if k != "queue"},
        partition_key=partition,
        instance=instance,
    )
    assert result.success
    record = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=REPORT_KEY, asset_partitions=[partition]), limit=1
    ).records[0]
    return record.storage_id


def tick(
    instance: dg.DagsterInstance, spec: SpecResource, cursor: str | None = None
) -> dg.SensorResult | dg.SkipReason:
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"spec": spec}
    ) as context:
        return auto_remediation_sensor(context)


def config_of(request: dg.RunRequest) -> dict[str, Any]:
    return request.run_config["ops"][REMEDIATE_OP]["config"]


def launch(
    request: dg.RunRequest, resources: dict[str, Any], instance: dg.DagsterInstance
) -> dg.ExecuteInProcessResult:
    """The requested run, as the daemon would launch it: the code location's remediate job."""
    from integrity.definitions import defs

    assert request.job_name in (None, "remediate")
    return defs.resolve_job_def("remediate").execute_in_process(
        run_config=request.run_config,
        tags=request.tags,
        instance=instance,
        resources=resources,
        raise_on_error=False,
    )


def op_metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    [output] = [e for e in result.events_for_node(REMEDIATE_OP) if e.is_successful_output]
    return {k: v.value for k, v in output.step_output_data.metadata.items()}


def status_of(engine: sa.Engine, document_id: str) -> str:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(schema.documents.c.status).where(schema.documents.c.id == document_id)
        ).scalar_one()


def test_sensor_is_registered_and_running_by_default() -> None:
    assert [s.name for s in remediation_sensors] == [AUTO_REMEDIATION_SENSOR]
    assert auto_remediation_sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert auto_remediation_sensor.job_name == "remediate"


def test_dry_run_by_default_and_never_twice_for_one_materialization(
    resources: dict[str, Any], instance: dg.DagsterInstance, sqlite_engine: sa.Engine
) -> None:
    assert isinstance(tick(instance, resources["spec"]), dg.SkipReason)  # nothing yet
    storage_id = materialize(resources, instance, "proj-1")

    first = tick(instance, resources["spec"])
    assert isinstance(first, dg.SensorResult)
    [request] = first.run_requests
    assert request.run_key == f"auto-remediation-{storage_id}"
    assert request.tags[TRIGGER_TAG] == AUTO_REMEDIATION_SENSOR
    assert request.tags[AUTO_REMEDIATION_TAG] == DRY_RUN
    # proj-1's only actionable finding marks 1 of its 4 images: above the 0.2 breaker, so
    # the dry run acts on nothing and its tag says why.
    assert request.tags[AUTO_REMEDIATION_REASON_TAG].startswith(
        "circuit breaker: marking 1 of 4 rows of images"
    )
    assert config_of(request) == {
        "tenant": "proj-1",
        "dry_run": True,
        "kinds": [],
        "max_change_ratio": 0.2,
    }
    assert first.cursor == str(storage_id)

    # The next tick sees nothing new; a tick re-evaluated from the old cursor asks for the
    # same run key, which the daemon launches only once.
    again = tick(instance, resources["spec"], first.cursor)
    assert isinstance(again, dg.SkipReason) and not getattr(again, "run_requests", None)
    [repeat] = tick(instance, resources["spec"]).run_requests
    assert repeat.run_key == request.run_key

    result = launch(request, resources, instance)
    assert result.success
    assert op_metadata(result)["dry_run"] is True and op_metadata(result)["updated"] == 0


def test_org_report_dry_run_then_applied_when_the_policy_allows_it(
    tmp_path: Path,
    resources: dict[str, Any],
    instance: dg.DagsterInstance,
    sqlite_engine: sa.Engine,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    materialize(resources, instance, "org-1")
    lenient = SpecResource(
        path=str(
            write_policy(
                tmp_path,
                {"auto_remediate": list(ORG_KINDS), "max_change_ratio": 0.5},
                "lenient.yaml",
            )
        )
    )

    # Allowed, but INTEGRITY_ALLOW_WRITES is not set: a dry run of every kind, which the
    # remediate job runs without changing a row.
    [dry] = tick(instance, lenient).run_requests
    assert dry.tags[AUTO_REMEDIATION_TAG] == DRY_RUN
    assert (
        dry.tags[AUTO_REMEDIATION_REASON_TAG]
        == "INTEGRITY_ALLOW_WRITES=1 is not set for the sensor"
    )
    assert config_of(dry)["kinds"] == list(ORG_KINDS) and config_of(dry)["dry_run"] is True
    result = launch(dry, {**resources, "spec": lenient}, instance)
    assert result.success and op_metadata(result)["dry_run"] is True
    assert op_metadata(result)["updated"] == 4  # what it would change
    assert status_of(sqlite_engine, "d-missing") == "complete"

    # A kind present but not allowed keeps it a dry run, writes allowed or not.
    monkeypatch.setenv(settings.ENV_ALLOW_WRITES, "1")
    monkeypatch.setenv(AUTO_REMEDIATE_ENV, ",".join(SAFE_KINDS))
    [partial] = tick(instance, lenient).run_requests
    assert partial.tags[AUTO_REMEDIATION_TAG] == DRY_RUN
    assert partial.tags[AUTO_REMEDIATION_REASON_TAG] == "the policy does not allow missing_original"

    # Every kind allowed, the breaker passes at 0.5, writes opted in: applied.
    monkeypatch.delenv(AUTO_REMEDIATE_ENV)
    [applied] = tick(instance, lenient).run_requests
    assert applied.tags[AUTO_REMEDIATION_TAG] == APPLY
    assert config_of(applied) == {
        "tenant": "org-1",
        "dry_run": False,
        "kinds": list(ORG_KINDS),
        "max_change_ratio": 0.5,
    }
    assert applied.run_key == dry.run_key  # the same materialization: launched once
    result = launch(applied, {**resources, "spec": lenient}, instance)
    assert result.success
    meta = op_metadata(result)
    assert meta["dry_run"] is False and meta["updated"] >= 3
    assert status_of(sqlite_engine, "d-missing") == "error"


def test_breaker_keeps_it_a_dry_run_without_the_refused_kind(
    resources: dict[str, Any], instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    materialize(resources, instance, "org-1")
    monkeypatch.setenv(settings.ENV_ALLOW_WRITES, "1")
    monkeypatch.setenv(AUTO_REMEDIATE_ENV, ",".join(ORG_KINDS))
    [request] = tick(instance, resources["spec"]).run_requests  # breaker at the default 0.2
    assert request.tags[AUTO_REMEDIATION_TAG] == DRY_RUN
    assert request.tags[AUTO_REMEDIATION_REASON_TAG].startswith(
        "circuit breaker: marking 1 of 2 rows"
    )
    assert config_of(request)["kinds"] == list(SAFE_KINDS)
    result = launch(request, resources, instance)
    assert result.success and op_metadata(result)["dry_run"] is True


def test_one_run_per_partition_for_its_latest_report(
    resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    materialize(resources, instance, "org-1")
    latest_org = materialize(resources, instance, "org-1")
    all_id = materialize(resources, instance, ALL_TENANTS)
    last_id = materialize(resources, instance, "org-2")  # an orphan only: still a dry run

    result = tick(instance, resources["spec"])
    assert isinstance(result, dg.SensorResult)
    by_tenant = {config_of(r)["tenant"]: r for r in result.run_requests}
    assert sorted(by_tenant) == [ALL_TENANTS, "org-1", "org-2"]
    # The superseded org-1 report gets no run of its own.
    assert by_tenant["org-1"].run_key == f"auto-remediation-{latest_org}"
    assert by_tenant[ALL_TENANTS].run_key == f"auto-remediation-{all_id}"
    assert by_tenant["org-2"].tags[AUTO_REMEDIATION_TAG] == DRY_RUN
    assert result.cursor == str(last_id)


def test_bad_policy_skips_the_tick_with_one_line_and_keeps_the_cursor(
    tmp_path: Path,
    resources: dict[str, Any],
    instance: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    materialize(resources, instance, "org-1")
    bad = SpecResource(
        path=str(write_policy(tmp_path, {"auto_remediate": ["everything"]}, "bad.yaml"))
    )
    skipped = tick(instance, bad)
    assert isinstance(skipped, dg.SkipReason)
    message = skipped.skip_message or ""
    assert message.startswith(f"auto-remediation policy: {bad.path}: policy.auto_remediate.0:")
    assert "\n" not in message

    monkeypatch.setenv(AUTO_REMEDIATE_ENV, "orphans")
    skipped = tick(instance, resources["spec"])
    assert isinstance(skipped, dg.SkipReason)
    assert (skipped.skip_message or "").startswith(
        "auto-remediation policy: INTEGRITY_AUTO_REMEDIATE: 'orphans' is not a kind"
    )

    # Fixed: the report waiting since is judged.
    monkeypatch.delenv(AUTO_REMEDIATE_ENV)
    assert len(tick(instance, resources["spec"]).run_requests) == 1


def test_shrunken_inventory_in_the_reports_run_keeps_it_a_dry_run(
    tmp_path: Path,
    resources: dict[str, Any],
    instance: dg.DagsterInstance,
    storage_root: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The breaker judges only rows to mark; a listing that lost most of its objects since the
    last run (a wrong bucket or prefix) must not be applied either."""
    everything = SpecResource(
        path=str(
            write_policy(
                tmp_path,
                {"auto_remediate": list(ACTION_KINDS), "max_change_ratio": 1.0},
                "everything.yaml",
            )
        )
    )
    checked = {**resources, "spec": everything}
    monkeypatch.setenv(settings.ENV_ALLOW_WRITES, "1")

    def reconcile_with_checks() -> dg.ExecuteInProcessResult:
        return dg.materialize(
            [*reconciliation_assets, *reconciliation_checks],
            resources={k: v for k, v in checked.items() if k != "queue"},
            partition_key="org-1",
            instance=instance,
        )

    reconcile_with_checks()
    [first] = tick(instance, everything).run_requests
    assert first.tags[AUTO_REMEDIATION_TAG] == APPLY

    for key in (
        "documents/org-1/ok.pdf",
        "documents/org-1/orphan.pdf",
        "documents/org-1/stuck.pdf",
    ):
        (storage_root / key).unlink()
    result = reconcile_with_checks()  # 5 objects -> 2
    [sanity] = [
        e for e in result.get_asset_check_evaluations() if e.check_name == "storage_inventory_sane"
    ]
    assert not sanity.passed
    result = tick(instance, everything, first.run_key.rsplit("-", 1)[1])
    assert isinstance(result, dg.SensorResult)
    [second] = result.run_requests
    assert second.tags[AUTO_REMEDIATION_TAG] == DRY_RUN
    assert second.tags[AUTO_REMEDIATION_REASON_TAG].startswith(
        "storage_inventory_sane failed: objects listed: 2, down 60% from 5"
    )
