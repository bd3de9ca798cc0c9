"""`integrity reconcile`: validate every input, reconcile, and with --apply remediate.

Imports no Dagster: the core only, and its heavy parts (the diff engine, the remediation
package, boto3) only when this run needs them.
"""

from __future__ import annotations

import argparse
import sys
import uuid
from typing import TYPE_CHECKING, Any

from integrity import connections, settings
from integrity.cli.common import (
    EXIT_ERROR,
    EXIT_INCOMPLETE,
    EXIT_STOPPED,
    LIST_CONCURRENCY,
    _count,
    _error,
)
from integrity.cli.inputs import (
    _check_report_path,
    make_work_queue,
    open_inventory,
    queue_location,
    remediation_options,
    require_writes,
    resolve_store,
)
from integrity.cli.output import Progress, Remediation, _BatchProgress, _completed, _emit
from integrity.durations import parse_duration
from integrity.errors import IntegrityError, RemediationRefused, UsageError
from integrity.kinds import KINDS
from integrity.settings import Settings

if TYPE_CHECKING:
    import sqlalchemy as sa

    from integrity.diff import ReconciliationReport
    from integrity.storage.base import ObjectStore


def run_reconciliation(
    store: ObjectStore,
    engine: sa.Engine,
    spec: Any,
    options: Any,
    *,
    concurrency: int = 8,
    progress: bool = False,
    inventory_report: Any = None,
    limits: Any = None,
) -> ReconciliationReport:
    """The core's reconcile, with the progress line when asked for."""
    from integrity.reconcile import reconcile

    display = Progress(sys.stderr) if progress else None
    try:
        return reconcile(
            store,
            engine,
            spec,
            options,
            concurrency=concurrency,
            on_progress=display,
            inventory_report=inventory_report,
            limits=limits,
        )
    finally:
        if display is not None:
            display.close()


def _cli_wording(message: str) -> str:
    """The core speaks in option names (max_change_ratio, force); the CLI user types flags."""
    return (
        message.replace("max_change_ratio", "--max-change-ratio")
        .replace("run again with force", "run again with --force")
        .replace(" (or leave dry_run on)", "")
    )


def preview(report: ReconciliationReport, options: Any) -> Remediation:
    """A dry run's view of --apply: findings per action it would hand over, or why it would refuse.

    No storage re-check and no row is read: the planning step only (cheap at any size)."""
    from integrity.remediation.plan import plan_remediation, stale_storage

    if not report.complete:
        return Remediation()
    stale = stale_storage(report, options)
    if stale is not None:
        return Remediation(refused=stale)
    try:
        plan = plan_remediation(report, options)
    except RemediationRefused as exc:
        return Remediation(refused=_cli_wording(str(exc)))
    actions = dict.fromkeys(KINDS[k].action for k in KINDS.action_kinds)
    return Remediation(planned={a: int((plan["action"] == a).sum()) for a in actions})


def apply_remediation(
    report: ReconciliationReport,
    engine: sa.Engine,
    spec: Any,
    store: ObjectStore,
    options: Any,
    work_queue: Any,
    *,
    progress: bool = False,
    allow_writes: bool = False,
    lease: float | None = None,
) -> Remediation:
    """Run the core's remediation; a refusal is returned (the caller prints it), failures raise.

    Runs whose process died (their lease ran out) are recorded as failed first, and named."""
    from integrity.remediation.apply import RecheckBudgetExhausted, remediate
    from integrity.remediation.ledger import DEFAULT_LEASE_SECONDS, fail_interrupted_runs

    lease = DEFAULT_LEASE_SECONDS if lease is None else lease
    run_id = uuid.uuid4().hex
    interrupted = fail_interrupted_runs(engine, by=run_id, lease=lease)
    display = _BatchProgress(sys.stderr if progress else None)
    try:
        result = remediate(
            report,
            engine,
            spec,
            store,
            options,
            work_queue=work_queue,
            run_id=run_id,
            allow_writes=allow_writes,
            lease=lease,
            on_batch=display,
        )
    except RemediationRefused as exc:
        return Remediation(
            refused=_cli_wording(str(exc)), queue=work_queue.description, interrupted=interrupted
        )
    except RecheckBudgetExhausted as exc:
        undo = f"; `integrity rollback --run-id {run_id}` undoes them" if exc.result.updated else ""
        return Remediation(
            result=exc.result,
            queue=work_queue.description,
            stopped=f"{exc}{undo}",
            interrupted=interrupted,
        )
    except IntegrityError as exc:
        if display.applied:  # say which run to roll back what was applied
            raise type(exc)(
                f"{exc} (remediation run {run_id}; `integrity rollback --run-id {run_id}` "
                "undoes its applied batches)"
            ) from None
        raise
    finally:
        display.close()
    return Remediation(result=result, queue=work_queue.description, interrupted=interrupted)


def cmd_reconcile(args: argparse.Namespace, conf: Settings) -> int:
    """Validate every input first (the cheap checks before the heavy work), reconcile, and with
    --apply remediate what was found."""
    from integrity.spec import check_tenant

    min_age = parse_duration(args.min_age, option="--min-age")
    stuck_after = parse_duration(args.stuck_after, option="--stuck-after")
    check_tenant(args.tenant, "--tenant")
    if args.concurrency is not None and args.concurrency < 1:
        raise UsageError(f"--concurrency: must be at least 1, not {args.concurrency}")
    report_path = _check_report_path(args.report)
    if args.bucket and args.storage_dir:
        raise UsageError("--bucket and --storage-dir are mutually exclusive: choose one storage")
    queue_url = args.queue_url or (conf.queue_url if args.apply else None)
    if queue_url:
        queue_location(queue_url, "--queue-url" if args.queue_url else settings.ENV_QUEUE_URL)
    options = remediation_options(args, dry_run=not args.apply)
    max_age_option = (
        "--inventory-max-age" if args.inventory_max_age else settings.ENV_INVENTORY_MAX_AGE
    )
    if args.inventory_max_age:
        max_age = parse_duration(args.inventory_max_age, option=max_age_option)
    else:
        max_age = conf.inventory_max_age_delta()
    lease = conf.lease_seconds() if args.apply else None
    limits = connections.engine_limits(conf)
    if args.apply:
        require_writes("integrity reconcile --apply", conf)

    import dataclasses

    from integrity.diff import DiffOptions
    from integrity.inventory import safe_url
    from integrity.spec import load_spec

    spec = load_spec(args.spec or conf.spec)
    if max_age is None:
        max_age = spec.inventory_report.max_age_delta
    options = dataclasses.replace(options, inventory_max_age=max_age.total_seconds())
    db_url, db_option = connections.db_url(conf, args.db_url)
    store = resolve_store(args, conf)
    inventory_report = open_inventory(args, conf, spec, store)
    if inventory_report is not None and args.apply:
        from integrity.inventory.reports import too_old

        stale = too_old(inventory_report.source, inventory_report.created_at, max_age)
        if stale is not None:
            raise RemediationRefused(f"--apply: {stale}; nothing was changed")
    engine = connections.make_engine(db_url, option=db_option, conf=conf)
    work_queue = None
    if args.apply:
        work_queue = make_work_queue(queue_url, conf)
        if set(KINDS.queueing_kinds) & set(options.kinds):
            work_queue.check_access()  # a wrong queue fails now, not after a long listing
    try:
        diff = DiffOptions(
            min_age=min_age, stuck_after=stuck_after, tenant=args.tenant, status=args.status
        )
        report = run_reconciliation(
            store,
            engine,
            spec,
            diff,
            concurrency=args.concurrency or LIST_CONCURRENCY,
            progress=sys.stderr.isatty(),
            inventory_report=inventory_report,
            limits=limits,
        )
        if args.apply:
            remediation = apply_remediation(
                report,
                engine,
                spec,
                store,
                options,
                work_queue,
                progress=sys.stderr.isatty(),
                allow_writes=conf.allow_writes,
                lease=lease,
            )
        else:
            remediation = preview(report, options)
    finally:
        engine.dispose()
    if report_path is not None:
        report.export(report_path)
    code = _emit(
        report,
        args,
        source=store.description,
        database=safe_url(db_url),
        remediation=remediation,
        inventory_skipped=inventory_report.skipped if inventory_report is not None else (),
    )
    if report_path is not None and not args.json:
        print(f"report written to {report_path} ({_count(len(report.findings), 'finding')})")
    if args.apply and remediation.refused:
        sys.stdout.flush()
        return _error(remediation.refused, EXIT_ERROR if report.complete else EXIT_INCOMPLETE)
    if remediation.stopped:
        sys.stdout.flush()
        return _error(remediation.stopped, EXIT_STOPPED)
    _completed(report, remediation)
    return code
