"""Inventory snapshots: Parquet files with the inventory's own metadata in the schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from integrity.settings import arrow_pool_chosen

# Arrow's default pool (mimalloc) keeps the pages it frees, so a listing followed by a diff
# peaks at about twice the memory the frames need (measured in BENCHMARKS.md). The system
# allocator gives them back; ARROW_DEFAULT_MEMORY_POOL (read by integrity.settings) still
# overrides this choice.
if not arrow_pool_chosen():
    pa.set_memory_pool(pa.system_memory_pool())


def write_parquet(path: Path, frame: pd.DataFrame, meta: dict[str, Any]) -> None:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), b"integrity": json.dumps(meta)}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def read_parquet(path: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    table = pq.read_table(path)
    meta = json.loads((table.schema.metadata or {}).get(b"integrity", b"{}"))
    return table.to_pandas(), meta
