"""A Parquet IO manager for the reconciliation snapshots, so nothing is pickled.

Each snapshot class saves and loads itself (Parquet with its metadata in the file); this only
decides where: `<base_dir>/<asset key>/<partition>/`, with a file name per class so loading
needs no type annotation. A storage inventory is already a Parquet file, written as it was
listed: saving moves it into place, and loading leaves the objects in the file for the diff.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import dagster as dg
from pydantic import Field

from integrity import settings
from integrity.diff import ReconciliationReport
from integrity.inventory import DatabaseInventory, StorageInventory

UNPARTITIONED = "__unpartitioned__"
STORAGE_FILE = "objects.parquet"
REPORT_FILE = "findings.parquet"
DATABASE_MARKER = "inventory.json"

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")

Snapshot = StorageInventory | DatabaseInventory | ReconciliationReport


def partition_dir_name(partition_key: str | None) -> str:
    """A file-system-safe, collision-free directory name for a partition key.

    Tenant ids may hold '/', spaces or unicode; unsafe characters become '_' and a short hash
    of the original keeps two keys that sanitise alike apart.
    """
    if not partition_key:
        return UNPARTITIONED
    safe = _UNSAFE.sub("_", partition_key)[:100]
    if safe == partition_key and safe not in (".", ".."):
        return safe
    digest = hashlib.sha256(partition_key.encode("utf-8")).hexdigest()[:10]
    return f"{safe}-{digest}"


class ParquetSnapshotIOManager(dg.ConfigurableIOManager):
    """Stores inventories and reports as Parquet snapshots, one directory per asset partition."""

    base_dir: str | None = Field(
        default=None, description="Snapshot root; unset means $INTEGRITY_HOME/snapshots."
    )

    def _root(self) -> Path:
        return (
            Path(self.base_dir).expanduser().absolute()
            if self.base_dir
            else settings.snapshot_dir()
        )

    def _dir(self, asset_key: dg.AssetKey, partition_key: str | None) -> Path:
        return self._root().joinpath(*asset_key.path, partition_dir_name(partition_key))

    def snapshot_dir(self, context: dg.OutputContext | dg.InputContext) -> Path:
        partition = context.asset_partition_key if context.has_asset_partitions else None
        return self._dir(context.asset_key, partition)

    def handle_output(self, context: dg.OutputContext, obj: Snapshot) -> None:
        directory = self.snapshot_dir(context)
        if isinstance(obj, StorageInventory):
            path = obj.save(directory / STORAGE_FILE)
        elif isinstance(obj, ReconciliationReport):
            path = obj.save(directory / REPORT_FILE)
        elif isinstance(obj, DatabaseInventory):
            path = obj.save(directory)
        else:
            raise dg.DagsterInvariantViolationError(
                f"{context.asset_key.to_user_string()}: the snapshot IO manager stores inventories "
                f"and reports, not {type(obj).__name__}"
            )
        context.add_output_metadata({"snapshot": dg.MetadataValue.path(str(path))})

    def load_input(self, context: dg.InputContext) -> Snapshot:
        directory = self.snapshot_dir(context)
        # The marker first: a spec table could be named like another class's file.
        if (directory / DATABASE_MARKER).is_file():
            return DatabaseInventory.load(directory)
        if (directory / STORAGE_FILE).is_file():
            return StorageInventory.load(directory / STORAGE_FILE)
        if (directory / REPORT_FILE).is_file():
            return ReconciliationReport.load(directory / REPORT_FILE)
        raise dg.DagsterInvariantViolationError(
            f"no snapshot of {context.asset_key.to_user_string()} in {directory}: "
            "materialize it for this partition first"
        )
