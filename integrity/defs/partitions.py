"""Tenant partitions: one dynamic partition per tenant, plus `__all__` for the whole bucket.

Tenants are discovered from the storage prefixes and the database (core
`discover_tenants`), by the discovery sensor and the daily schedule, so a backfill from the UI
reconciles tenants independently.
"""

from __future__ import annotations

import dagster as dg
import sqlalchemy as sa

from integrity.defs.resources import DatabaseResource, SpecResource, StorageResource
from integrity.errors import IntegrityError
from integrity.inventory import ALL_TENANTS, check_database, db_error_reason, discover_tenants
from integrity.storage.base import ListingFailed

TENANTS = "tenants"

tenant_partitions = dg.DynamicPartitionsDefinition(name=TENANTS)

__all__ = ["ALL_TENANTS", "TENANTS", "DiscoveryFailed", "discover", "tenant_partitions"]


class DiscoveryFailed(Exception):
    """Tenants could not be discovered; the message is one line for a tick's skip reason."""


def discover(storage: StorageResource, database: DatabaseResource, spec: SpecResource) -> list[str]:
    """Every tenant found in storage and the database, after a preflight of both sides."""
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
    # A tenant literally named like the reserved key would shadow the whole-bucket partition.
    return [t for t in tenants if t != ALL_TENANTS]
