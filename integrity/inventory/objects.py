"""The storage inventory: every object under the listed prefixes, in columns.

Prefixes are listed concurrently, a page of 1,000 keys at a time, and every page turns into
Arrow arrays at once, so no dict per object outlives its page. A listing page that failed after
its retries makes the inventory incomplete, with the reason.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from integrity.errors import StorageError
from integrity.inventory.names import utcnow
from integrity.inventory.snapshots import read_parquet, write_parquet
from integrity.storage.base import ListingFailed, ListingPage, ObjectStore

ProgressCallback = Callable[[str, int], None]


OBJECT_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("size", pa.int64()),
        ("etag", pa.string()),
        ("last_modified", pa.timestamp("us", tz="UTC")),
    ]
)


@dataclass
class StorageInventory:
    """Every object found under the listed prefixes: key, size, etag, last_modified."""

    bucket: str
    prefixes: list[str]
    objects: pd.DataFrame
    complete: bool = True
    errors: list[str] = field(default_factory=list)
    requests: int = 0
    seconds: float = 0.0
    listed_at: datetime = field(default_factory=utcnow)
    backend: str = "s3"
    """The kind of store listed, whose key rules the diff applies to references."""
    source: str = "listing"
    """Where the objects came from: "listing", or the manifest of an S3 Inventory report."""
    snapshot_at: datetime | None = None
    """When the objects were as recorded (an inventory report's creation time); None for a live
    listing, which is as of `listed_at`."""

    @property
    def as_of(self) -> datetime:
        """The time the inventory describes storage at."""
        return self.snapshot_at or self.listed_at

    def _meta(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "backend": self.backend,
            "prefixes": self.prefixes,
            "complete": self.complete,
            "errors": self.errors,
            "requests": self.requests,
            "seconds": self.seconds,
            "listed_at": self.listed_at.isoformat(),
            "source": self.source,
            "snapshot_at": self.snapshot_at.isoformat() if self.snapshot_at else None,
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        write_parquet(path, self.objects, self._meta())
        return path

    @classmethod
    def load(cls, path: str | Path) -> StorageInventory:
        frame, meta = read_parquet(Path(path))
        meta["listed_at"] = datetime.fromisoformat(meta["listed_at"])
        if meta.get("snapshot_at"):
            meta["snapshot_at"] = datetime.fromisoformat(meta["snapshot_at"])
        return cls(objects=frame, **meta)


def inventory_from_batches(
    batches: Iterable[pa.RecordBatch],
    *,
    bucket: str,
    backend: str = "s3",
    prefixes: list[str] | None = None,
    source: str = "listing",
    snapshot_at: datetime | None = None,
    errors: list[str] | None = None,
    requests: int = 0,
    seconds: float = 0.0,
) -> StorageInventory:
    """A storage inventory from record batches of OBJECT_SCHEMA, from any source."""
    table = pa.Table.from_batches(list(batches), schema=OBJECT_SCHEMA)
    errors = sorted(errors or [])
    return StorageInventory(
        bucket=bucket,
        backend=backend,
        prefixes=[""] if prefixes is None else prefixes,
        objects=table.to_pandas(),
        complete=not errors,
        errors=errors,
        requests=requests,
        seconds=seconds,
        source=source,
        snapshot_at=snapshot_at,
    )


def minimal_prefixes(prefixes: Iterable[str]) -> list[str]:
    """Drop prefixes that another prefix in the set already covers."""
    kept: list[str] = []
    for prefix in sorted(set(prefixes)):
        if not kept or not prefix.startswith(kept[-1]):
            kept.append(prefix)
    return kept


def _batch(page: ListingPage) -> pa.RecordBatch:
    # A page from S3 is a record batch already (no Python object per key); the columns are
    # OBJECT_SCHEMA's, checked rather than assumed.
    return pa.RecordBatch.from_arrays(page.to_batch().columns, schema=OBJECT_SCHEMA)


def _split_bucket(store: ObjectStore) -> tuple[list[str], list[pa.RecordBatch]]:
    """One delimiter listing of the bucket's root: its top-level prefixes, to list concurrently,
    and the root-level objects themselves, already in columns."""
    prefixes: list[str] = []
    root: list[pa.RecordBatch] = []
    for page in store.list_pages("", delimiter="/"):
        prefixes.extend(page.common_prefixes)
        if page.keys:
            root.append(_batch(page))
    return prefixes, root


def list_storage(
    store: ObjectStore,
    prefixes: list[str] | None = None,
    *,
    concurrency: int = 8,
    on_progress: ProgressCallback | None = None,
) -> StorageInventory:
    """List the given prefixes (None: the whole bucket) concurrently into one columnar frame."""
    started = time.perf_counter()
    requests_before = store.requests
    errors: list[str] = []
    chunks: list[pa.RecordBatch] = []
    lock = threading.Lock()

    if prefixes is None:
        try:
            work, chunks = _split_bucket(store)
        except (ListingFailed, StorageError) as exc:
            work, errors = [], [str(exc)]
        listed_prefixes = [""]
    else:
        work = minimal_prefixes(prefixes)
        listed_prefixes = work

    def list_one(prefix: str) -> None:
        try:
            for page in store.list_pages(prefix):
                if not page.keys:
                    continue
                batch = _batch(page)
                with lock:
                    chunks.append(batch)
                if on_progress is not None:
                    on_progress("objects", len(page.keys))
        except (ListingFailed, StorageError) as exc:
            with lock:
                errors.append(str(exc))

    if len(work) <= 1 or concurrency <= 1:
        for prefix in work:
            list_one(prefix)
    else:
        with ThreadPoolExecutor(
            max_workers=min(concurrency, len(work)), thread_name_prefix="list"
        ) as pool:
            list(pool.map(list_one, work))

    table = (
        pa.Table.from_batches(chunks, schema=OBJECT_SCHEMA)
        if chunks
        else OBJECT_SCHEMA.empty_table()
    )
    objects = table.to_pandas()
    del table
    # The prefixes listed are disjoint (minimal_prefixes), so no key can appear twice.
    pa.default_memory_pool().release_unused()
    return StorageInventory(
        bucket=store.bucket,
        backend=store.backend,
        prefixes=listed_prefixes,
        objects=objects,
        complete=not errors,
        errors=sorted(errors),
        requests=store.requests - requests_before,
        seconds=time.perf_counter() - started,
    )


def merge_storage(a: StorageInventory, b: StorageInventory) -> StorageInventory:
    objects = pd.concat([a.objects, b.objects], ignore_index=True).drop_duplicates(
        "key", ignore_index=True
    )
    return StorageInventory(
        bucket=a.bucket,
        backend=a.backend,
        prefixes=minimal_prefixes(a.prefixes + b.prefixes),
        objects=objects,
        complete=a.complete and b.complete,
        errors=a.errors + b.errors,
        requests=a.requests + b.requests,
        seconds=a.seconds + b.seconds,
        listed_at=min(a.listed_at, b.listed_at),
    )


def covering_prefixes(keys: Iterable[str], already: list[str], max_prefixes: int = 64) -> list[str]:
    """A few prefixes that together cover every key not yet covered by `already`.

    Used when a tenant's rows reference objects outside the tenant's own prefixes (images may
    live anywhere their URLs point): the referenced directories are listed in bulk rather than
    sending one request per reference. Directories are merged upward until at most
    max_prefixes remain; past that, the whole bucket is listed.
    """
    uncovered = {k for k in keys if k and not any(k.startswith(p) for p in already)}
    if not uncovered:
        return []
    prefixes = minimal_prefixes(k.rsplit("/", 1)[0] + "/" if "/" in k else k for k in uncovered)
    depth = max(p.count("/") for p in prefixes)
    while len(prefixes) > max_prefixes:
        depth -= 1
        if depth <= 0:
            return [""]
        prefixes = minimal_prefixes(_truncate(p, depth) for p in prefixes)
    return prefixes


def _truncate(prefix: str, depth: int) -> str:
    """Keep the first `depth` directory levels of a prefix."""
    parts = prefix.split("/")
    return prefix if len(parts) - 1 <= depth else "/".join(parts[:depth]) + "/"
