"""The current time in UTC, in the two forms the code stores.

`utcnow()` is timezone-aware, for the ledger, the queue and inventories. `naive_utcnow()` drops
the zone, because the reference schema's `processing_jobs` and `plans` columns store naive UTC
timestamps. A leaf module: it imports nothing from the package.
"""

from __future__ import annotations

from datetime import datetime, timezone


def utcnow() -> datetime:
    """Aware UTC now."""
    return datetime.now(timezone.utc)


def naive_utcnow() -> datetime:
    """Naive UTC now, as the reference schema stores timestamps."""
    return datetime.now(timezone.utc).replace(tzinfo=None)
