"""The one structured log line a reconciliation or remediation run ends with.

Its own module so a dry run can print it without loading the apply path.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from integrity.remediation.ledger import utcnow

if TYPE_CHECKING:
    from integrity.diff import ReconciliationReport
    from integrity.remediation.apply import RemediationResult

COMPLETED_MSG = "reconcile: completed"


def completed_record(
    report: ReconciliationReport | None, result: RemediationResult | None, **extra: Any
) -> dict[str, Any]:
    """The one structured log line a run ends with: `"msg": "reconcile: completed"` and counts."""
    record: dict[str, Any] = {
        "time": utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"),
        "level": "INFO",
        "msg": COMPLETED_MSG,
    }
    if report is not None:
        record.update(
            scope=report.scope,
            complete=report.complete,
            checked={"objects": report.objects_checked, "rows": report.rows_checked},
            **report.counts(),
        )
    if result is not None:
        record.update(
            run_id=result.run_id,
            updated=result.updated,
            requeued=result.counts["requeued"],
            skipped_changed=result.counts["skipped_changed"],
            skipped_unverified=result.counts["skipped_unverified"],
            dry_run=result.dry_run,
        )
    else:
        record.update(updated=0, requeued=0, skipped_changed=0, dry_run=True)
    record.update(extra)
    return record


def completed_line(report: ReconciliationReport | None, result: RemediationResult | None) -> str:
    return json.dumps(completed_record(report, result), ensure_ascii=False, default=str)
