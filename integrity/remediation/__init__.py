"""Remediation: heal what the reconciliation found, safely, audited and reversibly.

- plan.py: which findings to act on, and the refusals before any write (an incomplete report,
  the circuit breaker, no INTEGRITY_ALLOW_WRITES opt-in);
- apply.py: batches of conditional writes, each re-checked against storage and the rows and
  committed with its audit records and queue entries in one transaction;
- rollback.py: undo a run from its audit records, conditionally and audited too;
- queue.py: the re-queue (a table in the same database, or SQS through an outbox);
- ledger.py: integrity's own tables (runs, audit, queue);
- rows.py: the conditional-write primitives apply and rollback share.
"""

from __future__ import annotations

from integrity.remediation.apply import (
    COMPLETED_MSG,
    COUNT_NAMES,
    RecheckBudgetExhausted,
    RemediationResult,
    completed_line,
    completed_record,
    remediate,
)
from integrity.remediation.plan import (
    ALLOW_WRITES_ENV,
    RemediationOptions,
    plan_remediation,
)
from integrity.remediation.queue import SqsQueue, TableQueue, WorkQueue, make_queue, take_pending
from integrity.remediation.rollback import (
    ROLLBACK_COMPLETED_MSG,
    RollbackResult,
    rollback,
    rollback_completed_line,
    run_history,
)

__all__ = [
    "ALLOW_WRITES_ENV",
    "COMPLETED_MSG",
    "COUNT_NAMES",
    "ROLLBACK_COMPLETED_MSG",
    "RecheckBudgetExhausted",
    "RemediationOptions",
    "RemediationResult",
    "RollbackResult",
    "SqsQueue",
    "TableQueue",
    "WorkQueue",
    "completed_line",
    "completed_record",
    "make_queue",
    "plan_remediation",
    "remediate",
    "rollback",
    "rollback_completed_line",
    "run_history",
    "take_pending",
]
