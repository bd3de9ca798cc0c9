"""What a rollback's counts mean, in a module of its own so `integrity --help` and the CLI's
formatting can name them without loading SQLAlchemy."""

from __future__ import annotations

ROLLBACK_COUNTS: dict[str, str] = {
    "restored": "rows given back their values from before the run",
    "removed": "rows the run created, removed",
    "unchanged": "records that changed nothing (a queue entry only)",
    "skipped_changed": "rows changed since the run: left as they are",
    "queue_cancelled": "queue entries not yet delivered: cancelled",
    "queue_already_delivered": "queue entries already sent or taken: cannot be recalled",
}
