"""The demo in the Dagster UI: every tenant partition reconciled into a local instance.

`integrity demo` calls `materialise_demo` after building the demo, so `dagster dev` with
DAGSTER_HOME=<home>/dagster opens on a materialised reconciliation: each partition's report,
its check results and metadata, with no clicks. The runs are the real `reconcile` job executed
in this process against the demo's files; `__all__` runs last, so the asset's overview (which
shows the newest materialisation) is the whole bucket, with its per-tenant summary table.

Dagster is imported inside the functions only: the core (this module included) imports no
Dagster at module level, and `integrity reconcile` never pays for it.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from integrity.inventory import ALL_TENANTS

DAGSTER_DIR = "dagster"
"""The instance directory under the integrity home: DAGSTER_HOME for `dagster dev`."""

# The project's instance configuration, next to the package in a checkout; the fallback keeps
# what matters for the demo when the package is installed without the checkout.
_PROJECT_DAGSTER_YAML = Path(__file__).resolve().parent.parent / "dagster.yaml"
_FALLBACK_DAGSTER_YAML = "telemetry:\n  enabled: false\nnux:\n  enabled: false\n"


@dataclass
class DagsterDemo:
    """What was materialised, and where."""

    dagster_home: Path
    partitions: list[str] = field(default_factory=list)
    runs: dict[str, bool] = field(default_factory=dict)  # partition -> run succeeded
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return bool(self.runs) and all(self.runs.values())


def dagster_home(home: Path) -> Path:
    return home / DAGSTER_DIR


def prepare_instance_dir(path: Path) -> None:
    """Create the instance directory with the project's dagster.yaml, so `dagster dev` there
    has the same run queue, limits and settings as in the project root."""
    path.mkdir(parents=True, exist_ok=True)
    target = path / "dagster.yaml"
    if _PROJECT_DAGSTER_YAML.is_file():
        shutil.copyfile(_PROJECT_DAGSTER_YAML, target)
    else:
        target.write_text(_FALLBACK_DAGSTER_YAML)


def _reset_instance(path: Path) -> None:
    """A rebuilt demo starts from an empty instance: old runs describe files that are gone."""
    for name in ("history", "storage", "schedules", "logs", ".telemetry"):
        child = path / name
        if child.is_dir():
            shutil.rmtree(child)


def demo_tenants(home: Path) -> list[str]:
    """The tenant partitions of the demo under `home`, as the discovery sensor finds them."""
    import sqlalchemy as sa

    from integrity import settings
    from integrity.demo import demo_paths
    from integrity.inventory import discover_tenants
    from integrity.spec import default_spec, tenant_problem
    from integrity.storage.local import LocalStorage

    db_path, storage_dir = demo_paths(home)
    engine = sa.create_engine(f"sqlite:///{db_path}")
    try:
        store = LocalStorage(storage_dir, bucket=settings.DEMO_BUCKET)
        found = discover_tenants(store, engine, default_spec())
    finally:
        engine.dispose()
    return [t for t in found if t != ALL_TENANTS and tenant_problem(t) is None]


@contextmanager
def _dagster_home_set(path: Path) -> Iterator[None]:
    """DAGSTER_HOME=path while the instance is opened (how Dagster's public API finds one)."""
    before = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(path)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = before


def materialise_demo(
    home: Path, *, reset: bool = True, dagster_home_dir: Path | None = None
) -> DagsterDemo:
    """Run the `reconcile` job once per tenant partition, then `__all__`, into the instance at
    <home>/dagster, with resources pointing at the demo under `home`."""
    with warnings.catch_warnings():
        # The partitioned checks are a preview feature (said where they are defined); the
        # demo's terminal shows the report, not that notice.
        warnings.simplefilter("ignore", category=Warning)
        import dagster as dg

        from integrity.defs.io_managers import ParquetSnapshotIOManager
        from integrity.defs.names import RECONCILE_JOB, SNAPSHOT_IO_MANAGER, TRIGGER_TAG
        from integrity.defs.partitions import TENANTS
        from integrity.defs.reconciliation.assets import reconciliation_assets
        from integrity.defs.reconciliation.checks import reconciliation_checks
        from integrity.defs.reconciliation.jobs import reconcile_job
        from integrity.defs.resources import DatabaseResource, SpecResource, StorageResource
    from integrity.demo import demo_paths

    started = time.perf_counter()
    target = dagster_home_dir or dagster_home(home)
    if reset:
        _reset_instance(target)
    prepare_instance_dir(target)
    db_path, storage_dir = demo_paths(home)
    definitions = dg.Definitions(
        assets=reconciliation_assets,
        asset_checks=reconciliation_checks,
        jobs=[reconcile_job],
        resources={
            "storage": StorageResource(storage_dir=str(storage_dir)),
            "database": DatabaseResource(url=f"sqlite:///{db_path}"),
            "spec": SpecResource(),
            SNAPSHOT_IO_MANAGER: ParquetSnapshotIOManager(base_dir=str(home / "snapshots")),
        },
    )
    job = definitions.resolve_job_def(RECONCILE_JOB)
    partitions = [*demo_tenants(home), ALL_TENANTS]
    result = DagsterDemo(target, partitions)
    with _dagster_home_set(target), dg.DagsterInstance.get() as instance:
        known = set(instance.get_dynamic_partitions(TENANTS))
        new = [p for p in partitions if p not in known]
        if new:
            instance.add_dynamic_partitions(TENANTS, new)
        for partition in partitions:
            run = job.execute_in_process(
                partition_key=partition,
                # The terminal shows the report; the run logs are in the UI.
                run_config={"loggers": {"console": {"config": {"log_level": "ERROR"}}}},
                instance=instance,
                tags={TRIGGER_TAG: "integrity demo"},
                raise_on_error=False,
            )
            result.runs[partition] = run.success
    result.seconds = time.perf_counter() - started
    return result


def program(name: str) -> str:
    """How a fresh shell, with no virtual environment activated, calls one of this
    environment's programs: its path, relative to the working directory when inside it."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        return name
    try:
        return str(path.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path.absolute())


def dev_command(home: Path, target: Path) -> str:
    """The exact command that opens the UI on the instance at `target`, from the working
    directory; INTEGRITY_HOME too when the demo is not the default ./.integrity."""

    def shown(path: Path) -> str:
        try:
            return "$PWD/" + str(path.relative_to(Path.cwd()))
        except ValueError:
            return str(path)

    prefix = ""
    if home != (Path.cwd() / ".integrity").absolute():
        prefix = f"INTEGRITY_HOME={shown(home)} "
    return f"{prefix}DAGSTER_HOME={shown(target)} {program('dagster')} dev"


def closing_hints(home: Path, ui: DagsterDemo, *, overriding: Sequence[str] = ()) -> str:
    """What to run next, as commands that work in a fresh shell from the working directory,
    naming the variables set (`overriding`) that would point `dagster dev` elsewhere."""
    from integrity import settings

    integrity = program("integrity")
    failed = [p for p, ok in ui.runs.items() if not ok]
    lines = [
        f"Dagster: {len(ui.runs) - len(failed)} of {len(ui.runs)} tenant partitions reconciled "
        f"into {ui.dagster_home} in {ui.seconds:.1f} s. See them in the UI (http://127.0.0.1:3000):",
        f"  `{dev_command(home, ui.dagster_home)}`",
        f"Heal it: review `{integrity} reconcile`, then `{settings.ENV_ALLOW_WRITES}=1 "
        f"{integrity} reconcile --apply` (docs/remediation.md).",
    ]
    if failed:
        lines.insert(1, f"  (failed: {', '.join(failed)}; the run logs are in the UI)")
    if overriding:
        lines.append(
            f"  (unset {', '.join(overriding)}: they point dagster dev away from the demo)"
        )
    return "\n".join(lines)
