"""From flags and Settings to what a command runs on: checked values, the store, the inventory
report, remediation options. Every check comes before any heavy work, with a message naming the
flag or the variable."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from integrity import connections, settings
from integrity.cli.common import _ACTION_KINDS, MAX_BATCH_SIZE, RECHECK_CONCURRENCY, REPORT_SUFFIXES
from integrity.durations import parse_duration
from integrity.errors import RemediationRefused, SpecError, UsageError
from integrity.settings import Settings

if TYPE_CHECKING:
    from integrity.storage.base import ObjectStore


def _db_url_option(args: argparse.Namespace, conf: Settings) -> str:
    """Where the database URL came from, for messages: the flag, else the environment."""
    return connections.db_url(conf, args.db_url)[1]


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


def resolve_store(args: argparse.Namespace, conf: Settings) -> ObjectStore:
    """--bucket or --storage-dir (flags win over the environment; both flags is an error)."""
    return connections.make_store(
        conf,
        bucket=args.bucket,
        storage_dir=args.storage_dir,
        endpoint_url=args.endpoint_url,
        region=args.region,
    )


def open_inventory(args: argparse.Namespace, conf: Settings, spec: Any, store: ObjectStore) -> Any:
    """The inventory report storage is read from (--inventory, else INTEGRITY_INVENTORY, else
    the spec's inventory_report.source), resolved and checked against the bucket; None: list."""
    if args.inventory:
        source, option = args.inventory, "--inventory"
    elif conf.inventory:
        source, option = conf.inventory, settings.ENV_INVENTORY
    elif spec.inventory_report.source:
        source, option = spec.inventory_report.source, "inventory_report.source"
    else:
        return None
    from integrity.inventory.reports import open_report

    client = getattr(store, "client", None) if store.backend == "s3" else None
    report = open_report(
        source,
        client=client,
        client_factory=lambda: connections.s3_client(conf, args.endpoint_url, args.region),
        option=option,
    )
    report.check_bucket(store.bucket)
    return report


def _parse_kinds(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    kinds = tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    if not kinds:
        raise UsageError(f"--kinds: name at least one kind ({', '.join(_ACTION_KINDS)})")
    return kinds


def remediation_options(args: argparse.Namespace, *, dry_run: bool) -> Any:
    """RemediationOptions from the flags; the core's one-line errors, named after the flags."""
    from integrity.remediation.plan import RemediationOptions

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


def require_writes(command: str, conf: Settings) -> None:
    """--apply is refused, before any work, unless the database's owner opted in."""
    if not conf.allow_writes:
        raise RemediationRefused(
            f"--apply: writes are not enabled: set {settings.ENV_ALLOW_WRITES}=1 in the "
            f"environment to let integrity change this database (e.g. "
            f"{settings.ENV_ALLOW_WRITES}=1 {command}); nothing was changed"
        )


def queue_location(url: str, option: str = "--queue-url") -> None:
    """Check a queue URL names an endpoint (AWS, or moto/ElasticMQ/LocalStack) before any work."""
    connections.check_queue_url(url, option)


def make_work_queue(queue_url: str | None, conf: Settings | None = None) -> Any:
    """SQS (on the queue client the Dagster paths use too) when a queue URL is given, else the
    table; --endpoint-url is the bucket's and never applies to the queue."""
    return connections.make_queue(conf or Settings.from_env(), queue_url)
