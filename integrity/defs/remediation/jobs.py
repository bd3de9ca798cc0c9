"""Remediation and rollback as op jobs: the core's `remediate` and `rollback`, behind run config.

`remediate` applies the latest `reconciliation_report` snapshot of one tenant partition; dry run
is the default, and writes also need INTEGRITY_ALLOW_WRITES=1 in the run's environment (the
core checks it), so a launchpad click alone cannot write to a database that was not opted in.
The Dagster run id is the remediation's run id, so every audit record points at its run.
Both jobs carry the `integrity/remediation` tag that dagster.yaml limits to one run at a time.
A remediation run whose process died (a killed run worker) is interrupted once its lease runs
out: `remediate` names it with a warning and in its metadata, and an applying run records it as
failed; `rollback` undoes it.
"""

# No `from __future__ import annotations` here: Dagster 1.13 checks the `context` parameter's
# annotation as an object (see reconciliation/assets.py).

import dataclasses
from typing import Any

import dagster as dg
import sqlalchemy as sa
from dagster import OpExecutionContext
from pydantic import Field

from integrity.defs.helpers import fail_clearly, load_report
from integrity.defs.io_managers import ParquetSnapshotIOManager
from integrity.defs.names import (
    REMEDIATE_JOB,
    REMEDIATE_OP,
    REMEDIATION_TAG,
    ROLLBACK_JOB,
    ROLLBACK_OP,
)
from integrity.defs.resources import DatabaseResource, QueueResource, SpecResource, StorageResource
from integrity.diff import ACTION_KINDS, ReconciliationReport
from integrity.inventory import ALL_TENANTS, db_error_reason
from integrity.inventory.reports import age_text
from integrity.remediation import (
    COUNT_NAMES,
    RemediationOptions,
    RemediationResult,
    completed_line,
    remediate,
)
from integrity.remediation.apply import RecheckBudgetExhausted
from integrity.remediation.ledger import (
    fail_interrupted_runs,
    read_runs,
    remediation_runs,
)
from integrity.remediation.plan import RECHECK_BUDGET_SECONDS, stale_storage
from integrity.remediation.rollback import (
    ROLLBACK_COUNTS,
    RollbackResult,
    rollback,
    rollback_completed_line,
)
from integrity.settings import Settings
from integrity.spec import check_tenant

REMEDIATION_TAGS = {REMEDIATION_TAG: "true"}
"""On both jobs; dagster.yaml's run queue allows one such run at a time."""
INTERRUPTED_IDS_SHOWN = 10


class RemediationConfig(dg.Config):
    """What to act on and how carefully. Dry run unless told otherwise."""

    dry_run: bool = Field(
        default=True,
        description="Only count what would change. Writing needs false here AND "
        "INTEGRITY_ALLOW_WRITES=1 in the environment of the run.",
    )
    kinds: list[str] = Field(
        default=list(ACTION_KINDS),
        description="Finding kinds to act on, among: " + ", ".join(ACTION_KINDS) + ".",
    )
    tenant: str = Field(
        default=ALL_TENANTS,
        description="The tenant partition whose latest reconciliation_report to apply "
        f"({ALL_TENANTS!r}: the whole-bucket report).",
    )
    status: str | None = Field(
        default=None,
        description="Only act on findings whose row or processing job is in this status.",
    )
    batch_size: int = Field(
        default=100, description="Findings per batch; each batch is one transaction (at least 1)."
    )
    concurrency: int = Field(
        default=5, description="Storage re-checks in flight at once before each batch (at least 1)."
    )
    limit: int | None = Field(
        default=None, description="Act on at most this many findings; unset means all."
    )
    max_change_ratio: float = Field(
        default=0.2,
        description="Circuit breaker: refuse to mark more than this share (0 to 1) of a table's "
        "checked rows as error; a higher share usually means a wrong bucket, endpoint or prefix.",
    )
    force: bool = Field(
        default=False,
        description="Override the circuit breaker, when the objects really are gone.",
    )
    pause: float = Field(
        default=0.0, description="Seconds to wait between batches, to spare a busy database."
    )
    recheck_budget: float = Field(
        default=RECHECK_BUDGET_SECONDS,
        description="Seconds the run's storage re-checks may take in all. When they run out, "
        "the run stops after the batch at hand and the step fails naming the run: the batches "
        "before stay applied, the rest is counted as not_verified.",
    )

    def options(self) -> RemediationOptions:
        """The core's options; bad values raise its one-line SpecError (UsageError for tenant)."""
        check_tenant(self.tenant, "tenant")
        return RemediationOptions(
            dry_run=self.dry_run,
            kinds=tuple(self.kinds),
            tenant=self.tenant,
            status=self.status,
            batch_size=self.batch_size,
            concurrency=self.concurrency,
            limit=self.limit,
            max_change_ratio=self.max_change_ratio,
            force=self.force,
            pause=self.pause,
            recheck_budget=self.recheck_budget,
        )


class RollbackConfig(dg.Config):
    """Which remediation run to undo. Dry run unless told otherwise."""

    run_id: str = Field(
        description="The remediation run to undo: its Dagster run id (the audit records' run_id)."
    )
    dry_run: bool = Field(
        default=True,
        description="Only count what would be restored. Writing needs false here AND "
        "INTEGRITY_ALLOW_WRITES=1 in the environment of the run.",
    )
    batch_size: int = Field(
        default=100, description="Audit records restored per transaction (at least 1)."
    )


def _database_failure(database: DatabaseResource, exc: sa.exc.SQLAlchemyError) -> dg.Failure:
    return dg.Failure(
        description=f"cannot write database {database.description}: {db_error_reason(exc)}"
    )


def interrupted_runs(
    context: OpExecutionContext, engine: sa.Engine, *, record: bool, lease: float
) -> list[dict[str, Any]]:
    """Earlier runs whose process died (their lease ran out), each named in a warning.

    With `record` (an applying run with the opt-in) they are recorded as failed by this run;
    otherwise they are only read, and the next applying run records them.
    """
    if record:
        runs = fail_interrupted_runs(engine, by=context.run_id, lease=lease)
        verb = "recorded as failed"
    else:
        with engine.connect() as conn:
            runs = read_runs(conn, remediation_runs.c.state == "running", lease=lease)
        runs = [run for run in runs if run["interrupted"]]
        verb = "shown as failed (the next applying run records it)"
    for run in runs:
        context.log.warning(
            f"{run['kind']} run {run['run_id']} was interrupted: its process stopped without "
            f"finishing ({run['batches'] or 0} batches applied; its lease ran out at "
            f"{run['lease_until']:%Y-%m-%d %H:%M:%S} UTC); {verb}. Its batches stay applied: "
            f"the rollback job with run_id {run['run_id']} undoes them"
        )
    return runs


def _remediation_metadata(
    report: ReconciliationReport,
    result: RemediationResult,
    queue_description: str,
    interrupted: list[dict[str, Any]],
) -> dict[str, Any]:
    ids = [run["run_id"] for run in interrupted]
    shown = ", ".join(ids[:INTERRUPTED_IDS_SHOWN]) + (
        " …" if len(ids) > INTERRUPTED_IDS_SHOWN else ""
    )
    return {
        "run_id": dg.MetadataValue.text(result.run_id),
        "dry_run": dg.MetadataValue.bool(result.dry_run),
        "scope": dg.MetadataValue.text(report.scope),
        "report_generated_at": dg.MetadataValue.text(report.generated_at.isoformat()),
        "updated": dg.MetadataValue.int(result.updated),
        **{
            f"planned/{action}": dg.MetadataValue.int(n)
            for action, n in sorted(result.planned.items())
        },
        **{name: dg.MetadataValue.int(result.counts[name]) for name in COUNT_NAMES},
        **{
            f"{name}/{action}": dg.MetadataValue.int(counts[name])
            for action, counts in sorted(result.by_action.items())
            for name in ("skipped_unverified", "not_verified")
            if counts[name]
        },
        "batches": dg.MetadataValue.int(result.batches),
        "seconds": dg.MetadataValue.float(round(result.seconds, 3)),
        "queue": dg.MetadataValue.text(queue_description),
        "interrupted_runs": dg.MetadataValue.int(len(ids)),
        "interrupted_run_ids": dg.MetadataValue.text(shown or "none"),
    }


def _counts_text(result: RemediationResult) -> str:
    return ", ".join(f"{name} {result.counts[name]}" for name in COUNT_NAMES)


@dg.op(name=REMEDIATE_OP)
def apply_remediation(
    context: OpExecutionContext,
    config: RemediationConfig,
    database: DatabaseResource,
    storage: StorageResource,
    spec: SpecResource,
    queue: QueueResource,
    snapshot_io_manager: dg.ResourceParam[ParquetSnapshotIOManager],
) -> None:
    """Apply a tenant's latest reconciliation report: mark missing files error, re-queue, retry, fix progress.

    Batched, re-checked against storage and the rows right before each write, audited under this
    run's id; refused on an incomplete report or when the circuit breaker trips.
    """
    with fail_clearly():
        options = config.options()
        report = load_report(snapshot_io_manager, config.tenant)
        reconciliation_spec = spec.load()
        store = storage.get_store()
        if store.bucket != report.bucket:
            raise dg.Failure(
                description=f"the report for {report.scope} was made on bucket {report.bucket!r}, "
                f"but storage is configured for {store.bucket!r}: check the storage "
                "configuration, or reconcile again with this one"
            )
        store.check_access()
        options = dataclasses.replace(
            options,
            inventory_max_age=storage.max_inventory_age(reconciliation_spec).total_seconds(),
        )
        work_queue = queue.get_queue()
        mode = "dry run" if options.dry_run else "applying"
        context.log.info(
            f"{mode}: report for {report.scope} from {report.generated_at.isoformat()} "
            f"({len(report.findings)} findings) on {database.description}, queue "
            f"{work_queue.description}; storage: {report.storage_source}"
            + (
                f" as of {report.storage_as_of.isoformat()} ({age_text(report.storage_as_of)} old)"
                if report.storage_as_of is not None
                else ""
            )
        )
        stale = stale_storage(report, options)
        if stale is not None:
            if not options.dry_run:
                raise dg.Failure(description=f"{stale}; nothing was changed")
            context.log.warning(f"a run that writes would be refused: {stale}")
        conf = Settings.from_env()
        lease = conf.lease_seconds()
        try:
            with database.engine() as engine:
                interrupted = interrupted_runs(
                    context, engine, record=not options.dry_run and conf.allow_writes, lease=lease
                )
                result = remediate(
                    report,
                    engine,
                    reconciliation_spec,
                    store,
                    options,
                    work_queue=work_queue,
                    run_id=context.run_id,
                    allow_writes=conf.allow_writes,
                    lease=lease,
                    on_batch=lambda n, total: context.log.debug(f"batch {n} of {total} done"),
                )
        except sa.exc.SQLAlchemyError as exc:
            raise _database_failure(database, exc) from None
        except RecheckBudgetExhausted as exc:
            context.log.info(
                ("would change " if exc.result.dry_run else "changed ") + _counts_text(exc.result)
            )
            raise dg.Failure(
                description=str(exc),
                metadata=_remediation_metadata(
                    report, exc.result, work_queue.description, interrupted
                ),
            ) from None
    context.log.info(("would change " if result.dry_run else "changed ") + _counts_text(result))
    context.add_output_metadata(
        _remediation_metadata(report, result, work_queue.description, interrupted)
    )
    context.log.info(completed_line(report, result))


@dg.op(name=ROLLBACK_OP)
def apply_rollback(
    context: OpExecutionContext, config: RollbackConfig, database: DatabaseResource
) -> None:
    """Restore the before values a remediation run audited, for rows nobody changed since.

    Conditional like the forward path, audited under this run's id; queue entries not yet
    delivered are cancelled.
    """
    with fail_clearly():
        conf = Settings.from_env()
        try:
            with database.engine() as engine:
                result: RollbackResult = rollback(
                    engine,
                    config.run_id,
                    dry_run=config.dry_run,
                    run_id=context.run_id,
                    batch_size=config.batch_size,
                    allow_writes=conf.allow_writes,
                    lease=conf.lease_seconds(),
                )
        except sa.exc.SQLAlchemyError as exc:
            raise _database_failure(database, exc) from None
    summary = result.summary()
    context.add_output_metadata(
        {
            "run_id": dg.MetadataValue.text(result.run_id),
            "rolled_back_run_id": dg.MetadataValue.text(result.target_run_id),
            "dry_run": dg.MetadataValue.bool(result.dry_run),
            **{name: dg.MetadataValue.int(summary[name]) for name in ROLLBACK_COUNTS},
            "batches": dg.MetadataValue.int(result.batches),
            "seconds": dg.MetadataValue.float(round(result.seconds, 3)),
        }
    )
    context.log.info(rollback_completed_line(result))


# One op each: executed in the run worker, not in a step process of its own that would only add
# a Python start-up (and an import of Dagster, pandas and pyarrow) to every run.
@dg.job(name=REMEDIATE_JOB, tags=REMEDIATION_TAGS, executor_def=dg.in_process_executor)
def remediate_job() -> None:
    """Apply a tenant's reconciliation report to the database (dry run by default; writes need INTEGRITY_ALLOW_WRITES=1)."""
    apply_remediation()


@dg.job(name=ROLLBACK_JOB, tags=REMEDIATION_TAGS, executor_def=dg.in_process_executor)
def rollback_job() -> None:
    """Undo a remediation run by its run id, for rows not changed since (dry run by default)."""
    apply_rollback()


remediation_jobs = [remediate_job, rollback_job]
