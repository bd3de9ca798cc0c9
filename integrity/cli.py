"""The `integrity` command: a dry-run reconciliation from a terminal, and the demo.

Every failure a user can cause (a bad flag, a bad duration, an unreachable database, a missing
bucket, a spec error) ends with one line on stderr and a non-zero exit, never a traceback.
Exit codes: 0 complete report, 3 incomplete report, 2 usage error, 1 any other error.
Heavy imports (pandas, SQLAlchemy, dagster-aws) happen inside the commands so `--help` is fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from integrity import settings
from integrity.durations import format_duration, parse_duration
from integrity.errors import DatabaseError, IntegrityError, UsageError

if TYPE_CHECKING:
    import sqlalchemy as sa

    from integrity.diff import ReconciliationReport
    from integrity.storage.base import ObjectStore

PROG = "integrity"
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INCOMPLETE = 0, 1, 2, 3
REPORT_SUFFIXES = (".csv", ".jsonl")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (the full usage is one `--help` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


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
        help="report drift between storage and the database (a dry run: changes nothing)",
        description="Report drift between storage and the database. A dry run: nothing is changed. "
        "Exit status: 0 complete report, 3 incomplete report, 2 usage error, 1 other error.",
    )
    rec.add_argument(
        "--db-url",
        metavar="URL",
        help=f"SQLAlchemy database URL (env {settings.ENV_DB_URL}; default: the demo SQLite file)",
    )
    where = rec.add_argument_group("storage (one of)")
    where.add_argument(
        "--bucket", metavar="NAME", help=f"S3-compatible bucket (env {settings.ENV_BUCKET})"
    )
    where.add_argument(
        "--endpoint-url",
        metavar="URL",
        help=f"S3 endpoint for MinIO, R2, ... (env {settings.ENV_ENDPOINT_URL})",
    )
    where.add_argument(
        "--region", metavar="REGION", help="S3 region (default: the AWS configuration)"
    )
    where.add_argument(
        "--storage-dir",
        metavar="DIR",
        help=f"a local directory standing in for the bucket (env {settings.ENV_STORAGE_DIR}; "
        "default: the demo storage directory)",
    )
    rec.add_argument(
        "--spec",
        metavar="FILE",
        help=f"reconciliation spec, YAML or JSON (env {settings.ENV_SPEC})",
    )
    rec.add_argument(
        "--min-age",
        metavar="DURATION",
        default="1h",
        help="uploads younger than this are never orphans (seconds or 90s, 15m, 1h, 3d; default 1h)",
    )
    rec.add_argument(
        "--stuck-after",
        metavar="DURATION",
        default="24h",
        help="a job processing longer than this is stuck (default 24h)",
    )
    rec.add_argument("--tenant", metavar="ID", help="reconcile one tenant only")
    rec.add_argument(
        "--status", metavar="S", help="report only findings whose row or job has this status"
    )
    rec.add_argument(
        "--concurrency",
        metavar="N",
        type=int,
        default=8,
        help="prefixes listed at once (default 8)",
    )
    rec.add_argument(
        "--json", action="store_true", help="print one JSON object instead of the summary"
    )
    rec.add_argument(
        "--report", metavar="FILE", help="write every finding to FILE (.csv or .jsonl)"
    )
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
        help=f"where to build it (env {settings.ENV_HOME}; default ./.integrity)",
    )
    demo.add_argument(
        "--no-reset", action="store_true", help="keep an existing demo instead of rebuilding it"
    )
    demo.add_argument(
        "--json", action="store_true", help="print the report summary as one JSON object"
    )
    demo.set_defaults(handler=cmd_demo)
    return parser


# --------------------------------------------------------------------------- helpers


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def _check_report_path(path: str | None) -> Path | None:
    """Refuse a report path before any work is done, rather than after a long listing."""
    if path is None:
        return None
    target = Path(path).expanduser()
    if target.suffix not in REPORT_SUFFIXES:
        raise UsageError(f"--report: {path!r} must end in .csv or .jsonl")
    if target.is_dir():
        raise UsageError(f"--report: {path!r} is a directory")
    parent = target.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"--report: cannot write {path!r} ({parent} is not a writable directory)")
    return target


def make_engine(url: str) -> sa.Engine:
    """An engine for the URL, with a readable error for a missing SQLite file or a bad URL."""
    import sqlalchemy as sa

    from integrity.database import database_url
    from integrity.inventory import safe_url

    try:
        parsed = database_url(url)
    except sa.exc.ArgumentError:
        raise UsageError(
            "--db-url: not a valid SQLAlchemy URL (e.g. postgresql://user@host/db)"
        ) from None
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        local_file = database and database != ":memory:" and not database.startswith("file:")
        if local_file and not Path(database).is_file():
            hint = (
                " (run 'integrity demo' to create it)" if url == settings.default_db_url() else ""
            )
            raise DatabaseError(f"database file {database} does not exist{hint}")
    try:
        return sa.create_engine(parsed)
    except sa.exc.ArgumentError as exc:
        reason = str(exc).splitlines()[0][:200]
        raise UsageError(f"--db-url: {safe_url(url)}: {reason}") from None
    except ImportError as exc:
        raise DatabaseError(
            f"no driver for {safe_url(url)}: {exc.name or exc} is not installed"
        ) from None


def make_s3_store(bucket: str, endpoint_url: str | None, region: str | None) -> ObjectStore:
    """An S3Storage whose client comes from dagster-aws's S3Resource (standard credentials)."""
    # S3-compatible stores (MinIO, R2) reject the newer default checksums.
    os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
    os.environ.setdefault("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")
    from dagster_aws.s3 import S3Resource

    from integrity.storage.s3 import S3Storage

    client = S3Resource(endpoint_url=endpoint_url, region_name=region).get_client()
    return S3Storage(client, bucket)


def resolve_store(args: argparse.Namespace) -> ObjectStore:
    """--bucket or --storage-dir (flags win over the environment; both flags is an error)."""
    from integrity.storage.local import LocalStorage

    if args.bucket and args.storage_dir:
        raise UsageError("--bucket and --storage-dir are mutually exclusive: choose one storage")
    bucket = args.bucket or (None if args.storage_dir else _env(settings.ENV_BUCKET))
    if bucket:
        return make_s3_store(
            bucket, args.endpoint_url or _env(settings.ENV_ENDPOINT_URL), args.region
        )
    if args.endpoint_url or args.region:
        raise UsageError("--endpoint-url and --region need --bucket")
    return LocalStorage(args.storage_dir or settings.default_storage_dir())


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
) -> ReconciliationReport:
    """The core's reconcile, with the progress line when asked for."""
    from integrity.reconcile import reconcile

    display = Progress(sys.stderr) if progress else None
    try:
        return reconcile(store, engine, spec, options, concurrency=concurrency, on_progress=display)
    finally:
        if display is not None:
            display.close()


def _short(text: object, width: int, *, tail: bool = False) -> str:
    """Trim to width; keys keep their tail (the file name says more than the prefix)."""
    value = "" if text is None else str(text)
    if len(value) <= width:
        return value
    return "…" + value[-(width - 1) :] if tail else value[: width - 1] + "…"


def format_summary(
    report: ReconciliationReport,
    *,
    source: str,
    database: str,
    examples: int = 10,
) -> str:
    """The readable summary shared by `reconcile` and `demo`."""
    from integrity.diff import ACTIONS

    counts = report.counts()
    opts = report.options
    scope = "all tenants" if report.scope in (None, "__all__") else f"tenant {report.scope}"
    lines = [
        "integrity reconcile (dry run: nothing was changed)",
        f"  storage   {source}",
        f"  database  {database}",
        f"  scope     {scope}"
        + (f", status {opts['status']}" if opts.get("status") else "")
        + f"; min-age {format_duration(timedelta(seconds=opts.get('min_age_seconds', 3600)))}"
        + f", stuck-after {format_duration(timedelta(seconds=opts.get('stuck_after_seconds', 86400)))}",
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
        lines.append(f"  {kind:<{width}}  {n:>{number},}  {ACTIONS[kind]}")
    lines.append(f"  {'total':<{width}}  {sum(counts.values()):>{number},}")
    picked = report.examples(examples)
    if picked:
        lines += ["", f"examples (first {len(picked)} of {len(report.findings):,}):"]
        for ex in picked:
            what = ex["key"] or ex["row_id"] or ""
            row = f" [{ex['row_id']}]" if ex["row_id"] and ex["row_id"] != ex["key"] else ""
            lines.append(
                f"  {ex['kind']:<{width}}  {_short(what, 60, tail=True)}{row}  {_short(ex['detail'], 70)}"
            )
    lines.append("")
    if report.complete:
        lines.append("report complete.")
    else:
        lines.append("report INCOMPLETE: do not act on it. Reasons:")
        lines += [f"  - {reason}" for reason in report.reasons]
    return "\n".join(lines)


def _emit(
    report: ReconciliationReport, args: argparse.Namespace, *, source: str, database: str
) -> int:
    """Print the report as JSON or a summary and return the exit code."""
    if args.json:
        summary = report.summary()
        summary["seconds"] = round(report.timings.get("total_seconds", 0.0), 3)
        print(json.dumps(summary, ensure_ascii=False, default=str))
    else:
        print(format_summary(report, source=source, database=database))
    if not report.complete:
        if args.json:
            for reason in report.reasons:
                print(f"{PROG}: incomplete: {reason}", file=sys.stderr)
        return EXIT_INCOMPLETE
    return EXIT_OK


# --------------------------------------------------------------------------- commands


def cmd_reconcile(args: argparse.Namespace) -> int:
    """Validate every input first (the cheap checks before the heavy imports), then reconcile."""
    min_age = parse_duration(args.min_age, option="--min-age")
    stuck_after = parse_duration(args.stuck_after, option="--stuck-after")
    if args.concurrency < 1:
        raise UsageError(f"--concurrency: must be at least 1, not {args.concurrency}")
    report_path = _check_report_path(args.report)
    if args.bucket and args.storage_dir:
        raise UsageError("--bucket and --storage-dir are mutually exclusive: choose one storage")

    from integrity.diff import DiffOptions
    from integrity.inventory import safe_url
    from integrity.spec import load_spec

    spec = load_spec(args.spec or _env(settings.ENV_SPEC))
    db_url = args.db_url or settings.default_db_url()
    store = resolve_store(args)
    engine = make_engine(db_url)
    try:
        options = DiffOptions(
            min_age=min_age, stuck_after=stuck_after, tenant=args.tenant, status=args.status
        )
        report = run_reconciliation(
            store, engine, spec, options, concurrency=args.concurrency, progress=sys.stderr.isatty()
        )
    finally:
        engine.dispose()
    if report_path is not None:
        report.export(report_path)
    code = _emit(report, args, source=store.description, database=safe_url(db_url))
    if report_path is not None and not args.json:
        print(f"report written to {report_path} ({len(report.findings):,} findings)")
    return code


def cmd_demo(args: argparse.Namespace) -> int:
    """Build (or keep) the demo, reconcile it, and point at `dagster dev`."""
    from integrity import demo
    from integrity.diff import DiffOptions
    from integrity.inventory import safe_url
    from integrity.spec import default_spec
    from integrity.storage.local import LocalStorage

    home = Path(args.home).expanduser().absolute() if args.home else settings.home()
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
    out = sys.stderr if args.json else sys.stdout
    verb = "built" if env.built else "kept (--no-reset)"
    print(
        f"demo {verb} in {built:.1f} s: {env.objects:,} objects in {env.storage_dir}, "
        f"{env.rows:,} rows in {env.db_path}",
        file=out,
    )
    if not args.json:
        print()
    code = _emit(report, args, source=f"directory {env.storage_dir}", database=safe_url(env.db_url))
    print(file=out)
    print(_dagster_hint(home), file=out)
    return code


def _dagster_hint(home: Path) -> str:
    """How to see the same demo in the UI, naming any environment that would point elsewhere."""
    lines = ["Now run `dagster dev` from the project root: the UI shows the same demo."]
    if home != (Path.cwd() / ".integrity").absolute() and os.environ.get(settings.ENV_HOME) != str(
        home
    ):
        lines.append(
            f"  (set {settings.ENV_HOME}={home} first, since the demo is not in ./.integrity)"
        )
    overriding = [
        n for n in (settings.ENV_DB_URL, settings.ENV_STORAGE_DIR, settings.ENV_BUCKET) if _env(n)
    ]
    if overriding:
        lines.append(
            f"  (unset {', '.join(overriding)}: they point dagster dev away from the demo)"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- entry point


def _error(message: str, code: int) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run, and turn every expected failure into one line and an exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except UsageError as exc:
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
