"""One reconciliation, end to end: preflight, list and read concurrently, diff.

The storage listing streams into a Parquet file and the diff runs over the files out of core
(`integrity.parquet_diff`), under the engine's memory limit.

The CLI and benchmarks call this directly; the Dagster assets call its pieces one asset at a
time so that each inventory is its own snapshot.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import sqlalchemy as sa

from integrity.diff import DiffOptions, ReconciliationReport
from integrity.engine import EngineLimits
from integrity.inventory import (
    ALL_TENANTS,
    DatabaseInventory,
    ProgressCallback,
    StorageInventory,
    check_database,
    covering_prefixes,
    list_storage,
    merge_storage,
    minimal_prefixes,
    read_database,
    referenced_keys,
)
from integrity.parquet_diff import diff_any_size
from integrity.spec import ReconciliationSpec
from integrity.storage.base import ObjectStore

if TYPE_CHECKING:
    from integrity.inventory.reports import InventoryReport


def tenant_scope(tenant: str | None) -> str | None:
    """None for the whole bucket, else the tenant."""
    return None if tenant in (None, "", ALL_TENANTS) else tenant


def storage_prefixes(spec: ReconciliationSpec, tenant: str | None) -> list[str] | None:
    """The prefixes a tenant owns (None: the whole bucket)."""
    tenant = tenant_scope(tenant)
    return None if tenant is None else spec.tenant_prefixes(tenant)


def list_referenced_outside(
    store: ObjectStore,
    inventory: StorageInventory,
    db: DatabaseInventory,
    spec: ReconciliationSpec,
    *,
    concurrency: int = 8,
    on_progress: ProgressCallback | None = None,
) -> StorageInventory:
    """Add to a tenant's inventory the directories its rows reference outside its own prefixes."""
    if "" in inventory.prefixes:
        return inventory
    extra = covering_prefixes(
        referenced_keys(db, spec, store.bucket, store.backend), inventory.prefixes
    )
    if not extra:
        return inventory
    return merge_storage(
        inventory, list_storage(store, extra, concurrency=concurrency, on_progress=on_progress)
    )


def build_storage_inventory(
    store: ObjectStore,
    db: DatabaseInventory,
    spec: ReconciliationSpec,
    tenant: str | None,
    *,
    concurrency: int = 8,
    on_progress: ProgressCallback | None = None,
) -> StorageInventory:
    inventory = list_storage(
        store, storage_prefixes(spec, tenant), concurrency=concurrency, on_progress=on_progress
    )
    return list_referenced_outside(
        store, inventory, db, spec, concurrency=concurrency, on_progress=on_progress
    )


def read_inventory_report(
    report: InventoryReport,
    store: ObjectStore,
    db: DatabaseInventory | None,
    spec: ReconciliationSpec,
    tenant: str | None,
    *,
    on_progress: ProgressCallback | None = None,
) -> StorageInventory:
    """The storage side from an S3 Inventory report instead of a listing: for a tenant, the
    keys under its prefixes and under the directories its rows point into, as listed."""
    prefixes = storage_prefixes(spec, tenant)
    if prefixes is not None:
        assert db is not None, "a tenant's storage side needs its rows first"
        referenced = referenced_keys(db, spec, store.bucket, store.backend)
        prefixes = minimal_prefixes(prefixes + covering_prefixes(referenced, prefixes))
    return report.read(
        bucket=store.bucket, backend=store.backend, prefixes=prefixes, on_progress=on_progress
    )


def reconcile(
    store: ObjectStore,
    engine: sa.Engine,
    spec: ReconciliationSpec,
    options: DiffOptions | None = None,
    *,
    concurrency: int = 8,
    on_progress: ProgressCallback | None = None,
    inventory_report: InventoryReport | None = None,
    limits: EngineLimits | None = None,
) -> ReconciliationReport:
    """Preflight both sides, then list storage while the database is read, then diff.

    With `inventory_report`, storage is that report's snapshot instead of a listing (read while
    the database is, unless a tenant's rows must say first which directories to keep).
    """
    options = options or DiffOptions()
    limits = limits or EngineLimits.default()
    started = time.perf_counter()
    store.check_access()
    check_database(engine, spec)
    tenant = tenant_scope(options.tenant)
    if inventory_report is not None:
        inventory_report.check_bucket(store.bucket)
        if tenant is None:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="db") as pool:
                db_future = pool.submit(
                    read_database, engine, spec, tenant=tenant, on_progress=on_progress
                )
                inventory = read_inventory_report(
                    inventory_report, store, None, spec, None, on_progress=on_progress
                )
                db = db_future.result()
        else:
            db = read_database(engine, spec, tenant=tenant, on_progress=on_progress)
            inventory = read_inventory_report(
                inventory_report, store, db, spec, tenant, on_progress=on_progress
            )
    else:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="db") as pool:
            db_future = pool.submit(
                read_database, engine, spec, tenant=tenant, on_progress=on_progress
            )
            inventory = list_storage(
                store,
                storage_prefixes(spec, tenant),
                concurrency=concurrency,
                on_progress=on_progress,
            )
            db = db_future.result()
        inventory = list_referenced_outside(
            store, inventory, db, spec, concurrency=concurrency, on_progress=on_progress
        )
    diff_started = time.perf_counter()
    report = diff_any_size(inventory, db, spec, options, limits=limits)
    report.timings["diff_seconds"] = time.perf_counter() - diff_started
    report.timings["total_seconds"] = time.perf_counter() - started
    return report
