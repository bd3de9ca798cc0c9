"""Tenant discovery: the tenants storage and the database know of."""

from __future__ import annotations

import sqlalchemy as sa

from integrity.database import table_clause
from integrity.spec import ReconciliationSpec
from integrity.storage.base import ObjectStore, list_common_prefixes


def discover_tenants(store: ObjectStore, engine: sa.Engine, spec: ReconciliationSpec) -> list[str]:
    """Tenants found in storage (the prefixes under each tenant template) and in the database."""
    found: set[str] = set()
    for template in spec.tenant_prefix_templates:
        head = template.split("{tenant}", 1)[0]
        for prefix in list_common_prefixes(store, head):
            tenant = prefix[len(head) :].rstrip("/")
            if tenant:
                found.add(tenant)
    columns = [(t.table, t.tenant) for t in spec.tables.values()]
    if spec.plans is not None:
        columns.append((spec.plans.table, spec.plans.tenant))
    with engine.connect() as conn:
        for table, column in columns:
            rows = conn.execute(
                sa.select(sa.column(column)).select_from(table_clause(table)).distinct()
            )
            found.update(str(r[0]) for r in rows if r[0] is not None and str(r[0]))
    return sorted(found)
