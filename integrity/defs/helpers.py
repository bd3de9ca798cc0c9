"""Helpers every domain of the Dagster layer uses: a core error as a step's one-line failure,
and the report snapshot of a tenant partition, read where the snapshot IO manager keeps it.

A leaf above names.py and io_managers.py: it imports no domain.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

from integrity.defs.io_managers import REPORT_FILE, ParquetSnapshotIOManager
from integrity.defs.names import REPORT_KEY
from integrity.diff import ReconciliationReport
from integrity.errors import IntegrityError


@contextmanager
def fail_clearly() -> Iterator[None]:
    """Turn a fatal core error (missing bucket, unreachable DB, bad spec) into its one line."""
    try:
        yield
    except IntegrityError as exc:
        raise dg.Failure(description=str(exc)) from None


def report_path(io_manager: ParquetSnapshotIOManager, tenant: str) -> Path:
    """Where the snapshot IO manager keeps the report of this tenant partition."""
    context = dg.build_input_context(asset_key=REPORT_KEY, partition_key=tenant)
    return io_manager.snapshot_dir(context) / REPORT_FILE


def load_report(io_manager: ParquetSnapshotIOManager, tenant: str) -> ReconciliationReport:
    path = report_path(io_manager, tenant)
    if not path.is_file():
        raise dg.Failure(
            description=f"no reconciliation_report snapshot for partition {tenant!r} "
            f"(looked in {path.parent}): materialize reconciliation_report for partition "
            f"{tenant!r} first"
        )
    return ReconciliationReport.load(path)
