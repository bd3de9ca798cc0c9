"""Planted drift for the Dagster tests: three tenants, every action kind, on any object store.

Kept apart from the core tests' World so the Dagster tests pin their own expected counts.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from integrity.storage import LocalStorage
from integrity.storage.base import ObjectStore
from integrity_tests.world import World

TENANTS = ["org-1", "org-2", "proj-1"]

NO_FINDINGS = {
    "orphan_object": 0,
    "stuck_job": 0,
    "missing_original": 0,
    "missing_staged": 0,
    "progress_behind": 0,
    "foreign_reference": 0,
    "normalization_mismatch": 0,
    "invalid_reference": 0,
}
# Per partition: finding counts, objects listed, rows read.
EXPECTED: dict[str, tuple[dict[str, int], int, int]] = {
    "org-1": (
        {
            **NO_FINDINGS,
            "orphan_object": 1,
            "stuck_job": 1,
            "missing_original": 1,
            "progress_behind": 1,
        },
        5,
        4,
    ),
    "proj-1": ({**NO_FINDINGS, "missing_staged": 1, "foreign_reference": 1}, 3, 4),
    "__all__": (
        {
            **NO_FINDINGS,
            "orphan_object": 2,
            "stuck_job": 1,
            "missing_original": 1,
            "missing_staged": 1,
            "progress_behind": 1,
            "foreign_reference": 1,
        },
        9,
        8,
    ),
}


def plant_drift(store: ObjectStore, engine: sa.Engine) -> None:
    """Write the rows and objects; local objects get an mtime two hours back (past min_age)."""
    now = datetime.now(timezone.utc)
    two_days = timedelta(days=2)
    keys = [
        "documents/org-1/ok.pdf",
        "documents/org-1/orphan.pdf",  # orphan_object
        "documents/org-1/stuck.pdf",  # stuck_job
        "documents/org-2/orphan.pdf",  # orphan_object
        "organizations/org-1/projects/p/plans/plan-1/sheets/s1/tiles/s1.dzi",
        "organizations/org-1/projects/p/plans/plan-1/sheets/s2/tiles/s2.dzi",  # progress_behind
        "images/proj-1/a.jpg",
        "images/proj-1/a-staged.jpg",
        "images/proj-1/b.jpg",  # its staged copy is missing: missing_staged
    ]
    for key in keys:
        store.put_bytes(key, b"x")
        if isinstance(store, LocalStorage):
            old = (now - timedelta(hours=2)).timestamp()
            os.utime(store.root.joinpath(*key.split("/")), (old, old))
    world = World(engine, store, base=now)
    world.document("d-ok", "documents/org-1/ok.pdf")
    world.document("d-missing", "documents/org-1/missing.pdf")  # missing_original
    world.job("documents/org-1/stuck.pdf", "processing", started_ago=two_days, updated_ago=two_days)
    world.image("img-ok", "images/proj-1/a.jpg", "images/proj-1/a-staged.jpg")
    world.image("img-staged", "images/proj-1/b.jpg", "images/proj-1/b-staged.jpg")
    # foreign_reference: another bucket, never counted as missing
    world.image("img-foreign", "s3://elsewhere/x.jpg", status="queued")
    # status error: skipped although its original is missing
    world.image("img-error", "images/proj-1/gone.jpg", status="error")
    world.plan("plan-1", completed=1, total=3, project="p")
