"""Names shared by both inventories: the pseudo-tables and the whole-bucket scope."""

from __future__ import annotations

from datetime import datetime, timezone

JOBS = "__jobs__"
PLANS = "__plans__"
ALL_TENANTS = "__all__"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)
