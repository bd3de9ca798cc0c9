"""A real Dagster instance for end-to-end tests: `dagster-webserver` and `dagster-daemon run`.

Both start from the project root with its workspace.yaml, on a free loopback port, with a
temporary DAGSTER_HOME holding a copy of the chosen dagster.yaml, whose storage
`dagster instance migrate` has created before either starts. Each process gets its own session
(it starts code servers and run workers of its own), so teardown ends the whole process group.
Their output goes to files whose tails are shown when something does not happen in time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import dagster as dg
import sqlalchemy as sa
from dagster_graphql import DagsterGraphQLClient

from integrity_tests.conftest import POSTGRES_URL

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKSPACE = REPO_ROOT / "workspace.yaml"
LOCAL_DAGSTER_YAML = REPO_ROOT / "dagster.yaml"
PRODUCTION_DAGSTER_YAML = REPO_ROOT / "deploy" / "production" / "dagster.yaml"
LOCATION_NAME = "integrity"
REPOSITORY_NAME = "__repository__"
HOST = "127.0.0.1"
LOG_TAIL_LINES = 40
STARTUP_SECONDS = 120

T = TypeVar("T")

TERMINAL_STATUSES = {
    dg.DagsterRunStatus.SUCCESS,
    dg.DagsterRunStatus.FAILURE,
    dg.DagsterRunStatus.CANCELED,
}
BACKFILL_DONE = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}

_LAUNCH_BACKFILL = """
mutation LaunchBackfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
  }
}
"""
_BACKFILL_STATUS = """
query BackfillStatus($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { id status }
    ... on Error { message }
  }
}
"""
_SCHEDULE = """
query Schedule($selector: ScheduleSelector!) {
  scheduleOrError(scheduleSelector: $selector) {
    __typename
    ... on Schedule {
      id
      cronSchedule
      executionTimezone
      scheduleState {
        status
        ticks(limit: 20) { status timestamp runIds skipReason error { message } }
      }
    }
    ... on Error { message }
  }
}
"""
_SENSOR = """
query Sensor($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor {
      name
      minIntervalSeconds
      sensorState {
        status
        ticks(limit: 20) {
          status timestamp endTimestamp runIds skipReason error { message }
        }
      }
    }
    ... on Error { message }
  }
}
"""
_CHECK_EXECUTIONS = """
query CheckExecutions($asset: AssetKeyInput!, $check: String!, $partition: String) {
  assetCheckExecutions(assetKey: $asset, checkName: $check, partition: $partition, limit: 5) {
    runId
    status
    partition
    evaluation { success severity partition description }
  }
}
"""
_STOP_SCHEDULE = """
mutation StopSchedule($id: String!) {
  stopRunningSchedule(id: $id) {
    __typename
    ... on ScheduleStateResult { scheduleState { status } }
    ... on Error { message }
  }
}
"""
_RUN_STATES = """
query RunStates {
  runsOrError(limit: 200) {
    __typename
    ... on Runs { results { runId status } }
    ... on PythonError { message }
  }
}
"""
_DAEMON_HEALTH = """
query DaemonHealth {
  instance { daemonHealth { allDaemonStatuses { daemonType required healthy } } }
}
"""
_LOCATION_STATUS = """
query LocationStatus {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError { __typename ... on PythonError { message } }
      }
    }
  }
}
"""


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _inherited_env() -> dict[str, str]:
    """This process's environment without any project or Dagster setting a test did not choose."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("INTEGRITY_", "DAGSTER_")) and name != "AWS_ENDPOINT_URL"
    }


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def _tail(path: Path, lines: int) -> str:
    """The last lines of a log, without the terminal colours Dagster's loggers add."""
    if not path.exists():
        return "(no log)"
    text = _ANSI_ESCAPE.sub("", path.read_text(errors="replace")).splitlines()
    return "\n".join(text[-lines:])


@dataclass
class RunningInstance:
    """A started webserver and daemon sharing one DAGSTER_HOME; talk to them over GraphQL."""

    home: Path
    port: int
    env: dict[str, str]
    log_dir: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def client(self) -> DagsterGraphQLClient:
        return DagsterGraphQLClient(HOST, port_number=self.port, timeout=60)

    def graphql(self, query: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """POST one query to /graphql; GraphQL errors raise with the log tails."""
        body = json.dumps({"query": query, "variables": dict(variables or {})}).encode()
        request = urllib.request.Request(
            f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            payload = json.loads(response.read())
        if payload.get("errors"):
            raise AssertionError(f"GraphQL errors: {payload['errors']}\n{self.log_tails()}")
        return payload["data"]

    def submit(
        self,
        job: str,
        run_config: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """Launch a run through dagster-graphql's client (it joins the run queue); its run id."""
        return self.client().submit_job_execution(
            job,
            repository_location_name=LOCATION_NAME,
            repository_name=REPOSITORY_NAME,
            run_config=dict(run_config or {}),
            tags=dict(tags or {}),
        )

    def wait_for_run(self, run_id: str, timeout: float) -> dg.DagsterRunStatus:
        """The run's terminal status (SUCCESS, FAILURE or CANCELED).

        A run behind others in the queue waits as long as they move (see wait_for).
        """
        client = self.client()

        def finished() -> dg.DagsterRunStatus | None:
            status = client.get_run_status(run_id)
            return status if status in TERMINAL_STATUSES else None

        return self.wait_for(f"run {run_id} finished", finished, timeout)

    def terminate(self, run_id: str) -> None:
        """What the UI's "Terminate" does: a queued run is canceled before it starts."""
        self.client().terminate_run(run_id)

    def launch_backfill(
        self,
        job: str,
        partitions: list[str],
        run_config: Mapping[str, Any] | None = None,
    ) -> str:
        """What the UI's "Launch backfill" on a partitioned job posts; the backfill id."""
        params: dict[str, Any] = {
            "selector": {
                "partitionSetName": f"{job}_partition_set",
                "repositorySelector": {
                    "repositoryLocationName": LOCATION_NAME,
                    "repositoryName": REPOSITORY_NAME,
                },
            },
            "partitionNames": partitions,
        }
        if run_config is not None:
            params["runConfigData"] = dict(run_config)
        result = self.graphql(_LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
        if result["__typename"] != "LaunchBackfillSuccess":
            raise AssertionError(f"backfill not launched: {result}")
        return result["backfillId"]

    def launch_asset_backfill(
        self,
        assets: list[str],
        partitions: list[str],
        run_config: Mapping[str, Any] | None = None,
    ) -> str:
        """What the UI's "Materialize" over several partitions of assets posts; the backfill id."""
        params: dict[str, Any] = {
            "assetSelection": [{"path": [name]} for name in assets],
            "partitionNames": partitions,
        }
        if run_config is not None:
            params["runConfigData"] = dict(run_config)
        result = self.graphql(_LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
        if result["__typename"] != "LaunchBackfillSuccess":
            raise AssertionError(f"asset backfill not launched: {result}")
        return result["backfillId"]

    def backfill_status(self, backfill_id: str) -> str:
        result = self.graphql(_BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]
        if result["__typename"] != "PartitionBackfill":
            raise AssertionError(f"backfill {backfill_id}: {result}")
        return result["status"]

    def schedule(self, name: str) -> dict[str, Any]:
        """The schedule as the UI sees it: cron, state and its latest ticks (newest first)."""
        selector = {
            "repositoryLocationName": LOCATION_NAME,
            "repositoryName": REPOSITORY_NAME,
            "scheduleName": name,
        }
        result = self.graphql(_SCHEDULE, {"selector": selector})["scheduleOrError"]
        if result["__typename"] != "Schedule":
            raise AssertionError(f"schedule {name}: {result}")
        return result

    def sensor(self, name: str) -> dict[str, Any]:
        """The sensor as the UI sees it: interval, state and its latest ticks (newest first)."""
        selector = {
            "repositoryLocationName": LOCATION_NAME,
            "repositoryName": REPOSITORY_NAME,
            "sensorName": name,
        }
        result = self.graphql(_SENSOR, {"selector": selector})["sensorOrError"]
        if result["__typename"] != "Sensor":
            raise AssertionError(f"sensor {name}: {result}")
        return result

    def wait_for_sensor_tick_after(self, name: str, moment: float, timeout: float) -> None:
        """Wait until a tick of the sensor that started after `moment` (epoch seconds) ended."""

        def ticked() -> bool:
            ticks = self.sensor(name)["sensorState"]["ticks"]
            return any(tick["timestamp"] > moment and tick["status"] != "STARTED" for tick in ticks)

        self.wait_for(f"a tick of {name} after {moment:.0f}", ticked, timeout)

    def check_executions(
        self, asset: str, check: str, partition: str | None = None
    ) -> list[dict[str, Any]]:
        """The latest executions of an asset check (newest first), as the UI lists them."""
        variables = {"asset": {"path": [asset]}, "check": check, "partition": partition}
        return self.graphql(_CHECK_EXECUTIONS, variables)["assetCheckExecutions"]

    def stop_schedule(self, name: str) -> str:
        """Turn a schedule off, as the UI's toggle does; its new status."""
        schedule_id = self.schedule(name)["id"]
        result = self.graphql(_STOP_SCHEDULE, {"id": schedule_id})["stopRunningSchedule"]
        if result["__typename"] != "ScheduleStateResult":
            raise AssertionError(f"schedule {name} not stopped: {result}")
        return result["scheduleState"]["status"]

    def log_tails(self, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(
            f"----- last {lines} lines of {name}.log -----\n{_tail(self.log_dir / f'{name}.log', lines)}"
            for name in ("webserver", "daemon")
        )

    def run_states(self) -> frozenset[tuple[str, str]]:
        """(run id, status) of the instance's latest runs: it changes whenever a run moves."""
        result = self.graphql(_RUN_STATES)["runsOrError"]
        if result["__typename"] != "Runs":
            raise AssertionError(f"runs: {result}\n{self.log_tails()}")
        return frozenset((run["runId"], run["status"]) for run in result["results"])

    def wait_for(
        self,
        what: str,
        probe: Callable[[], T | None],
        timeout: float,
        interval: float = 1.0,
        *,
        while_runs_move: bool = True,
    ) -> T:
        """Poll `probe` until it returns something truthy; fail with the log tails once it has
        not for `timeout` seconds during which no run was created, started or ended (with
        `while_runs_move` off, for `timeout` seconds at all).

        What a test waits for often comes after runs that are queued or running (a sensor tick
        on a busy daemon, a run behind the run limits, a backfill's runs): their pace is the
        machine's, so a wait lasts as long as the instance moves, and `timeout` bounds the time
        it may stand still. A run that hangs stands still, and so does a sensor that never ticks
        once the runs are done.
        """
        states = self.run_states() if while_runs_move else frozenset()
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            value = probe()
            if value:
                return value
            now = self.run_states() if while_runs_move else frozenset()
            if now != states:
                states, deadline = now, time.monotonic() + timeout
            elif time.monotonic() > deadline:
                since = " of the last run that moved" if while_runs_move else ""
                raise AssertionError(
                    f"{what}: not within {timeout:.0f} s{since}\n{self.log_tails()}"
                )
            time.sleep(interval)

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise AssertionError(f"{name} exited with {process.returncode}\n{self.log_tails()}")

    @contextmanager
    def instance(self) -> Iterator[dg.DagsterInstance]:
        """The same instance from this process (the caller's environment must resolve its config)."""
        with dg.DagsterInstance.from_config(str(self.home)) as instance:
            yield instance

    def _server_info(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"{self.url}/server_info", timeout=5) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return None

    def _location_loaded(self) -> bool:
        data = self.graphql(_LOCATION_STATUS)["workspaceOrError"]
        entries = {entry["name"]: entry for entry in data.get("locationEntries", [])}
        entry = entries.get(LOCATION_NAME)
        if entry is None or entry["loadStatus"] != "LOADED":
            return False
        loaded = entry["locationOrLoadError"]
        if loaded["__typename"] == "PythonError":
            raise AssertionError(
                f"code location {LOCATION_NAME} failed to load: {loaded['message']}\n"
                + self.log_tails()
            )
        return True

    def _daemons_healthy(self) -> bool:
        statuses = self.graphql(_DAEMON_HEALTH)["instance"]["daemonHealth"]["allDaemonStatuses"]
        required = [status for status in statuses if status["required"]]
        return bool(required) and all(status["healthy"] for status in required)

    def wait_until_ready(self, timeout: float = STARTUP_SECONDS) -> None:
        """The webserver answers, the code location loaded, and every required daemon beats."""
        for what, probe in [
            ("webserver /server_info", self._server_info),
            (f"code location {LOCATION_NAME} loaded", self._location_loaded),
            ("daemon heartbeats", self._daemons_healthy),
        ]:
            self.wait_for(what, probe, timeout, while_runs_move=False)


def _signal_group(process: subprocess.Popen, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def _stop_all(processes: list[subprocess.Popen], grace: float = 15.0) -> None:
    """End each process's whole group (code servers, run workers): TERM to all, then KILL."""
    for process in processes:
        if process.poll() is None:
            _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in processes:
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
    # Children may outlive their parent briefly; KILL whatever is left of each group.
    for process in processes:
        _signal_group(process, signal.SIGKILL)
        process.wait(timeout=grace)


def initialise_instance(env: Mapping[str, str], log_path: Path) -> None:
    """Create (or migrate) the instance's storage with `dagster instance migrate`, as the README does.

    Every process that opens an instance creates the storage it finds missing. On SQLite the run
    and schedule storage do so without a lock, so a webserver and a daemon that start together
    on a fresh home can both create the tables and stamp the schema version, leaving
    `alembic_version` with two heads: the instance then fails to load, now and on every later
    start. Once the storage exists, opening it creates nothing, whatever starts at the same time.
    """
    command = [str(Path(sys.executable).parent / "dagster"), "instance", "migrate"]
    with open(log_path, "wb") as log:
        result = subprocess.run(
            command,
            cwd=REPO_ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=STARTUP_SECONDS,
        )
    if result.returncode != 0:
        raise AssertionError(
            f"dagster instance migrate exited with {result.returncode}\n"
            + _tail(log_path, LOG_TAIL_LINES)
        )


def prepare_home(dagster_yaml: Path, env: Mapping[str, str], workdir: Path) -> dict[str, str]:
    """A DAGSTER_HOME (`workdir/dagster_home`) with `dagster_yaml` and its storage initialised.

    The environment the instance's processes get is returned: this process's, without project or
    Dagster settings, plus `env` and DAGSTER_HOME. `workdir/logs` receives the logs.
    """
    home = workdir / "dagster_home"
    log_dir = workdir / "logs"
    home.mkdir(parents=True)
    log_dir.mkdir(parents=True)
    shutil.copyfile(dagster_yaml, home / "dagster.yaml")
    process_env = {**_inherited_env(), **env, "DAGSTER_HOME": str(home)}
    initialise_instance(process_env, log_dir / "migrate.log")
    return process_env


@contextmanager
def running_instance(
    dagster_yaml: Path, env: Mapping[str, str], workdir: Path, port: int | None = None
) -> Iterator[RunningInstance]:
    """Start the webserver and the daemon on `dagster_yaml`, with `env` added to their environment.

    `workdir` receives the DAGSTER_HOME (`dagster_home/`) and the logs (`logs/`). The instance's
    storage is created before either process starts (see initialise_instance).
    """
    process_env = prepare_home(dagster_yaml, env, workdir)
    home, log_dir = workdir / "dagster_home", workdir / "logs"
    running = RunningInstance(home=home, port=port or free_port(), env=process_env, log_dir=log_dir)
    bin_dir = Path(sys.executable).parent
    commands = {
        "webserver": [
            str(bin_dir / "dagster-webserver"),
            *("-w", str(WORKSPACE), "-h", HOST, "-p", str(running.port)),
        ],
        "daemon": [str(bin_dir / "dagster-daemon"), "run", "-w", str(WORKSPACE)],
    }
    logs: list[IO[bytes]] = []
    try:
        for name, command in commands.items():
            log = open(log_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed in finally
            logs.append(log)
            running.processes[name] = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                env=process_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        running.wait_until_ready()
        yield running
    finally:
        _stop_all(list(running.processes.values()))
        for log in logs:
            log.close()


@contextmanager
def scratch_database(suffix: str = "dagster_e2e") -> Iterator[str]:
    """A fresh PostgreSQL database for the Dagster instance, next to the test database."""
    url = sa.make_url(POSTGRES_URL)
    name = f"{url.database}_{suffix}"
    admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        # dagster-postgres needs psycopg2 named (see deploy/production/dagster.yaml).
        yield url.set(drivername="postgresql+psycopg2", database=name).render_as_string(
            hide_password=False
        )
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def log_tails_on_failure(request: Any, names: tuple[str, ...]) -> Iterator[None]:
    """The body of an autouse fixture: after a failed test, the tails of the webserver's and the
    daemon's logs of each running instance the test used (fixtures `names`). Returns the
    terminal reporter when the test failed, for a caller that shows more."""
    failed_before = request.session.testsfailed
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if request.session.testsfailed == failed_before or reporter is None:
        return None
    for name in names:
        if name in request.fixturenames:
            running: RunningInstance = request.getfixturevalue(name)
            reporter.write_line(f"{name}:\n{running.log_tails()}")
    return reporter
