"""Asset checks: the core's judgements at and around their thresholds (and a spec file's
thresholds over a real reconciliation), then the Dagster checks materialized in-process with the
reconciliation assets on real storage, SQLite and an instance, once per path.

Per-partition results, metadata (counts, at most five examples), inventory sanity across two
materializations of one partition, an empty database side, freshness with a tiny max_age (in a
check run of its own and through its sensor), and one-line errors for bad `checks:`.
"""

from __future__ import annotations

import json
import shutil
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

from integrity.checks import (
    DB_INVENTORY_CHECK,
    ERROR,
    EXAMPLES_PER_CHECK,
    FRESHNESS_CHECK,
    PASSED,
    STORAGE_INVENTORY_CHECK,
    WARN,
    evaluate_findings,
    evaluate_freshness,
    evaluate_inventory,
    evaluate_kind,
)
from integrity.defs.io_managers import ParquetSnapshotIOManager
from integrity.defs.names import FRESHNESS_JOB, REPORT_KEY, TRIGGER_TAG
from integrity.defs.reconciliation.assets import reconciliation_assets
from integrity.defs.reconciliation.checks import (
    freshness_job,
    reconciliation_checks,
    reconciliation_fresh,
    reconciliation_freshness_sensor,
)
from integrity.defs.resources import DatabaseResource, SpecResource, StorageResource
from integrity.diff import FINDING_KINDS, REPORT_ONLY_KINDS
from integrity.errors import SpecError
from integrity.inventory import ALL_TENANTS
from integrity.reconcile import reconcile as reconcile_storage
from integrity.spec import InventoryChecks, KindThresholds, default_spec, load_spec
from integrity.storage import LocalStorage
from integrity_tests.dagster_world import EXPECTED

ALL_CHECKS = {*FINDING_KINDS, STORAGE_INVENTORY_CHECK, DB_INVENTORY_CHECK, FRESHNESS_CHECK}
NOW = datetime(2026, 1, 2, 3, 0, tzinfo=timezone.utc)


# --------------------------------------------------------------------------- the core


def _level(kind: str, count: int, checked: int, thresholds: KindThresholds | None = None) -> str:
    thresholds = thresholds or default_spec().checks.findings.for_kind(kind)
    return evaluate_kind(kind, count, checked, thresholds).level


@pytest.mark.parametrize("kind", FINDING_KINDS)
def test_each_kind_at_and_around_its_default_thresholds(kind: str) -> None:
    thresholds = default_spec().checks.findings.for_kind(kind)
    assert thresholds.warn_above == 0  # any finding warns
    assert _level(kind, 0, 1000) == PASSED
    assert _level(kind, 1, 100_000) == WARN
    if thresholds.error_above is None:  # reported-only kinds never fail with ERROR
        assert _level(kind, 1000, 1000) == WARN
        return
    share = thresholds.error.share
    assert share is not None
    at = round(share * 10_000)
    assert _level(kind, at, 10_000) == WARN  # at the share: not above it
    assert _level(kind, at + 1, 10_000) == ERROR


def test_count_thresholds_and_null() -> None:
    counts = KindThresholds(warn_above=2, error_above=10)
    assert [_level("orphan_object", n, 10**9, counts) for n in (2, 3, 10, 11)] == [
        PASSED,
        WARN,
        WARN,
        ERROR,
    ]
    never = KindThresholds(warn_above=None, error_above=None)
    assert _level("orphan_object", 10**6, 10**6, never) == PASSED
    # Findings with nothing checked (cannot happen in a report) count as 100%.
    assert _level("stuck_job", 1, 0, KindThresholds(warn_above=5, error_above="50%")) == ERROR


def test_kind_outcome_shows_a_rounded_ratio_but_judges_the_exact_one() -> None:
    """1 of 3 is shown as 0.3333; a limit of 33.33% is still exceeded by the exact 1/3."""
    outcome = evaluate_kind(
        "orphan_object", 1, 3, KindThresholds(warn_above=0, error_above="33.33%"), [], complete=True
    )
    assert outcome.metadata["ratio"] == 0.3333
    assert outcome.level == ERROR


def test_kind_outcome_metadata_caps_examples() -> None:
    examples = [{"key": f"k{i}", "row_id": None, "table": None, "detail": "d"} for i in range(9)]
    outcome = evaluate_kind(
        "missing_original",
        9,
        300,
        KindThresholds(warn_above=0, error_above="1%"),
        examples,
        complete=False,
    )
    assert outcome.level == ERROR and not outcome.passed
    meta = outcome.metadata
    assert (meta["count"], meta["checked"], meta["ratio"]) == (9, 300, 0.03)
    assert (meta["warn_above"], meta["error_above"], meta["complete"]) == ("0", "1%", False)
    assert [e["key"] for e in meta["examples"]] == [f"k{i}" for i in range(EXAMPLES_PER_CHECK)]
    assert outcome.description == (
        "missing_original: 9 of 300 rows checked (3%), above error_above 1% "
        "(the report is incomplete: counts may be off)"
    )


@pytest.mark.parametrize(
    ("count", "previous", "complete", "level"),
    [
        (100, None, True, PASSED),  # first materialization
        (0, None, True, ERROR),  # empty
        (0, 100, True, ERROR),
        (50, 100, True, PASSED),  # down 50%: at max_shrink
        (49, 100, True, ERROR),  # down 51%
        (150, 100, True, PASSED),  # growth is fine
        (100, 100, False, WARN),  # incomplete listing
    ],
)
def test_inventory_sanity(count: int, previous: int | None, complete: bool, level: str) -> None:
    outcome = evaluate_inventory(
        STORAGE_INVENTORY_CHECK,
        "objects listed",
        count,
        previous,
        InventoryChecks(),
        complete=complete,
        reasons=["storage: SlowDown"],
    )
    assert outcome.level == level
    assert outcome.metadata["count"] == count
    assert outcome.metadata["previous_count"] == previous


def test_inventory_may_be_allowed_empty() -> None:
    settings = InventoryChecks(allow_empty=True, max_shrink="100%")
    assert evaluate_inventory("x", "rows read", 0, 10, settings).level == PASSED


def test_freshness_judges_every_tenant_partition() -> None:
    day = timedelta(hours=26)
    fresh = {"a": NOW - timedelta(hours=2), "b": NOW - timedelta(hours=25)}
    outcome = evaluate_freshness(fresh, ["a", "b", "new", ALL_TENANTS], NOW, day)
    assert outcome.level == PASSED
    assert (outcome.metadata["checked"], outcome.metadata["never_reconciled"]) == (2, 1)

    stale = {**fresh, "c": NOW - timedelta(hours=30), "gone": NOW - timedelta(days=9)}
    outcome = evaluate_freshness(stale, ["a", "b", "c"], NOW, day)
    assert outcome.level == ERROR
    assert outcome.metadata["count"] == 1  # "gone" is no partition any more
    assert outcome.metadata["examples"] == [
        {
            "partition": "c",
            "last_reconciled_at": (NOW - timedelta(hours=30)).isoformat(),
            "age": "30h",
        }
    ]
    assert outcome.description == "1 of 3 partitions not reconciled within 26h (oldest: c, 30h ago)"

    # Only the whole-bucket partition is ever reconciled: it is judged.
    only_all = {ALL_TENANTS: NOW - timedelta(hours=27)}
    assert evaluate_freshness(only_all, [ALL_TENANTS], NOW, day).level == ERROR
    assert evaluate_freshness({}, ["a"], NOW, day).level == WARN


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            {"checks": {"findings": {"missing_original": {"error_above": "lots"}}}},
            "checks.findings.missing_original.error_above: must be a count (a whole number, "
            "at least 0), a share like '1%', or null, not 'lots'",
        ),
        (
            {"checks": {"findings": {"missing_original": {"warn_above": -1}}}},
            "checks.findings.missing_original.warn_above: must be a count",
        ),
        (
            {"checks": {"findings": {"missing_orignal": {"warn_above": 1}}}},
            "checks.findings.missing_orignal: unknown field",
        ),
        (
            {"checks": {"inventory": {"max_shrink": "150%"}}},
            "checks.inventory.max_shrink: must be a share between 0% and 100%",
        ),
        (
            {"checks": {"freshness": {"max_age": "soon"}}},
            "checks.freshness.max_age: 'soon' is not a duration",
        ),
        (
            {"policy": {"auto_remediate": ["orphan_object", "foreign_reference"]}},
            "policy.auto_remediate.1: Input should be 'orphan_object', 'stuck_job'",
        ),
        ({"policy": {"max_change_ratio": 2}}, "policy.max_change_ratio: Input should be less"),
    ],
)
def test_bad_checks_or_policy_config_is_one_line(
    tmp_path: Path, section: dict[str, Any], message: str
) -> None:
    path = write_spec(tmp_path, **section)
    with pytest.raises(SpecError) as raised:
        load_spec(path)
    text = str(raised.value)
    assert text.startswith(f"{path}: {message}")
    assert "\n" not in text


def test_checks_section_is_optional_and_round_trips(tmp_path: Path) -> None:
    path = write_spec(
        tmp_path,
        checks={
            "findings": {"orphan_object": {"warn_above": 10, "error_above": "2.5%"}},
            "freshness": {"max_age": "2d"},
        },
    )
    spec = load_spec(path)
    assert spec.checks.findings.orphan_object.error.share == 0.025
    assert spec.checks.findings.missing_original == default_spec().checks.findings.missing_original
    assert spec.checks.freshness.max_age_delta == timedelta(days=2)
    assert set(type(spec.checks.findings).model_fields) == set(FINDING_KINDS)


# --------------------------------------------------------------------------- Dagster


def write_spec(tmp_path: Path, **sections: Any) -> Path:
    """The reference spec plus the given sections, as a YAML file."""
    data = default_spec().model_dump(mode="json", exclude={"checks", "policy"})
    data.update(sections)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def make_resources(
    tmp_path: Path, engine: sa.Engine, storage: StorageResource, spec: Path | None = None
) -> dict[str, Any]:
    return {
        "storage": storage,
        "database": DatabaseResource(url=str(engine.url)),
        "spec": SpecResource(path=str(spec) if spec else None),
        "snapshot_io_manager": ParquetSnapshotIOManager(base_dir=str(tmp_path / "snapshots")),
    }


@pytest.fixture
def resources(tmp_path: Path, sqlite_engine: sa.Engine, storage_root: Path) -> dict[str, Any]:
    return make_resources(tmp_path, sqlite_engine, StorageResource(storage_dir=str(storage_root)))


def reconcile(
    resources: dict[str, Any], instance: dg.DagsterInstance, partition: str
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [*reconciliation_assets, *reconciliation_checks],
        resources=resources,
        partition_key=partition,
        instance=instance,
    )


def evaluations(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    by_name = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(by_name) == ALL_CHECKS
    return by_name


def level(evaluation: dg.AssetCheckEvaluation) -> str:
    if evaluation.passed:
        return PASSED
    return WARN if evaluation.severity == dg.AssetCheckSeverity.WARN else ERROR


def meta(evaluation: dg.AssetCheckEvaluation) -> dict[str, Any]:
    return {name: value.value for name, value in evaluation.metadata.items()}


def default_level(kind: str, count: int) -> str:
    """plant_drift's counts are far above every default share, so any finding is an ERROR,
    except for the reported-only kinds, which only warn."""
    if count == 0:
        return PASSED
    return WARN if kind in REPORT_ONLY_KINDS else ERROR


def test_each_partition_materialization_has_its_own_check_results(
    resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    runs = {p: reconcile(resources, instance, p) for p in ("org-1", "proj-1")}

    for partition, result in runs.items():
        assert result.success
        by_name = evaluations(result)
        [materialization] = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=REPORT_KEY, asset_partitions=[partition]), limit=5
        ).records
        expected_counts = EXPECTED[partition][0]
        for kind in FINDING_KINDS:
            evaluation = by_name[kind]
            # Partitioned checks: the result names its partition and points at that
            # partition's materialization of the report.
            assert evaluation.partition == partition
            assert evaluation.target_materialization_data is not None
            assert evaluation.target_materialization_data.storage_id == materialization.storage_id
            assert meta(evaluation)["count"] == expected_counts[kind]
            assert level(evaluation) == default_level(kind, expected_counts[kind]), kind
        for name in (STORAGE_INVENTORY_CHECK, DB_INVENTORY_CHECK):
            assert by_name[name].partition == partition and by_name[name].passed
        # The freshness check judges the whole asset, so it names no partition.
        assert by_name[FRESHNESS_CHECK].partition is None and by_name[FRESHNESS_CHECK].passed
        # The run log holds the same results (what alerting reads).
        logged = instance.all_logs(
            result.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
        )
        assert len(logged) == len(ALL_CHECKS)

    org = evaluations(runs["org-1"])
    missing = meta(org["missing_original"])
    assert {k: v for k, v in missing.items() if k != "examples"} == {
        "count": 1,
        "checked": 2,  # the documents of org-1 (it has no images)
        "ratio": 0.5,
        "warn_above": "0",
        "error_above": "1%",
        "complete": True,
    }
    assert missing["examples"] == [
        {
            "key": "documents/org-1/missing.pdf",
            "row_id": "d-missing",
            "table": "documents",
            "detail": "original missing in storage",
        }
    ]
    assert [e["key"] for e in meta(org["orphan_object"])["examples"]] == [
        "documents/org-1/orphan.pdf"
    ]
    assert meta(org["orphan_object"])["checked"] == EXPECTED["org-1"][1]
    assert meta(org[STORAGE_INVENTORY_CHECK])["count"] == EXPECTED["org-1"][1]
    assert meta(org[DB_INVENTORY_CHECK])["count"] == EXPECTED["org-1"][2]
    assert org["missing_original"].description == (
        "missing_original: 1 of 2 rows checked (50%), above error_above 1%"
    )


def test_thresholds_from_the_spec_file(
    tmp_path: Path, sqlite_engine: sa.Engine, storage_root: Path
) -> None:
    """The spec file's thresholds judge a real reconciliation, in the core: the Dagster checks
    feed the same evaluate_findings (their wiring is the per-partition test above, and a spec
    file reaching them is the freshness and bad-checks tests below)."""
    # __all__: 2 orphans of 9 objects, 1 stuck job of 1, 1 missing original and 1 missing
    # staged of 6 referencing rows, 1 plan behind of 1, 1 foreign reference.
    spec = load_spec(
        write_spec(
            tmp_path,
            checks={
                "findings": {
                    "orphan_object": {"warn_above": 2, "error_above": 3},  # at warn: passes
                    "stuck_job": {"warn_above": 0, "error_above": 1},  # at error: warns
                    "missing_original": {"warn_above": "10%", "error_above": "16%"},  # 16.7%
                    "missing_staged": {"warn_above": "17%", "error_above": None},  # 16.7%
                    "progress_behind": {"warn_above": None, "error_above": "99%"},  # 100%
                    "foreign_reference": {"warn_above": 1, "error_above": None},
                }
            },
        )
    )
    report = reconcile_storage(LocalStorage(storage_root), sqlite_engine, spec)
    assert report.counts() == EXPECTED[ALL_TENANTS][0]
    by_name = {outcome.check: outcome for outcome in evaluate_findings(report, spec)}
    assert {kind: by_name[kind].level for kind in FINDING_KINDS} == {
        "orphan_object": PASSED,
        "stuck_job": WARN,
        "missing_original": ERROR,
        "missing_staged": PASSED,
        "progress_behind": ERROR,
        "foreign_reference": PASSED,
        "normalization_mismatch": PASSED,
        "invalid_reference": PASSED,
    }
    assert by_name["missing_original"].metadata["error_above"] == "16%"
    assert by_name["missing_staged"].metadata["error_above"] == "never"


def test_inventory_descriptions_say_empty_or_how_far_down() -> None:
    """What the UI shows for the two failures: an empty side (a wrong bucket: an empty S3
    bucket lists nothing) and a shrink since the previous materialization."""
    empty = evaluate_inventory(
        STORAGE_INVENTORY_CHECK, "objects listed", 0, None, InventoryChecks()
    )
    assert empty.level == ERROR
    assert empty.description.startswith("objects listed: empty; the usual cause is a wrong bucket")
    no_rows = evaluate_inventory(DB_INVENTORY_CHECK, "rows read", 0, 4, InventoryChecks())
    assert no_rows.level == ERROR and no_rows.metadata["count"] == 0
    assert no_rows.description.startswith("rows read: empty (previously 4)")
    # 5 objects -> 3: down 40%, within the default 50%; 3 -> 1: down 67%.
    within = evaluate_inventory(STORAGE_INVENTORY_CHECK, "objects listed", 3, 5, InventoryChecks())
    assert within.level == PASSED and within.description == "objects listed: 3 (previously 5)"
    down = evaluate_inventory(STORAGE_INVENTORY_CHECK, "objects listed", 1, 3, InventoryChecks())
    assert down.level == ERROR
    assert (down.metadata["count"], down.metadata["previous_count"]) == (1, 3)
    assert down.metadata["max_shrink"] == "50%"
    assert down.description.startswith("objects listed: 1, down 66.67% from 3")


def test_inventory_check_compares_with_the_same_partitions_previous_materialization(
    resources: dict[str, Any], instance: dg.DagsterInstance, storage_root: Path
) -> None:
    """The wiring of the shrink check: the count comes from the asset's metadata and the
    previous count from the same partition's materialization before it (the arithmetic is
    the core's, above)."""
    first = evaluations(reconcile(resources, instance, "org-1"))
    assert first[STORAGE_INVENTORY_CHECK].passed
    assert "previous_count" not in meta(first[STORAGE_INVENTORY_CHECK])
    # Another partition's materialization is never the comparison.
    reconcile(resources, instance, "proj-1")

    # 5 objects -> 1: down 80% since the previous materialization of org-1.
    for key in ("documents/org-1/ok.pdf", "documents/org-1/orphan.pdf"):
        (storage_root / key).unlink()
    shutil.rmtree(storage_root / "organizations")
    second = evaluations(reconcile(resources, instance, "org-1"))[STORAGE_INVENTORY_CHECK]
    assert level(second) == ERROR
    assert (meta(second)["count"], meta(second)["previous_count"]) == (1, 5)
    assert meta(second)["max_shrink"] == "50%"
    assert second.description.startswith("objects listed: 1, down 80% from 5")


def test_a_tenant_with_files_and_no_rows_fails_the_database_side(
    resources: dict[str, Any], instance: dg.DagsterInstance
) -> None:
    """org-2 has an object in storage and no row at all: db_inventory_sane fails, with the
    count the asset recorded (an empty side is the core's judgement, above)."""
    by_name = evaluations(reconcile(resources, instance, "org-2"))
    assert level(by_name[DB_INVENTORY_CHECK]) == ERROR
    assert meta(by_name[DB_INVENTORY_CHECK])["count"] == 0
    assert by_name[DB_INVENTORY_CHECK].description.startswith("rows read: empty")
    assert by_name[STORAGE_INVENTORY_CHECK].passed


def freshness_definitions(resources: dict[str, Any]) -> dg.Definitions:
    return dg.Definitions(
        assets=reconciliation_assets,
        asset_checks=reconciliation_checks,
        jobs=[freshness_job],
        resources=resources,
    )


def set_max_age(spec: Path, max_age: str) -> None:
    """Rewrite the spec's freshness threshold; the resource reads the file at each use."""
    data = yaml.safe_load(spec.read_text())
    data["checks"] = {"freshness": {"max_age": max_age}}
    spec.write_text(yaml.safe_dump(data))


def wait_until_older_than(instance: dg.DagsterInstance, seconds: float) -> None:
    """Sleep until the newest report materialization is older than `seconds`."""
    [record] = instance.fetch_materializations(REPORT_KEY, limit=1).records
    time.sleep(max(0.0, record.timestamp + seconds - time.time()))


def test_freshness_check_runs_alone_and_fails_when_the_report_is_too_old(
    tmp_path: Path, sqlite_engine: sa.Engine, storage_root: Path, instance: dg.DagsterInstance
) -> None:
    # Thresholds are only ever lowered below an age already reached, so a slow machine
    # cannot make a fresh report look stale.
    spec = write_spec(tmp_path, checks={"freshness": {"max_age": "1h"}})
    resources = make_resources(
        tmp_path, sqlite_engine, StorageResource(storage_dir=str(storage_root)), spec
    )
    job = freshness_definitions(resources).resolve_job_def(FRESHNESS_JOB)

    never = job.execute_in_process(instance=instance)
    [evaluation] = never.get_asset_check_evaluations()
    assert level(evaluation) == WARN
    assert evaluation.description == "reconciliation_report has never been materialized"

    assert evaluations(reconcile(resources, instance, "org-1"))[FRESHNESS_CHECK].passed
    set_max_age(spec, "4s")
    wait_until_older_than(instance, 4.1)
    # No materialization in this run: the check reads the event log only.
    stale = job.execute_in_process(instance=instance)
    assert stale.success and not stale.get_asset_materialization_events()
    [evaluation] = stale.get_asset_check_evaluations()
    assert evaluation.check_name == FRESHNESS_CHECK and level(evaluation) == ERROR
    assert meta(evaluation)["count"] == 1
    assert [e["partition"] for e in meta(evaluation)["examples"]] == ["org-1"]
    assert evaluation.description.startswith("1 of 1 partitions not reconciled within 4s")

    # A new reconciliation of org-1 recovers it: the check runs right after the report.
    recovered = dg.materialize(
        [*reconciliation_assets, reconciliation_fresh],
        resources=resources,
        partition_key="org-1",
        instance=instance,
    )
    [evaluation] = recovered.get_asset_check_evaluations()
    assert evaluation.passed and meta(evaluation)["count"] == 0


def test_freshness_sensor_launches_the_check_once_per_stale_state(
    tmp_path: Path, sqlite_engine: sa.Engine, storage_root: Path, instance: dg.DagsterInstance
) -> None:
    spec = write_spec(tmp_path, checks={"freshness": {"max_age": "1h"}})
    resources = make_resources(
        tmp_path, sqlite_engine, StorageResource(storage_dir=str(storage_root)), spec
    )
    spec_only = {"spec": resources["spec"]}

    def tick(cursor: str | None) -> dg.SensorResult:
        with dg.build_sensor_context(
            instance=instance, cursor=cursor, resources=spec_only
        ) as context:
            result = reconciliation_freshness_sensor(context)
        assert isinstance(result, dg.SensorResult)
        return result

    # Never reconciled: a new deployment gets max_age from the sensor's first tick...
    first = tick(None)
    assert not first.run_requests
    assert "never been materialized" in str(first.skip_reason)
    assert json.loads(first.cursor or "{}")["first_tick"]
    # ...and is told once that time has passed.
    two_hours_ago = (datetime.now(timezone.utc) - timedelta(hours=2)).isoformat()
    started_long_ago = json.dumps({"first_tick": two_hours_ago})
    never = tick(started_long_ago)
    [request] = never.run_requests
    assert request.tags[TRIGGER_TAG] == "reconciliation_freshness_sensor"
    assert tick(started_long_ago).run_requests[0].run_key == request.run_key

    reconcile(resources, instance, "org-1")
    fresh = tick(never.cursor)
    assert not fresh.run_requests and "reconciled within 1h" in str(fresh.skip_reason)

    set_max_age(spec, "1s")
    wait_until_older_than(instance, 1.1)
    stale = tick(fresh.cursor)
    [stale_request] = stale.run_requests
    assert stale_request.run_key not in (request.run_key, None)
    # The same stale state on the next tick asks for the same run, which the daemon
    # launches once (run keys are unique per sensor).
    assert tick(stale.cursor).run_requests[0].run_key == stale_request.run_key
    # The requested run evaluates the check from the event log and fails it.
    result = (
        freshness_definitions(resources)
        .resolve_job_def(FRESHNESS_JOB)
        .execute_in_process(instance=instance, tags=stale_request.tags)
    )
    [evaluation] = result.get_asset_check_evaluations()
    assert level(evaluation) == ERROR


def test_check_names_are_pinned_in_the_code_location() -> None:
    """Alerting and the end-to-end tests key on these names: a rename is a deliberate act."""
    from integrity.definitions import defs

    graph = defs.get_repository_def().asset_graph
    by_asset: dict[str, set[str]] = {}
    for key in graph.asset_check_keys:
        by_asset.setdefault(key.asset_key.to_user_string(), set()).add(key.name)
    assert by_asset == {
        "reconciliation_report": {*FINDING_KINDS, FRESHNESS_CHECK},
        "storage_inventory": {STORAGE_INVENTORY_CHECK},
        "db_inventory": {DB_INVENTORY_CHECK},
        "sharded_report": set(FINDING_KINDS),  # the merged shards' report, one per scope
    }
    # Per tenant partition, except the whole-asset freshness check and the merged shards' report.
    for key in graph.asset_check_keys:
        if key.asset_key.to_user_string() == "sharded_report":
            assert graph.get_check_spec(key).partitions_def is None, key
            continue
        partitioned = graph.get_check_spec(key).partitions_def is not None
        assert partitioned == (key.name != FRESHNESS_CHECK), key
    sensor = defs.resolve_sensor_def("reconciliation_freshness_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.job_name == FRESHNESS_JOB
    assert sensor.minimum_interval_seconds is not None
    assert sensor.minimum_interval_seconds <= 3600


def test_bad_checks_section_fails_the_run_with_one_line(
    tmp_path: Path, sqlite_engine: sa.Engine, storage_root: Path, instance: dg.DagsterInstance
) -> None:
    spec = write_spec(tmp_path, checks={"inventory": {"max_shrink": "half"}})
    resources = make_resources(
        tmp_path, sqlite_engine, StorageResource(storage_dir=str(storage_root)), spec
    )
    result = dg.materialize(
        [*reconciliation_assets, *reconciliation_checks],
        resources=resources,
        partition_key="org-1",
        instance=instance,
        raise_on_error=False,
    )
    assert not result.success
    [failure] = result.get_step_failure_events()
    assert failure.step_failure_data.user_failure_data is not None
    message = failure.step_failure_data.user_failure_data.description
    assert message == (
        f"{spec}: checks.inventory.max_shrink: must be a share between 0% and 100%, "
        "like '50%', not 'half'"
    )
