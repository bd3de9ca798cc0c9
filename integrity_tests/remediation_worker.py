"""Remediation in a process of its own, so a test can SIGKILL it mid-run.

usage: python -m integrity_tests.remediation_worker DB_URL STORAGE_DIR REPORT RUN_ID BATCH_SIZE PAUSE [HANG_AFTER]

Applies a saved report (INTEGRITY_ALLOW_WRITES=1 must be in the environment) through the core
API, with a local directory as storage and the table queue, and prints the summary as JSON.
With HANG_AFTER, once that many batches have committed, the next batch stops right after its
first write to a reference table, inside its transaction, and prints "in-transaction": the
test then kills the process at the worst moment, deterministically (`kill_mid_batch`).
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa

from integrity import settings
from integrity.diff import ReconciliationReport
from integrity.remediation import RemediationOptions, remediate
from integrity.remediation.ledger import db_now, read_runs, remediation_runs
from integrity.settings import Settings
from integrity.spec import default_spec
from integrity.storage import LocalStorage

REPO = Path(__file__).resolve().parent.parent

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
    conf = Settings.from_env()  # the opt-in and the lease, as the parent set them
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
        allow_writes=conf.allow_writes,
        lease=conf.lease_seconds(),
    )
    print(json.dumps(result.summary()), flush=True)
    return 0


def kill_mid_batch(
    engine: sa.Engine,
    storage_dir: Path,
    report_path: Path,
    run_id: str,
    *,
    batch_size: int,
    hang_after: int,
    lease: float,
) -> None:
    """Run the worker with a lease of `lease` seconds; SIGKILL it inside batch hang_after + 1."""
    url = engine.url.render_as_string(hide_password=False)
    argv = [url, str(storage_dir), str(report_path), run_id, str(batch_size), "0", str(hang_after)]
    env = {
        **os.environ,
        settings.ENV_ALLOW_WRITES: "1",
        settings.ENV_RUN_LEASE: str(lease),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "integrity_tests.remediation_worker", *argv],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([process.stdout], [], [], 60)
        line = process.stdout.readline().strip() if ready else ""
        assert line == "in-transaction", (line, process.poll())
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        _, err = process.communicate(timeout=10)
    assert process.returncode == -signal.SIGKILL, err


def lease_until(engine: sa.Engine, run_id: str) -> datetime:
    with engine.connect() as conn:
        [run] = read_runs(conn, remediation_runs.c.run_id == run_id)
    return run["lease_until"]


def wait_for_lease_to_run_out(engine: sa.Engine, run_id: str) -> None:
    """Sleep until the database's clock is past the run's lease (nothing renews a dead run's)."""
    until = lease_until(engine, run_id)
    while True:
        with engine.connect() as conn:
            left = (until - db_now(conn)).total_seconds()
        if left < 0:
            return
        time.sleep(left + 0.01)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
