"""Tenant partitions: one dynamic partition per tenant, plus `__all__` for the whole bucket.

Tenants are discovered from the storage prefixes and the database (core
`discover_tenants`), by the discovery sensor and the daily schedule, so a backfill from the UI
reconciles tenants independently.
"""

from __future__ import annotations

from collections.abc import Callable

import dagster as dg
import sqlalchemy as sa

from integrity.defs.resources import DatabaseResource, SpecResource, StorageResource
from integrity.errors import IntegrityError
from integrity.inventory import ALL_TENANTS, check_database, db_error_reason, discover_tenants
from integrity.spec import tenant_problem
from integrity.storage.base import ListingFailed

TENANTS = "tenants"

tenant_partitions = dg.DynamicPartitionsDefinition(name=TENANTS)

__all__ = ["ALL_TENANTS", "TENANTS", "DiscoveryFailed", "discover", "tenant_partitions"]


class DiscoveryFailed(Exception):
    """Tenants could not be discovered; the message is one line for a tick's skip reason."""


def discover(
    storage: StorageResource,
    database: DatabaseResource,
    spec: SpecResource,
    on_refused: Callable[[str], None] | None = None,
) -> list[str]:
    """Every tenant found in storage and the database, after a preflight of both sides.

    A value that cannot be a tenant (see integrity.spec.tenant_problem: 'org-acme/', '..') never
    becomes a partition; `on_refused` gets one line naming how many and the first.
    """
    try:
        reconciliation_spec = spec.load()
        store = storage.get_store()
        store.check_access()
        with database.engine() as engine:
            check_database(engine, reconciliation_spec)
            tenants = discover_tenants(store, engine, reconciliation_spec)
    except (IntegrityError, ListingFailed) as exc:
        raise DiscoveryFailed(str(exc)) from None
    except sa.exc.SQLAlchemyError as exc:
        reason = db_error_reason(exc)
        raise DiscoveryFailed(f"cannot read database {database.description}: {reason}") from None
    refused = {t: p for t in tenants if (p := tenant_problem(t)) is not None}
    if refused and on_refused is not None:
        first = next(iter(refused.values()))
        on_refused(
            f"ignored {len(refused)} value(s) of the tenant columns or prefixes that cannot be "
            f"a tenant partition; the first: {first}"
        )
    # A tenant literally named like the reserved key would shadow the whole-bucket partition.
    return [t for t in tenants if t != ALL_TENANTS and t not in refused]
