"""The processor: `process_document` turns one uploaded object into what the database expects.

(Being built for issue 4: this module owns the job, its op and its run config.)
"""

from __future__ import annotations

from typing import Any

import dagster as dg

PROCESS_JOB = "process_document"
PROCESS_OP = "process_object"


def process_run_config(key: str, source: str) -> dict[str, Any]:
    """Run config for one object: every trigger (sensors, re-queue, UI) builds it here."""
    return {"ops": {PROCESS_OP: {"config": {"key": key, "source": source}}}}


processing_jobs: list[dg.JobDefinition] = []
