"""Remediation: heal what the reconciliation found, safely, audited and reversibly.

- plan.py: which findings to act on, and the refusals before any write (an incomplete report,
  the circuit breaker, no INTEGRITY_ALLOW_WRITES opt-in);
- apply.py: batches of conditional writes, each re-checked against storage and the rows and
  committed with its audit records and queue entries in one transaction;
- rollback.py: undo a run from its audit records, conditionally and audited too;
- queue.py: the re-queue (a table in the same database, or SQS through an outbox);
- ledger.py: integrity's own tables (runs, audit, queue);
- rows.py: the conditional-write primitives apply and rollback share.

The names below load their module on first use (PEP 562): planning a dry run never imports the
apply path, and `from integrity.remediation.plan import ...` costs only the plan.
"""

from __future__ import annotations

from integrity.lazy import lazy_exports

_WHERE = {
    "COMPLETED_MSG": "integrity.remediation.summary",
    "COUNT_NAMES": "integrity.remediation.apply",
    "RecheckBudgetExhausted": "integrity.remediation.apply",
    "RemediationResult": "integrity.remediation.apply",
    "completed_line": "integrity.remediation.summary",
    "completed_record": "integrity.remediation.summary",
    "remediate": "integrity.remediation.apply",
    "ALLOW_WRITES_ENV": "integrity.remediation.plan",
    "RemediationOptions": "integrity.remediation.plan",
    "plan_remediation": "integrity.remediation.plan",
    "SqsQueue": "integrity.remediation.queue",
    "TableQueue": "integrity.remediation.queue",
    "WorkQueue": "integrity.remediation.queue",
    "make_queue": "integrity.remediation.queue",
    "take_pending": "integrity.remediation.queue",
    "ROLLBACK_COMPLETED_MSG": "integrity.remediation.rollback",
    "RollbackResult": "integrity.remediation.rollback",
    "rollback": "integrity.remediation.rollback",
    "rollback_completed_line": "integrity.remediation.rollback",
    "run_history": "integrity.remediation.rollback",
}

__all__ = sorted(_WHERE)


__getattr__, __dir__ = lazy_exports(__name__, _WHERE, globals())
