"""Planted drift for the Dagster tests: three tenants, every action kind, on any object store.

Kept apart from the core tests' World so the Dagster tests pin their own expected counts.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from integrity import schema
from integrity.storage import LocalStorage
from integrity.storage.base import ObjectStore

TENANTS = ["org-1", "org-2", "proj-1"]

NO_FINDINGS = {
    "orphan_object": 0,
    "stuck_job": 0,
    "missing_original": 0,
    "missing_staged": 0,
    "progress_behind": 0,
    "foreign_reference": 0,
    "normalization_mismatch": 0,
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


def _naive(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc).replace(tzinfo=None)


def plant_drift(store: ObjectStore, engine: sa.Engine) -> None:
    """Write the rows and objects; local objects get an mtime two hours back (past min_age)."""
    now = datetime.now(timezone.utc)
    two_hours_ago, two_days_ago = _naive(now - timedelta(hours=2)), _naive(now - timedelta(days=2))
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
    with engine.begin() as conn:
        for row in (
            ("d-ok", "org-1", "documents/org-1/ok.pdf"),
            ("d-missing", "org-1", "documents/org-1/missing.pdf"),  # missing_original
        ):
            conn.execute(
                schema.documents.insert().values(
                    id=row[0],
                    organization_id=row[1],
                    r2_key=row[2],
                    status="complete",
                    created_at=two_hours_ago,
                    updated_at=two_hours_ago,
                )
            )
        conn.execute(
            schema.processing_jobs.insert().values(
                object_key="documents/org-1/stuck.pdf",
                status="processing",
                started_at=two_days_ago,
                updated_at=two_days_ago,
            )
        )
        conn.execute(
            schema.images.insert(),
            [
                dict(
                    id="img-ok",
                    project_id="proj-1",
                    status="ready",
                    original_url="images/proj-1/a.jpg",
                    staged_url="images/proj-1/a-staged.jpg",
                    updated_at=two_hours_ago,
                ),
                dict(
                    id="img-staged",
                    project_id="proj-1",
                    status="ready",
                    original_url="images/proj-1/b.jpg",
                    staged_url="images/proj-1/b-staged.jpg",
                    updated_at=two_hours_ago,
                ),
                # foreign_reference: another bucket, never counted as missing
                dict(
                    id="img-foreign",
                    project_id="proj-1",
                    status="queued",
                    original_url="s3://elsewhere/x.jpg",
                    staged_url=None,
                    updated_at=two_hours_ago,
                ),
                # status error: skipped although its original is missing
                dict(
                    id="img-error",
                    project_id="proj-1",
                    status="error",
                    original_url="images/proj-1/gone.jpg",
                    staged_url=None,
                    updated_at=two_hours_ago,
                ),
            ],
        )
        conn.execute(
            schema.plans.insert().values(
                plan_id="plan-1",
                organization_id="org-1",
                project_id="p",
                status="processing",
                completed_pages=1,
                total_pages=3,
                updated_at=two_hours_ago,
            )
        )
