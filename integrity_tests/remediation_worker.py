"""Remediation in a process of its own, so a test can SIGKILL it mid-run.

usage: python -m integrity_tests.remediation_worker DB_URL STORAGE_DIR REPORT RUN_ID BATCH_SIZE PAUSE [HANG_AFTER]

Applies a saved report (INTEGRITY_ALLOW_WRITES=1 must be in the environment) through the core
API, with a local directory as storage and the table queue, and prints the summary as JSON.
With HANG_AFTER, once that many batches have committed, the next batch stops right after its
first write to a reference table, inside its transaction, and prints "in-transaction": the
test then kills the process at the worst moment, deterministically.
"""

from __future__ import annotations

import json
import re
import sys
import time

import sqlalchemy as sa

from integrity.diff import ReconciliationReport
from integrity.remediation import RemediationOptions, remediate
from integrity.spec import default_spec
from integrity.storage import LocalStorage

REFERENCE_WRITE = re.compile(
    r"^\s*(UPDATE|INSERT INTO|DELETE FROM)\s+(documents|images|processing_jobs|plans)\b", re.I
)


def main(argv: list[str]) -> int:
    url, storage_dir, report_path, run_id, batch_size, pause, *rest = argv
    hang_after = int(rest[0]) if rest else None
    engine = sa.create_engine(url)
    committed = 0

    def on_batch(number: int, total: int) -> None:
        nonlocal committed
        committed = number

    @sa.event.listens_for(engine, "after_cursor_execute")
    def hang(conn, cursor, statement, parameters, context, executemany) -> None:  # noqa: ANN001
        if hang_after is not None and committed >= hang_after and REFERENCE_WRITE.match(statement):
            print("in-transaction", flush=True)
            time.sleep(120)

    report = ReconciliationReport.load(report_path)
    result = remediate(
        report,
        engine,
        default_spec(),
        LocalStorage(storage_dir, bucket=report.bucket),
        RemediationOptions(
            dry_run=False, batch_size=int(batch_size), pause=float(pause), force=True
        ),
        run_id=run_id,
        on_batch=on_batch,
    )
    print(json.dumps(result.summary()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
