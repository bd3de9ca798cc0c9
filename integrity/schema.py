"""The reference schema: the tables the default spec describes, used by the demo and the tests.

Users with other table or column names describe theirs in a spec file; nothing here is required
by the reconciliation itself, which reads tables through the spec.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

documents = sa.Table(
    "documents",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("organization_id", sa.Text, nullable=False),
    sa.Column("r2_key", sa.Text, nullable=False, unique=True),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False),
)

processing_jobs = sa.Table(
    "processing_jobs",
    metadata,
    sa.Column("object_key", sa.Text, primary_key=True),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("started_at", sa.DateTime),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.Column("error", sa.Text),
)

images = sa.Table(
    "images",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("project_id", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("original_url", sa.Text, nullable=False),
    sa.Column("staged_url", sa.Text),
    sa.Column("error", sa.Text),
    sa.Column("updated_at", sa.DateTime, nullable=False),
)

plans = sa.Table(
    "plans",
    metadata,
    sa.Column("plan_id", sa.Text, primary_key=True),
    sa.Column("organization_id", sa.Text, nullable=False),
    sa.Column("project_id", sa.Text, nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("completed_pages", sa.Integer, nullable=False),
    sa.Column("total_pages", sa.Integer, nullable=False),
    sa.Column("started_at", sa.DateTime),
    sa.Column("updated_at", sa.DateTime, nullable=False),
    sa.Column("completed_at", sa.DateTime),
    sa.Column("reconciled", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("reconciled_at", sa.DateTime),
)


def create_reference_schema(engine: sa.Engine) -> None:
    """Create the reference tables if they do not exist (demo, tests, benchmarks)."""
    metadata.create_all(engine)


def drop_reference_schema(engine: sa.Engine) -> None:
    metadata.drop_all(engine)
