"""The storage inventory: every object under the listed prefixes, in a Parquet file.

Prefixes are listed concurrently, a page of 1,000 keys at a time, and every page turns into
Arrow arrays at once and goes straight into a Parquet file, a row group at a time, so memory
stays flat whatever the bucket holds. The file is the inventory: the diff reads it, `save` moves
or copies it into a snapshot, and `objects` loads it as one frame only for whoever asks. A
listing page that failed after its retries makes the inventory incomplete, with the reason.
"""

from __future__ import annotations

import bisect
import json
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from integrity.clock import utcnow
from integrity.engine import connect, sql_literal
from integrity.errors import StorageError
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
SNAPSHOT_METADATA = "integrity"
"""The key of the inventory's own metadata in its Parquet file (as in every snapshot)."""
ROW_GROUP_ROWS = 128 * 1024
"""Objects per Parquet row group: pages are gathered up to this before they are written."""


class ObjectWriter:
    """Record batches of OBJECT_SCHEMA into one Parquet file, a row group at a time.

    The file goes into `work_dir` (kept), or into a temporary directory the writer hands to the
    inventory it finishes (removed with the inventory). The inventory's metadata is written
    into the file's footer when it is finished, so the file is a snapshot as it stands.
    Safe to call from several listing threads.
    """

    def __init__(self, work_dir: str | Path | None = None) -> None:
        self._owner: tempfile.TemporaryDirectory[str] | None = None
        if work_dir is None:
            self._owner = tempfile.TemporaryDirectory(prefix="integrity-objects-")
            directory = Path(self._owner.name)
        else:
            directory = Path(work_dir)
            directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"objects-{uuid.uuid4().hex[:12]}.parquet"
        self.count = 0
        self._lock = threading.Lock()
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        # No Arrow schema in the file: the inventory's metadata then reads back as the schema's.
        self._writer = pq.ParquetWriter(self.path, OBJECT_SCHEMA, store_schema=False)

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        if batch.schema != OBJECT_SCHEMA:
            batch = pa.Table.from_batches([batch]).cast(OBJECT_SCHEMA).combine_chunks()
            batch = batch.to_batches()[0] if batch.num_rows else OBJECT_SCHEMA.empty_table()
        with self._lock:
            self._pending.append(batch)
            self._pending_rows += batch.num_rows
            self.count += batch.num_rows
            if self._pending_rows >= ROW_GROUP_ROWS:
                self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._writer.write_table(
                pa.Table.from_batches(self._pending, schema=OBJECT_SCHEMA),
                row_group_size=max(self._pending_rows, 1),
            )
        self._pending, self._pending_rows = [], 0

    def finish(self, meta: dict[str, Any]) -> tuple[Path, tempfile.TemporaryDirectory[str] | None]:
        """Write what is pending and the metadata, close the file; (path, its owner)."""
        with self._lock:
            self._flush()
            self._writer.add_key_value_metadata({SNAPSHOT_METADATA: json.dumps(meta)})
            self._writer.close()
        pa.default_memory_pool().release_unused()
        return self.path, self._owner

    def abort(self) -> None:
        with self._lock:
            self._writer.close()
        self.path.unlink(missing_ok=True)
        if self._owner is not None:
            self._owner.cleanup()


def _file_meta(path: Path) -> dict[str, Any]:
    raw = (pq.read_metadata(path).metadata or {}).get(SNAPSHOT_METADATA.encode())
    return json.loads(raw) if raw else {}


class StorageInventory:
    """Every object found under the listed prefixes: key, size, etag, last_modified.

    Backed by one Parquet file (`path`), written as the objects were listed or read. `objects`
    loads it as a frame on first use, for callers that want one; the diff reads the file.
    `count` is known without loading. An inventory built from a frame (`objects=`) writes its
    file the first time someone asks for `path`.
    """

    def __init__(
        self,
        bucket: str,
        prefixes: list[str],
        objects: pd.DataFrame | None = None,
        complete: bool = True,
        errors: list[str] | None = None,
        requests: int = 0,
        seconds: float = 0.0,
        listed_at: datetime | None = None,
        backend: str = "s3",
        source: str = "listing",
        snapshot_at: datetime | None = None,
        *,
        path: str | Path | None = None,
        count: int | None = None,
        owner: tempfile.TemporaryDirectory[str] | None = None,
        file_meta: dict[str, Any] | None = None,
    ) -> None:
        if (objects is None) == (path is None):
            raise ValueError("a storage inventory has either objects or the path of their file")
        self.bucket = bucket
        self.prefixes = prefixes
        self.complete = complete
        self.errors = list(errors or [])
        self.requests = requests
        self.seconds = seconds
        self.listed_at = listed_at or utcnow()
        self.backend = backend
        """The kind of store listed, whose key rules the diff applies to references."""
        self.source = source
        """Where the objects came from: "listing", or the manifest of an S3 Inventory report."""
        self.snapshot_at = snapshot_at
        """When the objects were as recorded (an inventory report's creation time); None for a
        live listing, which is as of `listed_at`."""
        self._frame = objects
        self._path = Path(path) if path is not None else None
        self._owner = owner
        self._file_meta = file_meta
        if count is None:
            count = len(objects) if objects is not None else pq.read_metadata(self._path).num_rows
        self.count = count

    def __repr__(self) -> str:
        return (
            f"StorageInventory(bucket={self.bucket!r}, prefixes={self.prefixes!r}, "
            f"count={self.count}, complete={self.complete}, source={self.source!r}, "
            f"path={str(self._path) if self._path else None!r})"
        )

    @property
    def as_of(self) -> datetime:
        """The time the inventory describes storage at."""
        return self.snapshot_at or self.listed_at

    @property
    def objects(self) -> pd.DataFrame:
        """All objects as one frame, loaded from the file on first use (memory grows with N)."""
        if self._frame is None:
            assert self._path is not None
            table = pq.read_table(self._path, schema=OBJECT_SCHEMA)
            self._frame = table.replace_schema_metadata(None).to_pandas()
        return self._frame

    @property
    def path(self) -> Path:
        """The Parquet file of the objects (written now if the inventory came from a frame)."""
        if self._path is None:
            writer = ObjectWriter()
            assert self._frame is not None
            table = pa.Table.from_pandas(self._frame, preserve_index=False).cast(OBJECT_SCHEMA)
            for batch in table.to_batches(ROW_GROUP_ROWS):
                writer.write(batch)
            meta = self._meta()
            self._path, self._owner = writer.finish(meta)
            self._file_meta = meta
        return self._path

    def batches(self, batch_size: int = ROW_GROUP_ROWS) -> Iterator[pa.RecordBatch]:
        """The objects a record batch at a time, without loading them all."""
        if self._path is None and self._frame is not None:
            table = pa.Table.from_pandas(self._frame, preserve_index=False).cast(OBJECT_SCHEMA)
            yield from table.to_batches(batch_size)
            return
        file = pq.ParquetFile(self.path)
        for batch in file.iter_batches(batch_size=batch_size):
            yield batch.cast(OBJECT_SCHEMA)

    def _meta(self) -> dict[str, Any]:
        return _snapshot_meta(
            bucket=self.bucket,
            backend=self.backend,
            prefixes=self.prefixes,
            complete=self.complete,
            errors=self.errors,
            requests=self.requests,
            seconds=self.seconds,
            listed_at=self.listed_at,
            source=self.source,
            snapshot_at=self.snapshot_at,
        )

    def save(self, path: str | Path) -> Path:
        """Write the snapshot at `path`: the inventory's own file is moved there if it is a
        temporary one whose metadata still holds, copied if not ours, rewritten a row group at
        a time if the metadata changed. The inventory then reads from `path`."""
        path = Path(path).absolute()
        meta = self._meta()
        source = self.path
        if path == source.absolute() and meta == self._file_meta:
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        if meta == self._file_meta:
            if self._owner is not None:
                shutil.move(source, tmp)
            else:
                shutil.copyfile(source, tmp)
        else:
            _rewrite(source, tmp, meta)
        tmp.replace(path)
        if self._owner is not None:
            self._owner.cleanup()
            self._owner = None
        self._path, self._file_meta = path, meta
        return path

    @classmethod
    def load(cls, path: str | Path) -> StorageInventory:
        """The snapshot at `path`, its objects left in the file until asked for."""
        path = Path(path).absolute()
        meta = _file_meta(path)
        file_meta = dict(meta)
        meta["listed_at"] = datetime.fromisoformat(meta["listed_at"])
        if meta.get("snapshot_at"):
            meta["snapshot_at"] = datetime.fromisoformat(meta["snapshot_at"])
        return cls(path=path, file_meta=file_meta, **meta)


def _rewrite(source: Path, target: Path, meta: dict[str, Any]) -> None:
    """Copy a file of objects a row group at a time, with other metadata."""
    file = pq.ParquetFile(source)
    with pq.ParquetWriter(target, OBJECT_SCHEMA, store_schema=False) as writer:
        for group in range(file.num_row_groups):
            writer.write_table(file.read_row_group(group).cast(OBJECT_SCHEMA))
        writer.add_key_value_metadata({SNAPSHOT_METADATA: json.dumps(meta)})


def _snapshot_meta(
    *,
    bucket: str,
    backend: str,
    prefixes: list[str],
    complete: bool,
    errors: list[str],
    requests: int,
    seconds: float,
    listed_at: datetime,
    source: str,
    snapshot_at: datetime | None,
) -> dict[str, Any]:
    return {
        "bucket": bucket,
        "backend": backend,
        "prefixes": prefixes,
        "complete": complete,
        "errors": errors,
        "requests": requests,
        "seconds": seconds,
        "listed_at": listed_at.isoformat(),
        "source": source,
        "snapshot_at": snapshot_at.isoformat() if snapshot_at else None,
    }


def _finish(
    writer: ObjectWriter,
    *,
    bucket: str,
    backend: str,
    prefixes: list[str],
    errors: list[str],
    requests: int,
    seconds: float,
    source: str = "listing",
    snapshot_at: datetime | None = None,
    complete: bool | None = None,
    listed_at: datetime | None = None,
) -> StorageInventory:
    """Close the writer with the inventory's metadata; the inventory reads from its file.
    Complete unless there are errors (or as given); errors sorted unless complete is given."""
    fields: dict[str, Any] = {
        "bucket": bucket,
        "backend": backend,
        "prefixes": prefixes,
        "complete": not errors if complete is None else complete,
        "errors": sorted(errors) if complete is None else errors,
        "requests": requests,
        "seconds": seconds,
        "listed_at": listed_at or utcnow(),
        "source": source,
        "snapshot_at": snapshot_at,
    }
    meta = _snapshot_meta(**fields)
    path, owner = writer.finish(meta)
    return StorageInventory(**fields, path=path, count=writer.count, owner=owner, file_meta=meta)


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
    work_dir: str | Path | None = None,
) -> StorageInventory:
    """A storage inventory from record batches of OBJECT_SCHEMA, from any source, streamed
    into its Parquet file as they come (in `work_dir`, or a temporary directory of its own)."""
    writer = ObjectWriter(work_dir)
    try:
        for batch in batches:
            writer.write(batch)
    except BaseException:
        writer.abort()
        raise
    return _finish(
        writer,
        bucket=bucket,
        backend=backend,
        prefixes=[""] if prefixes is None else prefixes,
        errors=list(errors or []),
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


def _range_filter(batch: pa.RecordBatch, key_range: KeyRange) -> pa.RecordBatch:
    after, end = key_range
    keep = pa.array([True] * batch.num_rows)
    if after is not None:
        keep = pc.and_(keep, pc.greater(batch.column(0), after))
    if end is not None:
        keep = pc.and_(keep, pc.less_equal(batch.column(0), end))
    return batch.filter(keep)


def _split_bucket(
    store: ObjectStore, writer: ObjectWriter, key_range: KeyRange | None = None
) -> list[str]:
    """One delimiter listing of the bucket's root: its top-level prefixes, to list concurrently;
    the root-level objects themselves (those in the key range, if any) go into the writer."""
    prefixes: list[str] = []
    for page in store.list_pages("", delimiter="/"):
        prefixes.extend(page.common_prefixes)
        if page.keys:
            batch = _batch(page)
            if key_range is not None:
                batch = _range_filter(batch, key_range)
            if batch.num_rows:
                writer.write(batch)
    return prefixes


KeyRange = tuple[str | None, str | None]
"""Keys after the first (S3's StartAfter; None: from the start) up to and including the second
(None: to the end): one shard of the key space (integrity.shards)."""


def _in_range(prefix: str, key_range: KeyRange | None) -> bool:
    """Whether some key under prefix can fall in the range (keys under it are >= prefix)."""
    if key_range is None:
        return True
    after, end = key_range
    if end is not None and prefix > end:
        return False
    return after is None or after < prefix or after.startswith(prefix)


def _clip(page: ListingPage, end: str | None) -> tuple[ListingPage, bool]:
    """The page's keys up to `end` (inclusive), and whether the listing went past it."""
    if end is None or not page.keys or page.keys[-1] <= end:
        return page, False
    cut = bisect.bisect_right(page.keys, end)
    return ListingPage(
        keys=page.keys[:cut],
        sizes=page.sizes[:cut],
        etags=page.etags[:cut],
        last_modified=page.last_modified[:cut],
    ), True


def list_storage(
    store: ObjectStore,
    prefixes: list[str] | None = None,
    *,
    concurrency: int = 8,
    on_progress: ProgressCallback | None = None,
    key_range: KeyRange | None = None,
    work_dir: str | Path | None = None,
) -> StorageInventory:
    """List the given prefixes (None: the whole bucket) concurrently into one Parquet file, in
    `work_dir` (None: a temporary directory the inventory owns), a page at a time.

    key_range: list only the keys in (after, end], starting each listing after `after` and
    stopping at `end`, so a shard of a large bucket lists its own range and nothing else.
    """
    started = time.perf_counter()
    requests_before = store.requests
    errors: list[str] = []
    lock = threading.Lock()
    writer = ObjectWriter(work_dir)

    if prefixes is None:
        try:
            work = _split_bucket(store, writer, key_range)
        except (ListingFailed, StorageError) as exc:
            work, errors = [], [str(exc)]
        listed_prefixes = [""]
    else:
        work = minimal_prefixes(prefixes)
        listed_prefixes = work
    work = [prefix for prefix in work if _in_range(prefix, key_range)]
    after, end = key_range or (None, None)

    def list_one(prefix: str) -> None:
        start = after if after is not None and after >= prefix else None
        try:
            for page in store.list_pages(prefix, start_after=start):
                page, past_end = _clip(page, end)
                if past_end and not page.keys:
                    break
                if not page.keys:
                    continue
                writer.write(_batch(page))
                if on_progress is not None:
                    on_progress("objects", len(page.keys))
                if past_end:
                    break
        except (ListingFailed, StorageError) as exc:
            with lock:
                errors.append(str(exc))

    try:
        if len(work) <= 1 or concurrency <= 1:
            for prefix in work:
                list_one(prefix)
        else:
            with ThreadPoolExecutor(
                max_workers=min(concurrency, len(work)), thread_name_prefix="list"
            ) as pool:
                list(pool.map(list_one, work))
    except BaseException:
        writer.abort()
        raise
    # The prefixes listed are disjoint (minimal_prefixes), so no key can appear twice.
    return _finish(
        writer,
        bucket=store.bucket,
        backend=store.backend,
        prefixes=listed_prefixes,
        errors=errors,
        requests=store.requests - requests_before,
        seconds=time.perf_counter() - started,
    )


def merge_storage(
    a: StorageInventory, b: StorageInventory, *, work_dir: str | Path | None = None
) -> StorageInventory:
    """Both inventories in one file: a's objects, then b's that a does not hold (by key).

    The two files are merged by the diff's engine (spilling to disk past its memory limit),
    so neither side is loaded as a frame.
    """
    writer = ObjectWriter(work_dir)
    try:
        with connect() as session:
            reader = session.conn.sql(
                f"""
                SELECT key, size, etag, last_modified FROM (
                    SELECT *, 0 AS src, file_row_number AS pos
                    FROM read_parquet({sql_literal(str(a.path))}, file_row_number = true)
                    UNION ALL
                    SELECT *, 1 AS src, file_row_number AS pos
                    FROM read_parquet({sql_literal(str(b.path))}, file_row_number = true)
                )
                QUALIFY row_number() OVER (PARTITION BY key ORDER BY src, pos) = 1
                ORDER BY src, pos
                """
            ).to_arrow_reader(ROW_GROUP_ROWS)
            for batch in reader:
                writer.write(batch)
    except BaseException:
        writer.abort()
        raise
    return _finish(
        writer,
        bucket=a.bucket,
        backend=a.backend,
        prefixes=minimal_prefixes(a.prefixes + b.prefixes),
        errors=a.errors + b.errors,
        requests=a.requests + b.requests,
        seconds=a.seconds + b.seconds,
        complete=a.complete and b.complete,
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
