"""Names shared by both inventories: the pseudo-tables and the whole-bucket scope."""

from __future__ import annotations

JOBS = "__jobs__"
PLANS = "__plans__"
ALL_TENANTS = "__all__"
