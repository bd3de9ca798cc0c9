"""Conditional row writes shared by remediation and rollback.

Rows are read raw (as the driver returns them: SQLite's timestamps are text) and the values read
are bound back raw in the WHERE of the write, so a condition matches exactly what was seen and a
restored value is exactly what was there. Comparisons with values from elsewhere (an inventory,
an audit record) go through `same_value`, which compares timestamps as UTC instants.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import pandas as pd
import sqlalchemy as sa

from integrity import identity
from integrity.inventory import db_error_reason, is_transient
from integrity.remediation.ledger import lock_batch

BATCH_ATTEMPTS = 3
"""Attempts per batch transaction: a lost connection, a lock timeout or a concurrent change."""


class RowConflict(Exception):
    """A row changed between the batch's read and its write: the batch is rolled back."""


class BatchNotApplied(Exception):
    """A batch was rolled back after its attempts; the message is the reason, one line."""


class AmbiguousRows(Exception):
    """Several rows share one identity, so a write meant for one would change them all."""


def batch_transaction(
    engine: sa.Engine,
    run_id: str,
    work: Callable[[sa.Connection, Counter], None],
    *,
    dry_run: bool,
) -> Counter:
    """Run one batch's work in one transaction and return its counts.

    A write batch first takes the write lock (`lock_batch`); a dry run's transaction is rolled
    back. Conflicts (rows that changed, a constraint) and transient errors (a lock timeout, a
    lost connection) retry the whole batch; after BATCH_ATTEMPTS it raises BatchNotApplied, and
    nothing of the batch is applied.
    """
    for attempt in range(1, BATCH_ATTEMPTS + 1):
        counts: Counter = Counter()
        try:
            if dry_run:
                with engine.connect() as conn:
                    work(conn, counts)
                    conn.rollback()
            else:
                with engine.begin() as conn:
                    lock_batch(conn, run_id)
                    work(conn, counts)
            return counts
        except AmbiguousRows as exc:  # the same rows every time: no attempt can help
            raise BatchNotApplied(str(exc)) from None
        except (RowConflict, sa.exc.IntegrityError) as exc:
            if attempt < BATCH_ATTEMPTS:
                continue
            reason = "rows kept changing while the batch was written"
            if isinstance(exc, sa.exc.IntegrityError):  # or a constraint/trigger refuses it
                reason += f" (the database said: {db_error_reason(exc)})"
        except sa.exc.DBAPIError as exc:
            if attempt < BATCH_ATTEMPTS and (exc.connection_invalidated or is_transient(exc)):
                time.sleep(0.2 * 2 ** (attempt - 1))
                continue
            reason = db_error_reason(exc)
        raise BatchNotApplied(reason)
    raise AssertionError("unreachable")


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
    clauses += [row_matches(dict(zip(columns, r))) for r in rows if any(v is None for v in r)]
    return sa.or_(*clauses) if clauses else sa.false()


def row_matches(values: dict[str, Any]) -> sa.ColumnElement[bool]:
    """One row whose columns hold exactly these raw values (NULLs matched with IS NULL)."""
    return sa.and_(
        *[
            sa.column(c).is_(None) if v is None else sa.column(c) == raw(v)
            for c, v in values.items()
        ]
    )


def identity_clause(
    columns: Sequence[str], identities: Sequence[Sequence[Any]], dialect: str
) -> sa.ColumnElement[bool]:
    """Rows whose identity columns hold these values (an identity with a NULL part matches none).

    One column is an IN list, several a row-value IN; on SQLite each column's own IN list comes
    first, so the lookup uses the key's index instead of scanning the table. The values are the
    identities' text, bound untyped so that the database compares them with an integer id too.
    """
    if len(columns) == 1:
        return sa.column(columns[0]).in_(raw_list([values[0] for values in identities]))
    plain = [tuple(values) for values in identities if all(v is not None for v in values)]
    if not plain:
        return sa.false()
    condition = sa.tuple_(*[sa.column(c) for c in columns]).in_(plain)
    if dialect == "sqlite":
        narrow = [
            sa.column(c).in_(raw_list(list(dict.fromkeys(values[n] for values in plain))))
            for n, c in enumerate(columns)
        ]
        condition = sa.and_(*narrow, condition)
    return condition


def raw_list(values: Sequence[Any]) -> sa.BindParameter[Any]:
    """A list for IN, bound untyped like `raw` (a typed text list fails on an integer column in
    PostgreSQL: `operator does not exist: integer = character varying`)."""
    return sa.bindparam(None, list(values), expanding=True, type_=sa.types.NullType())


def rows_by_identity(
    rows: Iterable[Mapping[str, Any]], columns: Sequence[str], table: str
) -> dict[str | None, dict[str, Any]]:
    """Rows read back by identity, keyed as findings and audit records spell it; raises
    AmbiguousRows when two rows share one (the id names only part of the table's key)."""
    found: dict[str | None, dict[str, Any]] = {}
    for row in rows:
        key = identity.encode([row[c] for c in columns])
        if key in found:
            raise AmbiguousRows(
                f"more than one row of {table} has the id {key} ({', '.join(columns)}), so a "
                "write would change them all; name every column that identifies a row in the "
                "spec's id, e.g. id: [tenant_id, id]"
            )
        found[key] = dict(row)
    return found
