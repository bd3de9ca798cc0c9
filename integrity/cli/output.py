"""What the commands print: the summary, the `--json` object, progress lines, run listings."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TextIO

from integrity import settings
from integrity.cli.common import (
    _MIN_AGE,
    _STUCK_AFTER,
    EXIT_INCOMPLETE,
    EXIT_OK,
    PROG,
    _count,
)
from integrity.durations import format_duration
from integrity.kinds import KINDS, AgeSetting, KindRegistry
from integrity.remediation.counts import ROLLBACK_COUNTS

if TYPE_CHECKING:
    from integrity.diff import ReconciliationReport


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


def _short(text: object, width: int, *, tail: bool = False) -> str:
    """Trim to width; keys keep their tail (the file name says more than the prefix)."""
    value = "" if text is None else str(text)
    if len(value) <= width:
        return value
    return "…" + value[-(width - 1) :] if tail else value[: width - 1] + "…"


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
    from integrity.remediation.summary import completed_line

    print(completed_line(report, remediation.result), file=sys.stderr, flush=True)


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
