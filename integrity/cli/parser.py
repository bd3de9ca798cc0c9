"""The `integrity` argument parser: commands, flags and their help (imports nothing heavy)."""

from __future__ import annotations

import argparse
from typing import NoReturn

from integrity import settings
from integrity.cli.common import (
    _ACTION_KINDS,
    _MIN_AGE,
    _STUCK_AFTER,
    EXIT_STOPPED,
    EXIT_USAGE,
    LIST_CONCURRENCY,
    PROG,
    RECHECK_CONCURRENCY,
    _one_line,
)


def _text(value: str) -> str:
    """A flag's text value: an empty one is refused, never taken as 'use the default'."""
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the full usage is one `--help` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(
            EXIT_USAGE, f"{self.prog}: error: {_one_line(message)} (see '{self.prog} --help')\n"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Reconcile object storage with the database that references it.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    rec = commands.add_parser(
        "reconcile",
        help="report drift between storage and the database (with --apply: and heal it)",
        description="Report drift between storage and the database. A dry run unless --apply is "
        f"given (which also needs {settings.ENV_ALLOW_WRITES}=1 in the environment). "
        "Exit status: 0 complete report, 3 incomplete report (with --apply: refused), "
        "4 --apply stopped when the storage re-checks ran out of --recheck-budget (the batches "
        "before stay applied; the error line names the run), "
        "2 usage or spec error, 1 other error (a refused --apply among them).",
    )
    rec.add_argument(
        "--db-url",
        metavar="URL",
        type=_text,
        help=f"SQLAlchemy database URL (env {settings.ENV_DB_URL}; default: the demo SQLite file)",
    )
    where = rec.add_argument_group("storage (one of)")
    where.add_argument(
        "--bucket",
        metavar="NAME",
        type=_text,
        help=f"S3-compatible bucket (env {settings.ENV_BUCKET})",
    )
    where.add_argument(
        "--endpoint-url",
        metavar="URL",
        type=_text,
        help=f"S3 endpoint for MinIO, R2, ... (env {settings.ENV_ENDPOINT_URL}_S3, else "
        f"{settings.ENV_ENDPOINT_URL}); never used for the queue",
    )
    where.add_argument(
        "--region",
        metavar="REGION",
        type=_text,
        help="S3 region, 'auto' for R2 (default: AWS_REGION, else the AWS configuration)",
    )
    where.add_argument(
        "--storage-dir",
        metavar="DIR",
        type=_text,
        help=f"a local directory standing in for the bucket (env {settings.ENV_STORAGE_DIR}; "
        "default: the demo storage directory)",
    )
    where.add_argument(
        "--inventory",
        metavar="SOURCE",
        type=_text,
        help="read storage from an S3 Inventory report instead of listing it: a manifest.json "
        "(s3:// or a path) or a destination s3://dest/prefix/source-bucket/config-id/ (or a "
        f"directory laid out so), whose newest complete report is taken (env "
        f"{settings.ENV_INVENTORY}; else the spec's inventory_report.source)",
    )
    where.add_argument(
        "--inventory-max-age",
        metavar="DURATION",
        help="an inventory report older than this does not drive --apply (env "
        f"{settings.ENV_INVENTORY_MAX_AGE}; else the spec's inventory_report.max_age; default 48h)",
    )
    rec.add_argument(
        "--spec",
        metavar="FILE",
        type=_text,
        help=f"reconciliation spec, YAML or JSON (env {settings.ENV_SPEC})",
    )
    for age in (_MIN_AGE, _STUCK_AFTER):
        rec.add_argument(age.flag, metavar="DURATION", default=age.default, help=age.help_text)
    rec.add_argument(
        "--tenant",
        "--project-id",
        dest="tenant",
        metavar="ID",
        help="reconcile (and remediate) one tenant only; --project-id is an alias",
    )
    rec.add_argument(
        "--status",
        metavar="S",
        help="report (and act on) only findings whose row or job has this status",
    )
    rec.add_argument(
        "--concurrency",
        metavar="N",
        type=int,
        help=f"storage requests at once: prefixes listed (default {LIST_CONCURRENCY}) and, with "
        f"--apply, objects re-checked before each batch (default {RECHECK_CONCURRENCY})",
    )
    rec.add_argument(
        "--json", action="store_true", help="print one JSON object instead of the summary"
    )
    rec.add_argument(
        "--report", metavar="FILE", type=_text, help="write every finding to FILE (.csv or .jsonl)"
    )
    _add_remediation_arguments(rec)

    demo = commands.add_parser(
        "demo",
        help="build a local demo (SQLite, a storage directory, planted drift) and reconcile it",
        description="Build a local demo environment under the integrity home (SQLite, a storage "
        "directory with real Deep Zoom pyramids, planted drift of every kind), then reconcile it.",
    )
    demo.add_argument(
        "--home",
        metavar="DIR",
        type=_text,
        help=f"where to build it (env {settings.ENV_HOME}; default ./.integrity)",
    )
    demo.add_argument(
        "--no-reset", action="store_true", help="keep an existing demo instead of rebuilding it"
    )
    demo.add_argument(
        "--json", action="store_true", help="print the report summary as one JSON object"
    )

    rb = commands.add_parser(
        "rollback",
        help="undo a remediation run from its audit records (a dry run unless --apply)",
        description="Restore the values a remediation run changed, for rows not changed since; "
        "remove the job rows it created and cancel its queue entries not yet delivered. A dry "
        f"run unless --apply is given (which also needs {settings.ENV_ALLOW_WRITES}=1). "
        "Exit status: 0 done, 2 usage error, 1 any other error (an unknown run id, say).",
    )
    which = rb.add_mutually_exclusive_group(required=True)
    which.add_argument("--run-id", metavar="ID", help="the remediation run to undo (see --list)")
    which.add_argument(
        "--list", action="store_true", help="list the latest remediation and rollback runs"
    )
    mode = rb.add_mutually_exclusive_group()
    mode.add_argument(
        "--apply",
        action="store_true",
        help=f"restore for real (needs {settings.ENV_ALLOW_WRITES}=1 in the environment)",
    )
    mode.add_argument(
        "--dry-run", action="store_true", help="show what would be restored (the default)"
    )
    rb.add_argument(
        "--db-url",
        metavar="URL",
        type=_text,
        help=f"SQLAlchemy database URL (env {settings.ENV_DB_URL}; default: the demo SQLite file)",
    )
    rb.add_argument(
        "--batch-size",
        metavar="N",
        type=int,
        default=100,
        help="audit records restored per transaction (default 100)",
    )
    rb.add_argument(
        "--last",
        metavar="N",
        type=int,
        default=20,
        help="with --list: how many runs to show (default 20)",
    )
    rb.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _add_remediation_arguments(rec: argparse.ArgumentParser) -> None:
    """The flags of `reconcile --apply`; without --apply they shape the preview of what it would do."""
    group = rec.add_argument_group(
        "remediation",
        f"Acting on the report needs --apply and {settings.ENV_ALLOW_WRITES}=1 in the environment.",
    )
    mode = group.add_mutually_exclusive_group()
    mode.add_argument(
        "--apply",
        action="store_true",
        help="after the diff, fix what it found: mark rows error, requeue, retry, fix progress",
    )
    mode.add_argument(
        "--dry-run",
        action="store_true",
        help="report and change nothing (the default; for scripts that say so)",
    )
    group.add_argument(
        "--kinds",
        metavar="K1,K2",
        help="finding kinds to act on (default all: " + ", ".join(_ACTION_KINDS) + ")",
    )
    group.add_argument(
        "--batch-size",
        metavar="N",
        type=int,
        default=100,
        help="findings per batch; each batch is one transaction (default 100)",
    )
    group.add_argument(
        "--limit", metavar="N", type=int, help="act on at most N findings (default all)"
    )
    group.add_argument(
        "--max-change-ratio",
        metavar="R",
        type=float,
        default=0.2,
        help="circuit breaker: refuse to mark more than this share of a table's rows as error "
        "(0 to 1, default 0.2)",
    )
    group.add_argument(
        "--force", action="store_true", help="override the circuit breaker (the objects are gone)"
    )
    group.add_argument(
        "--pause",
        metavar="DURATION",
        default="0",
        help="wait this long between batches, to spare a busy database (default 0)",
    )
    group.add_argument(
        "--recheck-budget",
        metavar="DURATION",
        default="5m",
        help="time the storage re-checks of a run may take in all (default 5m); when it runs "
        f"out the run stops after the batch at hand, with exit status {EXIT_STOPPED}",
    )
    group.add_argument(
        "--queue-url",
        metavar="URL",
        type=_text,
        help=f"SQS queue for re-queued objects (env {settings.ENV_QUEUE_URL}; default: the "
        "integrity_queue table in the database)",
    )
