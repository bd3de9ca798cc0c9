"""Planning remediation: which findings to act on, and the refusals that come before any write.

A report that is incomplete is refused, and so is a plan on which the circuit breaker trips: if
marking rows `error` would hit more than `max_change_ratio` of a table's checked rows, the
likeliest cause is a wrong bucket, endpoint or prefix, not lost objects. Writes also need the
database owner's opt-in, INTEGRITY_ALLOW_WRITES=1 in the environment of the run, which the caller
reads (integrity.settings.Settings.allow_writes) and passes in as `allow_writes`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import pandas as pd

from integrity import settings
from integrity.diff import ACTION_KINDS, FINDING_KINDS, ReconciliationReport
from integrity.errors import RemediationRefused, SpecError
from integrity.inventory import ALL_TENANTS
from integrity.inventory.reports import DEFAULT_MAX_AGE, too_old

ALLOW_WRITES_ENV = settings.ENV_ALLOW_WRITES
INVENTORY_MAX_AGE_SECONDS = DEFAULT_MAX_AGE.total_seconds()
RECHECK_BUDGET_SECONDS = 300.0
"""The default time budget of a run's storage re-checks: enough for tens of thousands of HEADs
on a healthy store, and an end in minutes, not hours, for a store that answers 503 to all."""


@dataclass(frozen=True)
class RemediationOptions:
    """What to act on and how carefully (the Dagster config and the CLI flags map onto this)."""

    dry_run: bool = True
    kinds: tuple[str, ...] = ACTION_KINDS
    tenant: str | None = None
    status: str | None = None
    batch_size: int = 100
    concurrency: int = 5
    limit: int | None = None
    max_change_ratio: float = 0.2
    force: bool = False
    pause: float = 0.0
    """Seconds to wait between batches, to spread the load on a busy database."""
    recheck_budget: float = RECHECK_BUDGET_SECONDS
    """Seconds the run's storage re-checks may take in all; when they are spent, the run stops
    after the batch at hand (see integrity.remediation.apply.RecheckBudgetExhausted)."""
    inventory_max_age: float = INVENTORY_MAX_AGE_SECONDS
    """Seconds: a report whose storage side is an S3 Inventory report older than this does not
    drive writes (a dry run still counts what it would do)."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.kinds) - set(FINDING_KINDS))
        if unknown:
            raise SpecError(
                f"kinds: unknown finding kind {unknown[0]!r} (one of {', '.join(ACTION_KINDS)})"
            )
        report_only = sorted(set(self.kinds) - set(ACTION_KINDS))
        if report_only:
            raise SpecError(f"kinds: {report_only[0]!r} is reported only; nothing acts on it")
        if self.batch_size < 1:
            raise SpecError(f"batch_size: must be at least 1, not {self.batch_size}")
        if self.concurrency < 1:
            raise SpecError(f"concurrency: must be at least 1, not {self.concurrency}")
        if self.limit is not None and self.limit < 0:
            raise SpecError(f"limit: must not be negative, not {self.limit}")
        if not 0 <= self.max_change_ratio <= 1:
            raise SpecError(
                f"max_change_ratio: must be between 0 and 1, not {self.max_change_ratio}"
            )
        if self.pause < 0:
            raise SpecError(f"pause: must not be negative, not {self.pause}")
        if not self.inventory_max_age >= 0:
            raise SpecError(
                f"inventory_max_age: must not be negative, not {self.inventory_max_age}"
            )
        if not self.recheck_budget > 0:
            raise SpecError(
                f"recheck_budget: must be more than 0 seconds, not {self.recheck_budget}"
            )


def stale_storage(
    report: ReconciliationReport, options: RemediationOptions, now: datetime | None = None
) -> str | None:
    """Why the report's storage side, an inventory report, is too old to write from (or None)."""
    return too_old(
        report.storage_source,
        report.storage_as_of,
        timedelta(seconds=options.inventory_max_age),
        now,
    )


def plan_remediation(report: ReconciliationReport, options: RemediationOptions) -> pd.DataFrame:
    """The findings to act on, in report order, after the safety refusals and the filters.

    Refuses an incomplete report, and trips the circuit breaker when `mark_error` would hit
    more than `max_change_ratio` of a table's checked rows (unless `force`).
    """
    if not report.complete:
        raise RemediationRefused(
            f"the report for {report.scope} is incomplete, so nothing is changed: "
            + ("; ".join(report.reasons) or "reason unknown")
            + ". Fix the cause and reconcile again."
        )
    findings = report.findings
    selected = findings.loc[findings["kind"].isin(options.kinds) & (findings["action"] != "none")]
    # The breaker judges the whole report, before the tenant and status filters: a wrong bucket
    # makes every row of every tenant look missing, and a filter must not hide that.
    _circuit_breaker(report, selected, options)
    if options.tenant not in (None, "", ALL_TENANTS):
        selected = selected.loc[selected["tenant"] == options.tenant]
    if options.status is not None:
        selected = selected.loc[selected["status"] == options.status]
    if options.limit is not None:
        selected = selected.head(options.limit)
    return selected.reset_index(drop=True)


def _circuit_breaker(
    report: ReconciliationReport, selected: pd.DataFrame, options: RemediationOptions
) -> None:
    marks = selected.loc[selected["action"] == "mark_error"]
    if marks.empty:
        return
    for table, rows in marks.groupby("table", sort=True):
        hit = rows["row_id"].nunique()
        checked = report.table_rows.get(table) or report.rows_checked or hit
        ratio = hit / checked
        if ratio <= options.max_change_ratio or options.force:
            continue
        raise RemediationRefused(
            f"circuit breaker: marking {hit:,} of {checked:,} rows of {table} as error "
            f"({ratio:.0%}) is above max_change_ratio {options.max_change_ratio:g}. "
            f"This is the usual sign of a wrong bucket, endpoint or prefix (the report checked "
            f"{report.objects_checked:,} objects in {report.bucket}): check the storage "
            "configuration; if the objects really are gone, run again with force"
        )
