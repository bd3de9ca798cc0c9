"""Names shared by both inventories: the pseudo-tables and the whole-bucket scope."""

from __future__ import annotations

PROCESSING_JOBS = "__jobs__"  # the spec's `jobs` table (processing_jobs rows), not Dagster jobs
PLANS = "__plans__"
ALL_TENANTS = "__all__"
