"""`integrity rollback`: undo a remediation run from its audit records, or list the runs."""

from __future__ import annotations

import argparse
import json
import sys

from integrity import connections
from integrity.cli.common import EXIT_OK, MAX_BATCH_SIZE, MAX_LAST
from integrity.cli.inputs import require_writes
from integrity.cli.output import format_rollback, format_runs
from integrity.errors import RemediationRefused, UsageError
from integrity.settings import Settings


def cmd_rollback(args: argparse.Namespace, conf: Settings) -> int:
    """Undo a remediation run from its audit records (a dry run unless --apply), or list runs."""
    if args.batch_size < 1:
        raise UsageError(f"--batch-size: must be at least 1, not {args.batch_size}")
    if args.batch_size > MAX_BATCH_SIZE:
        raise UsageError(
            f"--batch-size: must be at most {MAX_BATCH_SIZE:,}, not {args.batch_size:,}"
        )
    if args.last < 1:
        raise UsageError(f"--last: must be at least 1, not {args.last}")
    if args.last > MAX_LAST:
        raise UsageError(f"--last: must be at most {MAX_LAST:,}, not {args.last:,}")
    if args.list and args.apply:
        raise UsageError("--apply: goes with --run-id, not with --list")
    run_id = args.run_id.strip() if args.run_id is not None else None
    if args.run_id is not None and not run_id:
        raise UsageError("--run-id: must not be empty (see 'integrity rollback --list')")
    if args.apply:
        require_writes(f"integrity rollback --run-id {run_id} --apply", conf)

    from integrity.inventory import safe_url
    from integrity.remediation.rollback import TargetStillRunning, rollback, run_history

    db_url, option = connections.db_url(conf, args.db_url)
    database = safe_url(db_url)
    engine = connections.make_engine(db_url, option=option, conf=conf)
    lease = conf.lease_seconds()
    try:
        if args.list:
            runs = run_history(engine, args.last, lease=lease)
        else:
            try:
                result = rollback(
                    engine,
                    run_id,
                    dry_run=not args.apply,
                    batch_size=args.batch_size,
                    allow_writes=conf.allow_writes,
                    lease=lease,
                )
            except TargetStillRunning:
                raise
            except RemediationRefused as exc:
                known = [r for r in run_history(engine, 1000, lease=lease) if r["run_id"] == run_id]
                if known and known[0]["state"] == "running":
                    raise RemediationRefused(
                        f"run {run_id} is still running and has no audit records yet: "
                        "nothing to roll back so far"
                    ) from None
                if known:
                    raise RemediationRefused(
                        f"run {run_id} changed nothing (no audit records), so there is "
                        "nothing to roll back"
                    ) from None
                raise RemediationRefused(
                    f"{exc} ('integrity rollback --list' shows the recent runs)"
                ) from None
    finally:
        engine.dispose()
    if args.list:
        print(format_runs(runs, database=database, as_json=args.json))
        return EXIT_OK
    summary = {**result.summary(), "seconds": round(result.seconds, 3)}
    if args.json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        print(format_rollback(result, database=database))
    from integrity.remediation.rollback import rollback_completed_line

    print(rollback_completed_line(result), file=sys.stderr, flush=True)
    return EXIT_OK
