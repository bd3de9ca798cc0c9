"""End to end on the instance's storage and on the local instance (dagster.yaml, SQLite).

The harness creates an instance's storage before its processes start, on both configurations;
the default instance runs a reconcile through its queue, its checks visible over GraphQL. Kept
apart from test_instance_e2e.py's production story so the two run side by side in CI.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from integrity.defs.partitions import TENANTS as TENANTS_PARTITIONS
from integrity.inventory import ALL_TENANTS
from integrity.schema import create_reference_schema
from integrity.storage import LocalStorage
from integrity_tests.conftest import POSTGRES_URL
from integrity_tests.dagster_world import EXPECTED, plant_drift
from integrity_tests.instance_harness import (
    LOCAL_DAGSTER_YAML,
    PRODUCTION_DAGSTER_YAML,
    RunningInstance,
    log_tails_on_failure,
    prepare_home,
    running_instance,
    scratch_database,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

REPORT = "reconciliation_report"
RUN_SECONDS = 120


@pytest.fixture(autouse=True)
def _log_tails_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a failed test, show the tails of the webserver's and the daemon's logs."""
    yield from log_tails_on_failure(request, ("local_instance",))


# --------------------------------------------------------------------------- instance storage

# Opens the instance of $DAGSTER_HOME when told to (a line on stdin), as each long-lived process
# and code server does when it starts.
OPEN_INSTANCE = """
import sys
import dagster as dg
print("ready", flush=True)
sys.stdin.readline()
with dg.DagsterInstance.get() as instance:
    instance.get_runs_count()
"""
OPENERS = 3
SQLITE_STORAGE = {"history/runs.db", "history/runs/index.db", "schedules/schedules.db"}


def _schema_versions(home: Path, env: dict[str, str]) -> dict[str, list[str]]:
    """Each storage database's alembic_version rows, read without opening the instance."""
    if "DAGSTER_POSTGRES_URL" not in env:
        found = {str(path.relative_to(home)): path for path in home.rglob("*.db")}
        versions = {}
        for name, path in found.items():
            with sqlite3.connect(path) as conn:
                versions[name] = [row[0] for row in conn.execute("SELECT * FROM alembic_version")]
        return versions
    engine = sa.create_engine(env["DAGSTER_POSTGRES_URL"])
    try:
        with engine.connect() as conn:
            rows = list(conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars())
            tables = set(sa.inspect(conn).get_table_names())
        assert {"runs", "event_logs", "jobs", "instance_info"} <= tables, tables
        return {"postgres": rows}
    finally:
        engine.dispose()


@contextmanager
def _fresh_instance_config(which: str) -> Iterator[tuple[Path, dict[str, str]]]:
    if which == "local":
        yield LOCAL_DAGSTER_YAML, {}
        return
    if not POSTGRES_URL:
        pytest.skip("INTEGRITY_TEST_POSTGRES_URL is not set")
    with scratch_database("dagster_init") as dagster_pg_url:
        yield PRODUCTION_DAGSTER_YAML, {"DAGSTER_POSTGRES_URL": dagster_pg_url}


@pytest.mark.parametrize("which", ["local", "production"])
def test_the_instance_is_initialised_before_its_processes_start(which: str, tmp_path: Path) -> None:
    """The harness creates the instance's storage before its processes start.

    On a fresh SQLite home, processes opening the instance at the same moment (the webserver,
    the daemon and their code servers do) each create the storage they find missing, and two of
    them may stamp the schema twice: the instance then never loads again. Once it exists, they
    create nothing. PostgreSQL storage retries its creation, but is created first all the same.
    """
    with _fresh_instance_config(which) as (dagster_yaml, env):
        env = prepare_home(dagster_yaml, {**env, "INTEGRITY_HOME": str(tmp_path / "ih")}, tmp_path)
        home = Path(env["DAGSTER_HOME"])
        versions = _schema_versions(home, env)
        assert all(len(heads) == 1 for heads in versions.values()), versions
        if which != "local":
            return
        assert set(versions) == SQLITE_STORAGE
        openers = [
            subprocess.Popen(
                [sys.executable, "-c", OPEN_INSTANCE],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(OPENERS)
        ]
        try:
            # Every opener has imported dagster before any opens the instance.
            assert [opener.stdout.readline() for opener in openers] == ["ready\n"] * OPENERS
            for opener in openers:
                opener.stdin.write("go\n")
                opener.stdin.flush()
            errors = [opener.communicate(timeout=120)[1] for opener in openers]
        finally:
            for opener in openers:
                opener.kill()
                opener.wait()
        assert [opener.returncode for opener in openers] == [0] * OPENERS, errors
        assert _schema_versions(home, env) == versions


# --------------------------------------------------------------------------- local instance


@pytest.fixture
def local_instance(tmp_path: Path) -> Iterator[RunningInstance]:
    """The default dagster.yaml (SQLite under DAGSTER_HOME) over the drift in a storage directory."""
    root = tmp_path / "storage"
    root.mkdir()
    db_url = f"sqlite:///{tmp_path / 'integrity.sqlite'}"
    engine = sa.create_engine(db_url)
    create_reference_schema(engine)
    plant_drift(LocalStorage(root), engine)
    engine.dispose()
    env = {
        "INTEGRITY_HOME": str(tmp_path / "integrity_home"),
        "INTEGRITY_DB_URL": db_url,
        "INTEGRITY_STORAGE_DIR": str(root),
    }
    with running_instance(LOCAL_DAGSTER_YAML, env, tmp_path / "local") as running:
        yield running


def test_local_instance_runs_a_reconcile_launched_over_graphql(
    local_instance: RunningInstance,
) -> None:
    """The smoke test of the default instance: a run through the queue, its checks in the UI."""
    with local_instance.instance() as instance:
        assert type(instance.run_storage).__name__ == "SqliteRunStorage"
        assert instance.root_directory == str(local_instance.home)
        # Headless, as the README shows; the discovery sensor may have added it already.
        if not instance.has_dynamic_partition(TENANTS_PARTITIONS, ALL_TENANTS):
            instance.add_dynamic_partitions(TENANTS_PARTITIONS, [ALL_TENANTS])
    run_id = local_instance.submit("reconcile", tags={"dagster/partition": ALL_TENANTS})
    assert local_instance.wait_for_run(run_id, RUN_SECONDS) == dg.DagsterRunStatus.SUCCESS
    counts, _objects, _rows = EXPECTED[ALL_TENANTS]
    for kind, count in counts.items():
        [latest, *_] = local_instance.check_executions(REPORT, kind, ALL_TENANTS)
        assert latest["runId"] == run_id
        assert latest["status"] == ("SUCCEEDED" if count == 0 else "FAILED"), kind
        assert latest["evaluation"]["partition"] == ALL_TENANTS
    for asset, check in [
        ("storage_inventory", "storage_inventory_sane"),
        ("db_inventory", "db_inventory_sane"),
    ]:
        [latest, *_] = local_instance.check_executions(asset, check, ALL_TENANTS)
        assert (latest["runId"], latest["status"]) == (run_id, "SUCCEEDED")
