"""Both sides of the reconciliation, read in bulk into columnar frames.

`objects` lists storage, `rows` reads the database, `snapshots` keeps either as Parquet, and
`tenants` finds the tenants either side knows of. Either inventory records whether it is
complete; nothing downstream may act on an incomplete one.
"""

from integrity.inventory.names import ALL_TENANTS, PLANS, PROCESSING_JOBS
from integrity.inventory.objects import (
    OBJECT_SCHEMA,
    ProgressCallback,
    StorageInventory,
    covering_prefixes,
    inventory_from_batches,
    list_storage,
    merge_storage,
    minimal_prefixes,
)
from integrity.inventory.rows import (
    DatabaseInventory,
    check_database,
    db_error_reason,
    is_transient,
    read_database,
    referenced_keys,
    safe_url,
)
from integrity.inventory.snapshots import read_parquet, write_parquet
from integrity.inventory.tenants import discover_tenants

__all__ = [
    "OBJECT_SCHEMA",
    "ALL_TENANTS",
    "PROCESSING_JOBS",
    "PLANS",
    "DatabaseInventory",
    "ProgressCallback",
    "StorageInventory",
    "check_database",
    "covering_prefixes",
    "db_error_reason",
    "discover_tenants",
    "inventory_from_batches",
    "is_transient",
    "list_storage",
    "merge_storage",
    "minimal_prefixes",
    "read_database",
    "read_parquet",
    "referenced_keys",
    "safe_url",
    "write_parquet",
]
