"""The `integrity` command: reconciliation from a terminal (a dry run unless --apply), rollback
of a remediation run, and the demo.

Every failure a user can cause (a bad flag, a bad duration, an unreachable database, a missing
bucket, a spec error, a refused remediation) ends with one line on stderr and a non-zero exit,
never a traceback. Exit codes: 0 complete report, 3 incomplete report (with --apply: refused,
nothing changed), 4 --apply stopped because the storage re-checks ran out of their time budget
(the batches before stay applied), 2 usage error (a bad flag, environment value or spec), 1 any
other error (remediation refused by the missing opt-in or the circuit breaker, among others). A
run that finishes ends with one structured JSON log line on stderr ("msg": "reconcile: completed" or "rollback: completed")
carrying its counts.
Heavy imports (pandas, SQLAlchemy, boto3) happen inside the commands so `--help` is fast.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO
from urllib.parse import urlsplit

from integrity import settings
from integrity.durations import format_duration, parse_duration
from integrity.errors import (
    DatabaseError,
    IntegrityError,
    RemediationRefused,
    SpecError,
    UsageError,
)
from integrity.errors import shown as _shown
from integrity.errors import without_userinfo as _without_userinfo
from integrity.kinds import KINDS, AgeSetting, KindRegistry

if TYPE_CHECKING:
    import sqlalchemy as sa

    from integrity.diff import ReconciliationReport
    from integrity.storage.base import ObjectStore

PROG = "integrity"
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INCOMPLETE = 0, 1, 2, 3
EXIT_STOPPED = 4  # --apply stopped: the re-check budget ran out; the applied batches stay
REPORT_SUFFIXES = (".csv", ".jsonl")
LIST_CONCURRENCY, RECHECK_CONCURRENCY = 8, 5
# Upper bounds of the count flags: a batch is one transaction and one statement's parameters
# (PostgreSQL takes at most 65,535), and a listing of runs is read at once.
MAX_BATCH_SIZE, MAX_LAST = 10_000, 100_000
# The finding kinds remediation acts on, from integrity.kinds (no pandas import for `--help`).
_ACTION_KINDS = KINDS.action_kinds
_MIN_AGE, _STUCK_AFTER = KINDS.age("min_age"), KINDS.age("stuck_after")


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


# --------------------------------------------------------------------------- arguments


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
    rec.set_defaults(handler=cmd_reconcile)

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
    demo.set_defaults(handler=cmd_demo)

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
    rb.set_defaults(handler=cmd_rollback)
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


# --------------------------------------------------------------------------- helpers


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def _db_url_option(args: argparse.Namespace) -> str:
    """Where the database URL came from, for messages: the flag, else the environment."""
    return "--db-url" if args.db_url or not _env(settings.ENV_DB_URL) else settings.ENV_DB_URL


def _check_report_path(path: str | None) -> Path | None:
    """Refuse a report path before any work is done, rather than after a long listing."""
    if path is None:
        return None
    target = Path(path).expanduser()
    if target.suffix not in REPORT_SUFFIXES:
        raise UsageError(f"--report: {path!r} must end in .csv or .jsonl")
    try:
        if target.is_dir():
            raise UsageError(f"--report: {path!r} is a directory")
        parent = target.absolute().parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise UsageError(
                f"--report: cannot write {path!r} ({parent} is not a writable directory)"
            )
        _probe_writable(target.absolute(), parent)
    except OSError as exc:  # a name too long, a read-only mount, a pseudo file system
        raise UsageError(f"--report: cannot write {path!r} ({exc.strerror or exc})") from None
    return target


def _probe_writable(target: Path, existing: Path) -> None:
    """Open the report file (or a scratch file where it will go) the way the export will, and
    leave nothing behind: permissions alone miss a read-only mount, a pseudo file system, a
    name too long and, for root, every mode bit."""
    if target.exists():
        if target.is_file():
            os.close(os.open(target, os.O_WRONLY | os.O_APPEND))
        return
    if existing == target.parent:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        target.unlink()
        return
    import tempfile

    tempfile.TemporaryFile(dir=existing).close()
    name_max = os.pathconf(existing, "PC_NAME_MAX")
    for part in target.relative_to(existing).parts:
        if len(os.fsencode(part)) > name_max:
            raise OSError(36, "File name too long")


def make_engine(url: str, *, option: str = "--db-url") -> sa.Engine:
    """An engine for the URL, with a readable error for a missing SQLite file or a bad URL.

    `option` is where the URL came from (the flag or the environment variable), for messages;
    the URL itself is shown only with its password hidden, or not at all when unparseable."""
    import sqlalchemy as sa

    from integrity.database import database_url
    from integrity.inventory import safe_url

    try:
        parsed = database_url(url)
    except sa.exc.ArgumentError:
        raise UsageError(
            f"{option}: not a valid SQLAlchemy URL (e.g. postgresql://user@host/db)"
        ) from None
    except ValueError:  # SQLAlchemy reads the port with int(): 'h:notaport', '[::1' unclosed
        raise UsageError(
            f"{option}: not a valid SQLAlchemy URL: the port must be a number "
            "(e.g. postgresql://user@host:5432/db)"
        ) from None
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise UsageError(
            f"{option}: {safe_url(parsed)}: port {parsed.port} is not between 1 and 65535"
        )
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        local_file = database and database != ":memory:" and not database.startswith("file:")
        if local_file and Path(database).is_dir():
            raise UsageError(f"{option}: {database} is a directory, not a SQLite database file")
        if local_file and not Path(database).is_file():
            hint = (
                " (run 'integrity demo' to create it)" if url == settings.default_db_url() else ""
            )
            raise DatabaseError(f"database file {database} does not exist{hint}")
    try:
        return sa.create_engine(parsed)
    except sa.exc.ArgumentError as exc:
        reason = str(exc).splitlines()[0][:200]
        raise UsageError(f"{option}: {safe_url(url)}: {reason}") from None
    except ImportError as exc:
        raise DatabaseError(
            f"no driver for {safe_url(url)}: {exc.name or exc} is not installed"
        ) from None


def make_s3_store(bucket: str, endpoint_url: str | None, region: str | None) -> ObjectStore:
    """An S3Storage on the storage client the Dagster resources use too (standard credentials)."""
    from integrity.storage.s3 import S3Storage, s3_client

    return S3Storage(s3_client(endpoint_url, region), bucket)


def resolve_store(args: argparse.Namespace) -> ObjectStore:
    """--bucket or --storage-dir (flags win over the environment; both flags is an error)."""
    from integrity.storage.local import LocalStorage

    if args.bucket and args.storage_dir:
        raise UsageError("--bucket and --storage-dir are mutually exclusive: choose one storage")
    bucket = args.bucket or (None if args.storage_dir else _env(settings.ENV_BUCKET))
    if bucket:
        check_bucket_name(bucket, "--bucket" if args.bucket else settings.ENV_BUCKET)
        if args.endpoint_url:
            check_endpoint_url(args.endpoint_url, "--endpoint-url")
        else:
            for name in (f"{settings.ENV_ENDPOINT_URL}_S3", settings.ENV_ENDPOINT_URL):
                if _env(name):
                    check_endpoint_url(_env(name), name)
                    break
        if args.region:
            check_region(args.region, "--region")
        # Without --endpoint-url, AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL apply (boto3's order).
        return make_s3_store(bucket, args.endpoint_url, args.region)
    if args.endpoint_url or args.region:
        raise UsageError("--endpoint-url and --region need --bucket")
    if args.storage_dir or _env(settings.ENV_STORAGE_DIR):
        check_storage_dir(
            settings.default_storage_dir() if not args.storage_dir else Path(args.storage_dir),
            "--storage-dir" if args.storage_dir else settings.ENV_STORAGE_DIR,
        )
    return LocalStorage(args.storage_dir or settings.default_storage_dir())


def open_inventory(args: argparse.Namespace, spec: Any, store: ObjectStore) -> Any:
    """The inventory report storage is read from (--inventory, else INTEGRITY_INVENTORY, else
    the spec's inventory_report.source), resolved and checked against the bucket; None: list."""
    from integrity.inventory.reports import open_report
    from integrity.storage.s3 import s3_client

    if args.inventory:
        source, option = args.inventory, "--inventory"
    elif _env(settings.ENV_INVENTORY):
        source, option = _env(settings.ENV_INVENTORY), settings.ENV_INVENTORY
    elif spec.inventory_report.source:
        source, option = spec.inventory_report.source, "inventory_report.source"
    else:
        return None
    client = getattr(store, "client", None) if store.backend == "s3" else None
    report = open_report(
        source,
        client=client,
        client_factory=lambda: s3_client(args.endpoint_url, args.region),
        option=option,
    )
    report.check_bucket(store.bucket)
    return report


# botocore's own rules: a bucket name as its parameter validation accepts it, a region name as
# its endpoint resolver does.
_BUCKET_NAME = re.compile(r"[A-Za-z0-9.\-_]{1,255}")
_REGION_NAME = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9\-]{0,61}[a-zA-Z0-9])?")


def check_bucket_name(bucket: str, option: str) -> None:
    if not _BUCKET_NAME.fullmatch(bucket):
        raise UsageError(
            f"{option}: {_shown(bucket)} is not a bucket name (letters, digits, '.', '-', '_')"
        )


def check_region(region: str, option: str) -> None:
    if not _REGION_NAME.fullmatch(region):
        raise UsageError(f"{option}: {_shown(region)} is not a region name (e.g. us-east-1, auto)")


def check_endpoint_url(url: str, option: str) -> None:
    """An S3 endpoint is http(s)://host[:port][/path]; botocore's own error for anything else
    ("Invalid endpoint") names neither the flag nor what is missing. Credentials in it are
    refused without showing them."""

    example = "(e.g. http://127.0.0.1:9000 or https://ACCOUNT.r2.cloudflarestorage.com)"
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise UsageError(
            f"{option}: {_shown(_without_userinfo(url))} is not a URL {example}"
        ) from None
    if parts.username is not None or parts.password is not None:
        raise UsageError(
            f"{option}: must not carry credentials (use AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY or a profile)"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(
            f"{option}: {_shown(url)} is not an http:// or https:// URL with a host {example}"
        )
    if port is not None and not 1 <= port <= 65535:
        raise UsageError(f"{option}: port {port} is not between 1 and 65535")


def check_storage_dir(directory: Path, option: str) -> None:
    directory = directory.expanduser()
    if not directory.exists():
        raise UsageError(f"{option}: {directory} does not exist")
    if not directory.is_dir():
        raise UsageError(f"{option}: {directory} is not a directory")
    if not os.access(directory, os.R_OK | os.X_OK):
        raise UsageError(f"{option}: {directory} is not readable")


class Progress:
    """A `\\r`-updated line on stderr with objects listed and rows read; safe across threads."""

    def __init__(self, stream: TextIO, interval: float = 0.1) -> None:
        self.stream = stream
        self.interval = interval
        self.counts = {"objects": 0, "rows": 0}
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.last = 0.0
        self.shown = False

    def __call__(self, kind: str, n: int) -> None:
        with self.lock:
            self.counts[kind] = self.counts.get(kind, 0) + n
            now = time.monotonic()
            if now - self.last >= self.interval:
                self.last = now
                self._render(now)

    def _render(self, now: float) -> None:
        line = (
            f"listing: {self.counts['objects']:,} objects, reading: {self.counts['rows']:,} rows"
            f" ({now - self.started:.1f} s)"
        )
        self.stream.write("\r" + line + "\x1b[K")
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        with self.lock:
            if self.shown:
                self.stream.write("\r\x1b[K")
                self.stream.flush()


def run_reconciliation(
    store: ObjectStore,
    engine: sa.Engine,
    spec: Any,
    options: Any,
    *,
    concurrency: int = 8,
    progress: bool = False,
    inventory_report: Any = None,
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
        )
    finally:
        if display is not None:
            display.close()


def _short(text: object, width: int, *, tail: bool = False) -> str:
    """Trim to width; keys keep their tail (the file name says more than the prefix)."""
    value = "" if text is None else str(text)
    if len(value) <= width:
        return value
    return "…" + value[-(width - 1) :] if tail else value[: width - 1] + "…"


# --------------------------------------------------------------------------- remediation

# What each count of a remediation run means, in the order the summary shows them.
REMEDIATION_COUNTS: dict[str, str] = {
    "marked_error": "rows marked error: their object is missing",
    "progress_fixed": "plans given the page count found in storage",
    "jobs_created": "processing jobs created (not_started) for unprocessed uploads",
    "jobs_reset": "processing jobs set back to not_started",
    "retried": "stuck jobs set back to not_started with one more attempt",
    "requeued": "objects queued for processing",
    "already_queued": "objects already waiting in the queue: not queued twice",
    "skipped_changed": "rows changed since the inventory: left as they are",
    "skipped_present": "objects found on the re-check: not marked error",
    "skipped_appeared": "objects stored while their batch was written: not marked error",
    "skipped_gone": "objects gone on the re-check: not queued",
    "skipped_unverified": "objects whose re-check failed: left alone (audited with the reason)",
    "not_verified": "findings the re-check budget left no time for: left alone",
}
ROLLBACK_COUNTS: dict[str, str] = {
    "restored": "rows given back their values from before the run",
    "removed": "rows the run created, removed",
    "unchanged": "records that changed nothing (a queue entry only)",
    "skipped_changed": "rows changed since the run: left as they are",
    "queue_cancelled": "queue entries not yet delivered: cancelled",
    "queue_already_delivered": "queue entries already sent or taken: cannot be recalled",
}


@dataclass
class Remediation:
    """What remediation did after the diff (`result`, with --apply) or would do (`planned`)."""

    result: Any = None  # integrity.remediation.RemediationResult, when applied
    planned: dict[str, int] | None = None  # findings per action a dry run would hand to --apply
    refused: str | None = None  # why --apply is (or would be) refused
    queue: str | None = None  # where re-queued objects go
    # earlier runs found interrupted (their lease ran out) and recorded as failed by --apply
    interrupted: list[dict[str, Any]] = field(default_factory=list)
    stopped: str | None = None  # the error line of an --apply the re-check budget stopped


def _parse_kinds(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    kinds = tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    if not kinds:
        raise UsageError(f"--kinds: name at least one kind ({', '.join(_ACTION_KINDS)})")
    return kinds


def remediation_options(args: argparse.Namespace, *, dry_run: bool) -> Any:
    """RemediationOptions from the flags; the core's one-line errors, named after the flags."""
    from integrity.remediation import RemediationOptions

    kinds = _parse_kinds(args.kinds)
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit: must be at least 1, not {args.limit}")
    if args.batch_size > MAX_BATCH_SIZE:
        raise UsageError(
            f"--batch-size: must be at most {MAX_BATCH_SIZE:,}, not {args.batch_size:,}"
        )
    pause = parse_duration(args.pause, option="--pause").total_seconds()
    budget = parse_duration(args.recheck_budget, option="--recheck-budget").total_seconds()
    try:
        return RemediationOptions(
            dry_run=dry_run,
            **({"kinds": kinds} if kinds is not None else {}),
            tenant=args.tenant,
            status=args.status,
            batch_size=args.batch_size,
            concurrency=args.concurrency or RECHECK_CONCURRENCY,
            limit=args.limit,
            max_change_ratio=args.max_change_ratio,
            force=args.force,
            pause=pause,
            recheck_budget=budget,
        )
    except SpecError as exc:
        option, _, reason = str(exc).partition(": ")
        raise UsageError(f"--{option.replace('_', '-')}: {reason}") from None


def _cli_wording(message: str) -> str:
    """The core speaks in option names (max_change_ratio, force); the CLI user types flags."""
    return (
        message.replace("max_change_ratio", "--max-change-ratio")
        .replace("run again with force", "run again with --force")
        .replace(" (or leave dry_run on)", "")
    )


def require_writes(command: str) -> None:
    """--apply is refused, before any work, unless the database's owner opted in."""
    from integrity.remediation import writes_allowed

    if not writes_allowed():
        raise RemediationRefused(
            f"--apply: writes are not enabled: set {settings.ENV_ALLOW_WRITES}=1 in the "
            f"environment to let integrity change this database (e.g. "
            f"{settings.ENV_ALLOW_WRITES}=1 {command}); nothing was changed"
        )


def queue_location(url: str, option: str = "--queue-url") -> tuple[str, str | None]:
    """The endpoint a queue URL names (AWS, or moto/ElasticMQ/LocalStack) and its AWS region."""
    from integrity.errors import QueueError
    from integrity.remediation.queue import queue_location as location

    try:
        return location(url)
    except QueueError as exc:
        raise UsageError(f"{option}: {exc}") from None


def make_work_queue(queue_url: str | None) -> Any:
    """SQS (on the queue client the Dagster paths use too) when a queue URL is given, else the
    table; --endpoint-url is the bucket's and never applies to the queue."""
    from integrity.remediation.queue import make_queue

    return make_queue(queue_url)


def preview(report: ReconciliationReport, options: Any) -> Remediation:
    """A dry run's view of --apply: findings per action it would hand over, or why it would refuse.

    No storage re-check and no row is read: the planning step only (cheap at any size)."""
    from integrity.remediation import plan_remediation
    from integrity.remediation.plan import stale_storage

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


class _BatchProgress:
    """`remediation: batch 3 of 10` on a terminal; records how many batches were applied."""

    def __init__(self, stream: TextIO | None) -> None:
        self.stream = stream
        self.applied = 0

    def __call__(self, number: int, total: int) -> None:
        self.applied = number
        if self.stream is not None:
            self.stream.write(f"\rremediation: batch {number:,} of {total:,}\x1b[K")
            self.stream.flush()

    def close(self) -> None:
        if self.stream is not None and self.applied:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def apply_remediation(
    report: ReconciliationReport,
    engine: sa.Engine,
    spec: Any,
    store: ObjectStore,
    options: Any,
    work_queue: Any,
    *,
    progress: bool = False,
) -> Remediation:
    """Run the core's remediation; a refusal is returned (the caller prints it), failures raise.

    Runs whose process died (their lease ran out) are recorded as failed first, and named."""
    from integrity.remediation import remediate
    from integrity.remediation.apply import RecheckBudgetExhausted
    from integrity.remediation.ledger import fail_interrupted_runs

    run_id = uuid.uuid4().hex
    interrupted = fail_interrupted_runs(engine, by=run_id)
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


def format_interrupted(runs: list[dict[str, Any]]) -> list[str]:
    """Earlier runs whose process died, now recorded as failed, and how to undo their batches."""
    lines = []
    for run in runs:
        lines += [
            "",
            f"interrupted run {run['run_id']} ({run['kind']}, started {_when(run['started_at'])} "
            f"UTC, {run['batches'] or 0:,} batches applied): its process stopped without "
            "finishing (its lease ran out); recorded as failed.",
            f"  its batches stay applied; undo them: integrity rollback --run-id {run['run_id']}",
        ]
    return lines


def interrupted_json(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "run_id": run["run_id"],
            "kind": run["kind"],
            "started_at": _when(run["started_at"]),
            "lease_until": _when(run["lease_until"]),
            "batches": run["batches"],
        }
        for run in runs
    ]


def format_remediation(remediation: Remediation) -> list[str]:
    """The summary's remediation section: what was done and how to undo it, or what would be."""
    result = remediation.result
    if result is None:
        if remediation.refused:
            return [
                *format_interrupted(remediation.interrupted),
                "",
                f"with --apply, remediation would be refused: {remediation.refused}",
            ]
        if remediation.planned is None:
            return []
        total = sum(remediation.planned.values())
        if not total:
            return ["", "nothing for remediation to act on."]
        acts = ", ".join(f"{a} {n:,}" for a, n in remediation.planned.items() if n)
        return [
            "",
            f"with --apply, remediation would act on {_count(total, 'finding')}: {acts}",
            "  (each object and row is checked again right before it is changed)",
            f"to apply: run again with --apply and {settings.ENV_ALLOW_WRITES}=1 in the environment.",
        ]
    counts = result.counts
    width = max(len(k) for k in REMEDIATION_COUNTS)
    lines = [
        *format_interrupted(remediation.interrupted),
        "",
        (f"remediation STOPPED ({result.stopped})" if result.stopped else "remediation applied")
        + f": run {result.run_id}, {result.batches:,} batches in "
        f"{result.seconds:.2f} s, queue: {remediation.queue}",
    ]
    for name, meaning in REMEDIATION_COUNTS.items():
        line = f"  {name:<{width}}  {counts[name]:>6,}  {meaning}"
        if counts[name] and name in ("skipped_unverified", "not_verified"):
            per_action = [(a, c[name]) for a, c in result.by_action.items() if c[name]]
            line += " (" + ", ".join(f"{a} {n:,}" for a, n in per_action) + ")"
        lines.append(line)
    lines.append(f"  {'updated':<{width}}  {result.updated:>6,}  rows changed or created in total")
    if result.updated or counts["requeued"]:
        lines += [
            f"review: SELECT * FROM integrity_audit WHERE run_id = '{result.run_id}'",
            f"undo:   integrity rollback --run-id {result.run_id}   "
            "(a dry run; add --apply to restore)",
        ]
    else:
        lines.append("nothing was changed, so there is nothing to undo.")
    return lines


def remediation_json(remediation: Remediation) -> dict[str, Any]:
    """The keys remediation adds to the `--json` summary."""
    result = remediation.result
    if result is not None:
        return {
            **result.summary(),
            "queue": remediation.queue,
            "remediation_seconds": round(result.seconds, 3),
            "interrupted_runs": interrupted_json(remediation.interrupted),
        }
    extra: dict[str, Any] = {"skipped_changed": 0, "planned": remediation.planned}
    if remediation.refused:
        extra["apply_refused"] = remediation.refused
        extra["interrupted_runs"] = interrupted_json(remediation.interrupted)
    return extra


# --------------------------------------------------------------------------- reports


def _age_of(options: dict[str, Any], age: AgeSetting) -> timedelta:
    """An age setting as the report's options recorded it (its default if they did not)."""
    seconds = options.get(f"{age.option}_seconds")
    return age.delta if seconds is None else timedelta(seconds=seconds)


def format_summary(
    report: ReconciliationReport,
    *,
    source: str,
    database: str,
    examples: int = 10,
    remediation: Remediation | None = None,
    inventory_skipped: Sequence[str] = (),
    registry: KindRegistry = KINDS,
) -> str:
    """The readable summary shared by `reconcile` and `demo`."""
    remediation = remediation or Remediation()
    counts = report.counts(registry)
    opts = report.options
    scope = "all tenants" if report.scope in (None, "__all__") else f"tenant {report.scope}"
    applied = remediation.result is not None
    lines = [
        "integrity reconcile --apply (findings as found before remediation)"
        if applied
        else "integrity reconcile (dry run: nothing was changed)",
        f"  storage   {source}",
        *_snapshot_lines(report, inventory_skipped),
        f"  database  {database}",
        f"  scope     {scope}"
        + (f", status {opts['status']}" if opts.get("status") else "")
        + "; "
        + ", ".join(
            f"{age.flag[2:]} {format_duration(_age_of(opts, age))}"
            for age in (_MIN_AGE, _STUCK_AFTER)
        ),
        f"  checked   {report.objects_checked:,} objects and {report.rows_checked:,} rows"
        + (
            f" in {report.timings['total_seconds']:.2f} s"
            if "total_seconds" in report.timings
            else ""
        ),
        "",
    ]
    width = max(len(k) for k in counts)
    number = max(5, max(len(f"{n:,}") for n in counts.values()))
    lines.append(f"  {'finding':<{width}}  {'count':>{number}}  action")
    for kind, n in counts.items():
        lines.append(f"  {kind:<{width}}  {n:>{number},}  {registry[kind].action}")
    lines.append(f"  {'total':<{width}}  {sum(counts.values()):>{number},}")
    picked = report.examples(examples)
    if picked:
        lines += ["", f"examples (first {len(picked)} of {len(report.findings):,}):"]
        for ex in picked:
            what = ex["key"] or ex["row_id"] or ""
            row = (
                f" [{ex['row_id']}]" if ex["key"] and ex["row_id"] not in (None, ex["key"]) else ""
            )
            if row.startswith(" [["):  # a composite row id is a JSON array already
                row = f" {ex['row_id']}"
            lines.append(
                f"  {ex['kind']:<{width}}  {_short(what, 60, tail=True)}{row}  {_short(ex['detail'], 70)}"
            )
    lines.append("")
    if report.complete:
        lines.append("report complete.")
    else:
        lines.append("report INCOMPLETE: do not act on it. Reasons:")
        lines += [f"  - {reason}" for reason in report.reasons]
    lines += format_remediation(remediation)
    return "\n".join(lines)


def _snapshot_lines(report: ReconciliationReport, skipped: Sequence[str] = ()) -> list[str]:
    """The summary's line on where storage came from when it is an inventory report's snapshot."""
    from integrity.inventory.reports import SOURCE_PREFIX, age_text

    if not report.storage_source.startswith(SOURCE_PREFIX) or report.storage_as_of is None:
        return []
    as_of = report.storage_as_of
    return [
        f"  snapshot  {report.storage_source} as of {as_of:%Y-%m-%dT%H:%M:%SZ} "
        f"({age_text(as_of)} old); rows changed since are never judged missing",
        *[f"            newer report skipped: {reason}" for reason in skipped],
    ]


def storage_json(report: ReconciliationReport) -> dict[str, Any]:
    """The keys saying where storage came from and as of when, for the `--json` summary."""
    from datetime import datetime, timezone

    as_of = report.storage_as_of
    return {
        "storage_source": report.storage_source,
        "storage_as_of": as_of.isoformat() if as_of else None,
        "storage_age_seconds": round((datetime.now(timezone.utc) - as_of).total_seconds(), 3)
        if as_of
        else None,
    }


def _emit(
    report: ReconciliationReport,
    args: argparse.Namespace,
    *,
    source: str,
    database: str,
    remediation: Remediation,
    inventory_skipped: Sequence[str] = (),
) -> int:
    """Print the report (and what remediation did) as JSON or a summary; return the exit code."""
    if args.json:
        summary = report.summary()
        summary["seconds"] = round(report.timings.get("total_seconds", 0.0), 3)
        summary.update(storage_json(report))
        if inventory_skipped:
            summary["inventory_skipped"] = list(inventory_skipped)
        summary.update(remediation_json(remediation))
        print(json.dumps(summary, ensure_ascii=False, default=str))
    else:
        print(
            format_summary(
                report,
                source=source,
                database=database,
                remediation=remediation,
                inventory_skipped=inventory_skipped,
            )
        )
    if not report.complete:
        # With --apply the refusal line carries the reasons; stderr stays one line.
        if args.json and not getattr(args, "apply", False):
            for reason in report.reasons:
                print(f"{PROG}: incomplete: {reason}", file=sys.stderr)
        return EXIT_INCOMPLETE
    return EXIT_OK


def _completed(report: ReconciliationReport, remediation: Remediation) -> None:
    """The one structured log line every finished run ends with (on stderr)."""
    from integrity.remediation import completed_line

    print(completed_line(report, remediation.result), file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- commands


def cmd_reconcile(args: argparse.Namespace) -> int:
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
    queue_url = args.queue_url or (_env(settings.ENV_QUEUE_URL) if args.apply else None)
    if queue_url:
        queue_location(queue_url, "--queue-url" if args.queue_url else settings.ENV_QUEUE_URL)
    options = remediation_options(args, dry_run=not args.apply)
    max_age_option = (
        "--inventory-max-age" if args.inventory_max_age else settings.ENV_INVENTORY_MAX_AGE
    )
    max_age_text = args.inventory_max_age or _env(settings.ENV_INVENTORY_MAX_AGE)
    max_age = parse_duration(max_age_text, option=max_age_option) if max_age_text else None
    if args.apply:
        require_writes("integrity reconcile --apply")

    import dataclasses

    from integrity.diff import DiffOptions
    from integrity.inventory import safe_url
    from integrity.spec import load_spec

    spec = load_spec(args.spec or _env(settings.ENV_SPEC))
    if max_age is None:
        max_age = spec.inventory_report.max_age_delta
    options = dataclasses.replace(options, inventory_max_age=max_age.total_seconds())
    db_url = args.db_url or settings.default_db_url()
    store = resolve_store(args)
    inventory_report = open_inventory(args, spec, store)
    if inventory_report is not None and args.apply:
        from integrity.inventory.reports import too_old

        stale = too_old(inventory_report.source, inventory_report.created_at, max_age)
        if stale is not None:
            raise RemediationRefused(f"--apply: {stale}; nothing was changed")
    engine = make_engine(db_url, option=_db_url_option(args))
    work_queue = None
    if args.apply:
        work_queue = make_work_queue(queue_url)
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
        )
        if args.apply:
            remediation = apply_remediation(
                report, engine, spec, store, options, work_queue, progress=sys.stderr.isatty()
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


def cmd_demo(args: argparse.Namespace) -> int:
    """Build (or keep) the demo, reconcile it, and point at `dagster dev` and remediation."""
    from integrity import demo
    from integrity.diff import DiffOptions
    from integrity.inventory import safe_url
    from integrity.remediation import RemediationOptions
    from integrity.spec import default_spec
    from integrity.storage.local import LocalStorage

    home = Path(args.home).expanduser().absolute() if args.home else settings.home()
    if home.exists() and not home.is_dir():
        option = "--home" if args.home else settings.ENV_HOME if _env(settings.ENV_HOME) else "home"
        raise UsageError(f"{option}: {home} is not a directory")
    started = time.perf_counter()
    env = demo.build_demo(home, reset=not args.no_reset)
    built = time.perf_counter() - started
    engine = make_engine(env.db_url)
    try:
        report = run_reconciliation(
            LocalStorage(env.storage_dir, bucket=settings.DEMO_BUCKET),
            engine,
            default_spec(),
            DiffOptions(),
            progress=sys.stderr.isatty() and not args.json,
        )
    finally:
        engine.dispose()
    remediation = preview(report, RemediationOptions())
    out = sys.stderr if args.json else sys.stdout
    verb = "built" if env.built else "kept (--no-reset)"
    print(
        f"demo {verb} in {built:.1f} s: {env.objects:,} objects in {env.storage_dir}, "
        f"{env.rows:,} rows in {env.db_path}",
        file=out,
    )
    if not args.json:
        print()
    code = _emit(
        report,
        args,
        source=f"directory {env.storage_dir}",
        database=safe_url(env.db_url),
        remediation=remediation,
    )
    print(file=out)
    from integrity.demo_dagster import closing_hints, materialise_demo

    print(closing_hints(home, materialise_demo(home, reset=env.built)), file=out, flush=True)
    _completed(report, remediation)
    return code


def _count(n: int, noun: str) -> str:
    """ "1 finding", "2 findings"."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def cmd_rollback(args: argparse.Namespace) -> int:
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
        require_writes(f"integrity rollback --run-id {run_id} --apply")

    from integrity.inventory import safe_url
    from integrity.remediation.rollback import TargetStillRunning, rollback, run_history

    db_url = args.db_url or settings.default_db_url()
    database = safe_url(db_url)
    engine = make_engine(db_url, option=_db_url_option(args))
    try:
        if args.list:
            runs = run_history(engine, args.last)
        else:
            try:
                result = rollback(
                    engine, run_id, dry_run=not args.apply, batch_size=args.batch_size
                )
            except TargetStillRunning:
                raise
            except RemediationRefused as exc:
                known = [r for r in run_history(engine, 1000) if r["run_id"] == run_id]
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


def format_rollback(result: Any, *, database: str) -> str:
    if result.nothing_to_undo:
        return "\n".join(
            [
                f"integrity rollback of run {result.target_run_id}: nothing to undo, the run "
                "ended before it changed anything (no audit records)"
                + ("" if result.dry_run else f"; recorded as rollback run {result.run_id}"),
                f"  database  {database}",
            ]
        )
    counts = result.counts
    width = max(len(k) for k in ROLLBACK_COUNTS)
    head = (
        f"integrity rollback of run {result.target_run_id} (dry run: nothing was changed)"
        if result.dry_run
        else f"integrity rollback of run {result.target_run_id} (applied: rollback run "
        f"{result.run_id}, {result.batches:,} batches in {result.seconds:.2f} s)"
    )
    lines = [head, f"  database  {database}", ""]
    lines += [
        f"  {name:<{width}}  {counts[name]:>6,}  {meaning}"
        for name, meaning in ROLLBACK_COUNTS.items()
    ]
    if result.dry_run:
        lines += [
            "",
            f"to apply: {settings.ENV_ALLOW_WRITES}=1 integrity rollback "
            f"--run-id {result.target_run_id} --apply",
        ]
    return "\n".join(lines)


def _when(value: Any) -> str | None:
    """A run's timestamp as UTC text (SQLite returns naive UTC, PostgreSQL aware)."""
    from datetime import datetime, timezone

    if not isinstance(value, datetime):
        return None if value is None else str(value)
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc)
    return value.strftime("%Y-%m-%d %H:%M:%S")


def format_runs(runs: list[dict[str, Any]], *, database: str, as_json: bool) -> str:
    """`integrity rollback --list`: the latest runs, newest first."""
    rows = []
    for run in runs:
        counts = json.loads(run["counts"]) if run.get("counts") else {}
        rows.append(
            {
                "run_id": run["run_id"],
                "kind": run["kind"],
                "target_run_id": run.get("target_run_id"),
                "scope": run.get("scope"),
                "state": run["state"],
                "interrupted": run.get("interrupted", False),
                "started_at": _when(run.get("started_at")),
                "finished_at": _when(run.get("finished_at")),
                "lease_until": _when(run.get("lease_until")),
                "batches": run.get("batches"),
                "counts": counts,
            }
        )
    if as_json:
        return json.dumps({"database": database, "runs": rows}, ensure_ascii=False)
    if not rows:
        return f"no remediation runs recorded in {database}"
    lines = [
        f"remediation runs in {database}, newest first (UTC):",
        f"  {'run_id':<32}  {'kind':<9}  {'state':<9}  {'started':<19}  what",
    ]
    for row in rows:
        c = row["counts"]
        if row["interrupted"]:
            target = f"undoing {row['target_run_id']}" if row["kind"] == "rollback" else None
            scope = target or ("all tenants" if row["scope"] in (None, "__all__") else row["scope"])
            what = (
                f"{scope}: interrupted after {row['batches'] or 0:,} batches (its process "
                f"stopped; lease ran out {row['lease_until'] or '-'})"
            )
        elif row["kind"] == "rollback":
            what = f"undid {row['target_run_id']}: restored {c.get('restored', 0):,}, removed {c.get('removed', 0):,}"
        else:
            scope = "all tenants" if row["scope"] in (None, "__all__") else row["scope"]
            what = (
                f"{scope}: updated {c.get('updated', 0):,}, requeued {c.get('requeued', 0):,}, "
                f"skipped_changed {c.get('skipped_changed', 0):,}"
            )
        lines.append(
            f"  {row['run_id']:<32}  {row['kind']:<9}  {row['state']:<9}  "
            f"{row['started_at'] or '-':<19}  {what}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- entry point


def _error(message: str, code: int) -> int:
    print(f"{PROG}: error: {_one_line(message)}", file=sys.stderr)
    return code


def _one_line(text: str) -> str:
    """A message as one line whatever values it quotes: newlines, tabs and terminal control
    characters (from a key, a path, a spec) are shown escaped."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run, and turn every expected failure into one line and an exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (UsageError, SpecError) as exc:
        return _error(str(exc), EXIT_USAGE)
    except IntegrityError as exc:
        return _error(str(exc), EXIT_ERROR)
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_ERROR
    except Exception as exc:  # one line, never a traceback; INTEGRITY_DEBUG=1 shows it
        if os.environ.get("INTEGRITY_DEBUG"):
            raise
        return _error(_describe(exc), EXIT_ERROR)


def _describe(exc: Exception) -> str:
    """One readable line for errors that escaped the core's own messages."""
    import sqlalchemy as sa
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        return (
            "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or a profile"
        )
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"S3 request failed: {err.get('Code', 'error')} {err.get('Message', '')}".strip()
    if isinstance(exc, BotoCoreError):
        return f"S3 request failed: {exc}"
    if isinstance(exc, sa.exc.SQLAlchemyError):
        from integrity.inventory import db_error_reason

        reason = db_error_reason(exc)
        return f"database error: {reason}"
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"unexpected {type(exc).__name__}" + (f": {first}" if first else "")


if __name__ == "__main__":
    sys.exit(main())
