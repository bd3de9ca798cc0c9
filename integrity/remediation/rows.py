"""Conditional row writes shared by remediation and rollback.

Rows are read raw (as the driver returns them: SQLite's timestamps are text) and the values read
are bound back raw in the WHERE of the write, so a condition matches exactly what was seen and a
restored value is exactly what was there. Comparisons with values from elsewhere (an inventory,
an audit record) go through `same_value`, which compares timestamps as UTC instants.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pandas as pd
import sqlalchemy as sa

BATCH_ATTEMPTS = 3
"""Attempts per batch transaction: a lost connection, a lock timeout or a concurrent change."""


class RowConflict(Exception):
    """A row changed between the batch's read and its write: the batch is rolled back."""


def as_utc(value: Any) -> pd.Timestamp | None:
    """A stored timestamp (a datetime, or SQLite's text) as UTC; naive values are UTC."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    try:
        if isinstance(value, str):
            try:  # SQLite's text timestamps: the standard library parses them 50x faster
                value = datetime.fromisoformat(value)
            except ValueError:
                value = pd.to_datetime(value, format="ISO8601")
        ts = pd.Timestamp(value)
    except (ValueError, TypeError):
        return None
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def same_value(a: Any, b: Any, *, timestamp: bool = False) -> bool:
    if timestamp:
        return as_utc(a) == as_utc(b)
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, bool) or isinstance(b, bool):
        return bool(a) == bool(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return str(a) == str(b)


def raw(value: Any) -> sa.BindParameter[Any]:
    """A value bound exactly as the driver returned it (no type processing)."""
    return sa.bindparam(None, value, type_=sa.types.NullType())


def match_rows(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> sa.ColumnElement[bool]:
    """Rows whose columns hold exactly these raw values (NULLs matched with IS NULL)."""
    plain = [r for r in rows if all(v is not None for v in r)]
    clauses: list[sa.ColumnElement[bool]] = []
    if plain:
        clauses.append(sa.tuple_(*[sa.column(c) for c in columns]).in_([tuple(r) for r in plain]))
    for r in rows:
        if any(v is None for v in r):
            clauses.append(
                sa.and_(
                    *[
                        sa.column(c).is_(None) if v is None else sa.column(c) == raw(v)
                        for c, v in zip(columns, r)
                    ]
                )
            )
    return sa.or_(*clauses) if clauses else sa.false()
