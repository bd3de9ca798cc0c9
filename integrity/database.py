"""Database URLs as users write them, turned into something SQLAlchemy can open here."""

from __future__ import annotations

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
