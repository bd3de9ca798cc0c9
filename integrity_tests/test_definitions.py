"""The code location loads through workspace.yaml, offline, and its names are pinned.

A rename of an asset, job, schedule or sensor breaks saved UI links, run history and later
issues' checks: these tests make it a deliberate act.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from integrity import settings
from integrity.defs import names
from integrity.defs.intervals import sensor_interval
from integrity.defs.io_managers import ParquetSnapshotIOManager
from integrity.defs.resources import DatabaseResource, resources_from_env
from integrity.errors import UsageError
from integrity.kinds import KINDS
from integrity.storage import LocalStorage, S3Storage

REPO_ROOT = Path(__file__).resolve().parents[1]
ASSETS = {
    "db_inventory": ({"sql", "parquet"}, set()),
    "storage_inventory": ({"s3", "parquet"}, {"db_inventory"}),
    "reconciliation_report": ({"pandas", "parquet"}, {"db_inventory", "storage_inventory"}),
}
# The key-range shards' graph, its own group (pinned in test_shards_instance.py).
SHARD_ASSETS = {
    "shard_plan",
    "shard_db_inventory",
    "shard_storage_inventory",
    "shard_report",
    "sharded_report",
}


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    from integrity.definitions import defs as loaded

    return loaded


def _clean_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("INTEGRITY_", "DAGSTER_")) and k != settings.ENV_ENDPOINT_URL
    }


@pytest.mark.e2e
def test_workspace_loads_offline_with_s3_configured(tmp_path: Path) -> None:
    """`dagster definitions validate` through workspace.yaml, with S3 at an unreachable endpoint.

    Loading must not touch the network, so an endpoint nobody listens on still validates.
    """
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO_ROOT / "dagster.yaml").read_text())
    env = {
        **_clean_env(),
        "DAGSTER_HOME": str(home),
        "INTEGRITY_HOME": str(tmp_path / "integrity_home"),
        settings.ENV_BUCKET: "some-bucket",
        settings.ENV_ENDPOINT_URL: "http://127.0.0.1:9",
    }
    dagster = Path(sys.executable).with_name("dagster")
    done = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Validation successful for code location integrity" in done.stdout + done.stderr
    assert not (tmp_path / "integrity_home").exists(), "loading created files"


def test_asset_keys_group_kinds_and_lineage_are_pinned(defs: dg.Definitions) -> None:
    graph = defs.resolve_asset_graph()
    assert {key.to_user_string() for key in graph.get_all_asset_keys()} == set(
        ASSETS
    ) | SHARD_ASSETS
    for name, (kinds, parents) in ASSETS.items():
        node = graph.get(dg.AssetKey(name))
        assert node.group_name == "reconciliation"
        assert node.kinds == kinds
        assert {p.to_user_string() for p in node.parent_keys} == parents
        assert node.description and len(node.description) > 40
        assert isinstance(node.partitions_def, dg.DynamicPartitionsDefinition)
        assert node.partitions_def.name == "tenants"


def test_job_schedule_and_sensor_are_pinned(defs: dg.Definitions) -> None:
    job = defs.resolve_job_def("reconcile")
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} == set(ASSETS)
    assert job.partitions_def is not None and job.partitions_def.name == "tenants"

    schedule = defs.resolve_schedule_def("daily_reconciliation")
    assert schedule.cron_schedule == "0 2 * * *"
    assert schedule.execution_timezone == "UTC"
    assert schedule.job_name == "reconcile"

    sensor = defs.resolve_sensor_def("tenant_discovery_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert 30 <= sensor.minimum_interval_seconds <= 600


def test_the_names_module_names_every_asset_check_and_job(defs: dg.Definitions) -> None:
    """integrity.defs.names is where targets are named by string: it must name what exists."""
    keys = {value for value in vars(names).values() if isinstance(value, dg.AssetKey)}
    graph = defs.resolve_asset_graph()
    assert set(graph.get_all_asset_keys()) == keys
    jobs = {value for name, value in vars(names).items() if name.endswith("_JOB")}
    assert {
        job.name for job in defs.resolve_all_job_defs() if not job.name.startswith("__")
    } == jobs
    checks = {key.name for key in graph.asset_check_keys}
    core_checks = {names.DB_INVENTORY_CHECK, names.STORAGE_INVENTORY_CHECK, names.FRESHNESS_CHECK}
    assert checks == core_checks | {kind.check for kind in KINDS}
    ops = {value for name, value in vars(names).items() if name.endswith("_OP")}
    job_ops = {
        node.name
        for job in (defs.resolve_job_def(n) for n in (names.REMEDIATE_JOB, names.ROLLBACK_JOB))
        for node in job.graph.node_defs
    } | {node.name for node in defs.resolve_job_def(names.PROCESS_JOB).graph.node_defs}
    assert job_ops == ops


def test_run_tags_are_written_once_in_the_names_module() -> None:
    """A tag's string is written only in integrity.defs.names, so the sensors, the schedule and
    the run queue limits (dagster.yaml) cannot drift apart."""
    tag = re.compile(r"^(integrity|dagster)/\w+$")
    found = []
    for path in sorted((REPO_ROOT / "integrity" / "defs").rglob("*.py")):
        if path == REPO_ROOT / "integrity" / "defs" / "names.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and tag.match(str(node.value)):
                found.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} {node.value!r}")
    assert not found, "\n".join(found)
    assert (names.TRIGGER_TAG, names.REMEDIATION_TAG, names.SHARD_TAG) == (
        "integrity/trigger",
        "integrity/remediation",
        "integrity/shard",
    )
    assert names.REMEDIATION_TAG in (REPO_ROOT / "dagster.yaml").read_text()


def test_sensor_interval_override_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Unset, each sensor keeps its own interval; set, every sensor uses it (a test instance
    sets a few seconds, see test_instance_e2e); a bad value is one line naming the variable."""
    monkeypatch.delenv(settings.ENV_SENSOR_INTERVAL, raising=False)
    assert sensor_interval(60) == 60
    monkeypatch.setenv(settings.ENV_SENSOR_INTERVAL, "")
    assert sensor_interval(900) == 900
    monkeypatch.setenv(settings.ENV_SENSOR_INTERVAL, " 5 ")
    assert (sensor_interval(60), sensor_interval(900)) == (5, 5)
    for bad in ("0", "-3", "2.5", "soon"):
        monkeypatch.setenv(settings.ENV_SENSOR_INTERVAL, bad)
        with pytest.raises(UsageError) as caught:
            sensor_interval(30)
        assert str(caught.value) == (
            f"INTEGRITY_SENSOR_INTERVAL_SECONDS={bad!r} is not a sensor interval: use a whole "
            "number of seconds, at least 1, e.g. '30' (unset, each sensor keeps its own)"
        )


def test_resources_default_to_the_embedded_demo(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in (
        settings.ENV_BUCKET,
        settings.ENV_DB_URL,
        settings.ENV_STORAGE_DIR,
        settings.ENV_SPEC,
        settings.ENV_ENDPOINT_URL,
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(settings.ENV_HOME, str(tmp_path))
    with dg.build_resources(resources_from_env()) as resources:
        store = resources.storage.get_store()
        assert isinstance(store, LocalStorage)
        assert store.root == tmp_path / "storage" / "integrity-demo"
        assert store.bucket == "integrity-demo"
        assert resources.database.resolved_url == f"sqlite:///{tmp_path / 'demo.sqlite'}"
        assert resources.spec.load().tables.keys() == {"documents", "images"}
    assert ParquetSnapshotIOManager()._root() == tmp_path / "snapshots"


def test_environment_switches_to_s3_and_hides_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(settings.ENV_BUCKET, "media")
    monkeypatch.setenv(settings.ENV_ENDPOINT_URL, "http://127.0.0.1:9")
    monkeypatch.setenv(settings.ENV_DB_URL, "postgresql+psycopg://app:hunter2@db.example/app")
    configured = resources_from_env()
    # EnvVar, not the value: the UI shows the variable's name, never a secret.
    assert isinstance(configured["database"], DatabaseResource)
    assert "hunter2" not in repr(configured["database"])
    with dg.build_resources(configured) as resources:
        store = resources.storage.get_store()  # builds a client; sends nothing
        assert isinstance(store, S3Storage)
        assert store.bucket == "media"
        assert store.client.meta.endpoint_url == "http://127.0.0.1:9"
        assert resources.database.description == "postgresql+psycopg://app:***@db.example/app"
