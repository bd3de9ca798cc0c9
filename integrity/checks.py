"""Judging a reconciliation: findings against thresholds, inventories against their last size,
and the age of the last reconciliation, as plain functions over plain values.

The Dagster asset checks (integrity.defs.reconciliation.checks) feed these from the report
snapshot and the event log and turn each outcome into an AssetCheckResult; nothing here imports
Dagster, so the judgements are testable in milliseconds and the same anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

import pandas as pd

from integrity.diff import ReconciliationReport
from integrity.durations import format_duration
from integrity.inventory import ALL_TENANTS
from integrity.kinds import KINDS, FindingKind, KindRegistry
from integrity.spec import InventoryChecks, KindThresholds, ReconciliationSpec

Level = Literal["passed", "warn", "error"]
PASSED: Level = "passed"
WARN: Level = "warn"
ERROR: Level = "error"

EXAMPLES_PER_CHECK = 5
"""Examples a check result carries; the full list is the report snapshot."""

FRESHNESS_CHECK = "reconciliation_fresh"
STORAGE_INVENTORY_CHECK = "storage_inventory_sane"
DB_INVENTORY_CHECK = "db_inventory_sane"

_EXAMPLE_COLUMNS = ("key", "row_id", "table", "detail")
_TEXT_LIMIT = 300


@dataclass(frozen=True)
class CheckOutcome:
    """One check's verdict: its level, one line for a person, and plain metadata values.

    `metadata` always holds `count` (what the check counted) and `examples` (at most
    EXAMPLES_PER_CHECK dicts), the two things an alert shows.
    """

    check: str
    level: Level
    description: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.level == PASSED


# --------------------------------------------------------------------------- finding kinds


def kind_denominators(
    report: ReconciliationReport, spec: ReconciliationSpec, registry: KindRegistry = KINDS
) -> dict[str, int]:
    """What each finding kind is a share of (its `judged_against`): the objects listed, the
    processing jobs, the plans, or the rows of the referencing tables."""
    reference_tables = {table.table for table in spec.tables.values()}
    totals = {
        "objects": report.objects_checked,
        "jobs": report.table_rows.get(spec.jobs.table, 0) if spec.jobs is not None else 0,
        "plans": report.table_rows.get(spec.plans.table, 0) if spec.plans is not None else 0,
        "rows": sum(report.table_rows.get(name, 0) for name in reference_tables),
    }
    return {kind.name: totals[kind.judged_against] for kind in registry}


def _clip(value: object) -> Any:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    text = str(value)
    return text if len(text) <= _TEXT_LIMIT else text[: _TEXT_LIMIT - 1] + "…"


def finding_examples(
    findings: pd.DataFrame, kind: str, limit: int = EXAMPLES_PER_CHECK
) -> list[dict[str, Any]]:
    """The first findings of one kind in report order: key, row id, table and detail."""
    rows = findings.loc[findings["kind"] == kind].head(limit)
    return [
        {name: _clip(getattr(row, name)) for name in _EXAMPLE_COLUMNS}
        for row in rows.itertuples(index=False)
    ]


def _share_text(ratio: float) -> str:
    return f"{ratio:.2%}".replace(".00%", "%")


def age_text(delta: timedelta) -> str:
    """An age for people: 45s, 12m, 26h, 30.5h (hours above one, as thresholds are written)."""
    seconds = max(delta.total_seconds(), 0.0)
    if seconds < 3600:
        return format_duration(timedelta(seconds=round(seconds)))
    return f"{seconds / 3600:.1f}".removesuffix(".0") + "h"


def _limit_text(value: int | str | None) -> str:
    return "never" if value is None else str(value)


def evaluate_kind(
    kind: str | FindingKind,
    count: int,
    checked: int,
    thresholds: KindThresholds,
    examples: Sequence[Mapping[str, Any]] = (),
    *,
    complete: bool = True,
) -> CheckOutcome:
    """ERROR above `error_above`, else WARN above `warn_above`, else passed."""
    kind = KINDS[kind] if isinstance(kind, str) else kind
    ratio = count / checked if checked else (1.0 if count else 0.0)
    unit = kind.judged_against
    amount = f"{count:,} of {checked:,} {unit} checked ({_share_text(ratio)})"
    if thresholds.error.exceeded(count, ratio):
        level: Level = ERROR
        verdict = f"above error_above {thresholds.error_above}"
    elif thresholds.warn.exceeded(count, ratio):
        level = WARN
        verdict = f"above warn_above {thresholds.warn_above}"
    else:
        level = PASSED
        verdict = "within the thresholds"
    description = f"{kind.name}: {amount}, {verdict}"
    if not complete:
        description += " (the report is incomplete: counts may be off)"
    return CheckOutcome(
        check=kind.check,
        level=level,
        description=description,
        metadata={
            "count": count,
            "checked": checked,
            "ratio": round(
                ratio, 4
            ),  # shown, never compared: the verdict above used the exact ratio
            "warn_above": _limit_text(thresholds.warn_above),
            "error_above": _limit_text(thresholds.error_above),
            "complete": complete,
            "examples": [dict(e) for e in examples[:EXAMPLES_PER_CHECK]],
        },
    )


def evaluate_findings(
    report: ReconciliationReport,
    spec: ReconciliationSpec,
    kinds: Sequence[str] | None = None,
    *,
    registry: KindRegistry = KINDS,
) -> list[CheckOutcome]:
    """One outcome per finding kind of the registry (or per kind named in `kinds`, in that
    order), thresholds from the spec's `checks.findings`."""
    counts = report.counts(registry)
    totals = kind_denominators(report, spec, registry)
    selected = registry.names if kinds is None else kinds
    return [
        evaluate_kind(
            kind,
            counts[kind.name],
            totals[kind.name],
            spec.checks.findings.for_kind(kind),
            finding_examples(report.findings, kind.name),
            complete=report.complete,
        )
        for kind in (registry[name] for name in selected)
    ]


# --------------------------------------------------------------------------- inventories


def evaluate_inventory(
    check: str,
    what: str,
    count: int,
    previous: int | None,
    settings: InventoryChecks,
    *,
    complete: bool = True,
    reasons: Sequence[str] = (),
) -> CheckOutcome:
    """ERROR when empty or shrunk by more than `max_shrink` since the previous materialization
    of the same partition; WARN when the inventory itself says it is incomplete."""
    shrink = (previous - count) / previous if previous else 0.0
    metadata: dict[str, Any] = {
        "count": count,
        "previous_count": previous,
        "shrink": max(shrink, 0.0),
        "max_shrink": settings.max_shrink,
        "complete": complete,
        "examples": [],
    }
    since = f" (previously {previous:,})" if previous is not None else ""
    if count == 0 and not settings.allow_empty:
        level: Level = ERROR
        description = (
            f"{what}: empty{since}; the usual cause is a wrong bucket, endpoint, credentials "
            "or database, not lost data"
        )
    elif previous is not None and shrink > settings.max_shrink_share:
        level = ERROR
        description = (
            f"{what}: {count:,}, down {_share_text(shrink)} from {previous:,} since the previous "
            f"materialization (max_shrink {settings.max_shrink}); the usual cause is a wrong "
            "bucket, endpoint, credentials or database"
        )
    elif not complete:
        level = WARN
        description = f"{what}: {count:,}{since}, incomplete: " + (
            "; ".join(reasons) or "reason unknown"
        )
    else:
        level = PASSED
        description = f"{what}: {count:,}{since}"
    return CheckOutcome(check=check, level=level, description=description, metadata=metadata)


# --------------------------------------------------------------------------- freshness


def evaluate_freshness(
    latest: Mapping[str, datetime],
    tenants: Sequence[str],
    now: datetime,
    max_age: timedelta,
) -> CheckOutcome:
    """Is the last reconciliation of every tenant younger than `max_age`?

    `latest` maps partitions to their last report materialization; `tenants` are the tenant
    partitions that exist now. Tenants judged: those in both (a tenant never reconciled is only
    counted, since a new tenant waits for the next nightly run). Without tenant partitions the
    newest report of any partition (the whole-bucket one) is judged instead.
    """
    max_age_text = age_text(max_age)
    metadata: dict[str, Any] = {"max_age": max_age_text}
    if not latest:
        return CheckOutcome(
            check=FRESHNESS_CHECK,
            level=WARN,
            description="reconciliation_report has never been materialized",
            metadata={
                **metadata,
                "count": 0,
                "checked": 0,
                "never_reconciled": len(tenants),
                "examples": [],
            },
        )
    newest = max(latest.values())
    judged = {t: latest[t] for t in tenants if t in latest and t != ALL_TENANTS}
    if not judged:
        judged = {max(latest, key=lambda p: latest[p]): newest}
    stale = sorted(
        ((p, at) for p, at in judged.items() if now - at > max_age), key=lambda item: item[1]
    )
    never = [t for t in tenants if t not in latest and t != ALL_TENANTS]
    metadata.update(
        count=len(stale),
        checked=len(judged),
        never_reconciled=len(never),
        last_reconciled_at=newest.isoformat(),
        age_hours=round((now - newest).total_seconds() / 3600, 2),
        examples=[
            {
                "partition": p,
                "last_reconciled_at": at.isoformat(),
                "age": age_text(now - at),
            }
            for p, at in stale[:EXAMPLES_PER_CHECK]
        ],
    )
    if stale:
        oldest, oldest_at = stale[0]
        description = (
            f"{len(stale):,} of {len(judged):,} partitions not reconciled within {max_age_text} "
            f"(oldest: {oldest}, {age_text(now - oldest_at)} ago)"
        )
        return CheckOutcome(FRESHNESS_CHECK, ERROR, description, metadata)
    description = (
        f"{len(judged):,} of {len(judged):,} partitions reconciled within {max_age_text} "
        f"(newest {age_text(now - newest)} ago)"
    )
    return CheckOutcome(FRESHNESS_CHECK, PASSED, description, metadata)
