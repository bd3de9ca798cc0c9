"""Database URLs as users write them, turned into something SQLAlchemy can open here."""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa


def database_url(url: str | sa.URL) -> sa.URL:
    """Parse a URL; a bare postgresql:// uses psycopg 3 (the declared driver) when psycopg2 is absent.

    Raises sqlalchemy.exc.ArgumentError for a malformed URL.
    """
    parsed = sa.make_url(url)
    if parsed.drivername == "postgresql":
        try:
            import psycopg2  # noqa: F401
        except ImportError:
            parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def split_table_name(name: str) -> tuple[str | None, str]:
    """A spec's table name, plain or schema-qualified ('schema.table'), as (schema, table)."""
    schema, _, table = name.rpartition(".")
    return schema or None, table


def table_clause(
    name: str, columns: Iterable[str | sa.ColumnClause[object]] = ()
) -> sa.TableClause:
    """A lightweight table clause for a spec's table name, with the columns a statement names."""
    schema, table = split_table_name(name)
    return sa.table(
        table,
        *[c if isinstance(c, sa.ColumnClause) else sa.column(c) for c in columns],
        schema=schema,
    )
