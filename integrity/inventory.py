"""Both sides of the reconciliation, read in bulk into columnar frames.

The storage inventory lists prefixes concurrently, a page of 1,000 keys at a time, and turns
every page into Arrow arrays at once, so no dict per object outlives its page. The database
inventory reads each table with one streamed SELECT. Either side records whether it is
complete: a listing page or a read that failed after its retries makes it incomplete, with the
reason, and nothing downstream may act on an incomplete inventory.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from integrity.database import split_table_name, table_clause
from integrity.errors import DatabaseError, SpecError, StorageError
from integrity.identity import encode_frame
from integrity.keys import like_escape, usable_references
from integrity.spec import ReconciliationSpec
from integrity.storage.base import ListingFailed, ListingPage, ObjectStore

# Arrow's default pool (mimalloc) keeps the pages it frees, so a listing followed by a diff
# peaks at about twice the memory the frames need (measured in BENCHMARKS.md). The system
# allocator gives them back; ARROW_DEFAULT_MEMORY_POOL still overrides this choice.
if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
    pa.set_memory_pool(pa.system_memory_pool())

ProgressCallback = Callable[[str, int], None]
"""Called with ("objects", n) after each listing page and ("rows", n) after each read chunk."""

JOBS = "__jobs__"
PLANS = "__plans__"
ALL_TENANTS = "__all__"

_OBJECT_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("size", pa.int64()),
        ("etag", pa.string()),
        ("last_modified", pa.timestamp("us", tz="UTC")),
    ]
)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


# --------------------------------------------------------------------------- snapshots


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


# --------------------------------------------------------------------------- storage


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
    listed_at: datetime = field(default_factory=_utcnow)
    backend: str = "s3"
    """The kind of store listed, whose key rules the diff applies to references."""

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
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        write_parquet(path, self.objects, self._meta())
        return path

    @classmethod
    def load(cls, path: str | Path) -> StorageInventory:
        frame, meta = read_parquet(Path(path))
        meta["listed_at"] = datetime.fromisoformat(meta["listed_at"])
        return cls(objects=frame, **meta)


def minimal_prefixes(prefixes: Iterable[str]) -> list[str]:
    """Drop prefixes that another prefix in the set already covers."""
    kept: list[str] = []
    for prefix in sorted(set(prefixes)):
        if not kept or not prefix.startswith(kept[-1]):
            kept.append(prefix)
    return kept


def _batch(page: ListingPage) -> pa.RecordBatch:
    return pa.record_batch(
        [
            pa.array(page.keys, pa.string()),
            pa.array(page.sizes, pa.int64()),
            pa.array(page.etags, pa.string()),
            pa.array(page.last_modified, pa.timestamp("us", tz="UTC")),
        ],
        schema=_OBJECT_SCHEMA,
    )


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
        pa.Table.from_batches(chunks, schema=_OBJECT_SCHEMA)
        if chunks
        else _OBJECT_SCHEMA.empty_table()
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


# --------------------------------------------------------------------------- database


@dataclass
class DatabaseInventory:
    """The rows the spec names, one frame per table with canonical column names."""

    tables: dict[str, pd.DataFrame]
    complete: bool = True
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    read_at: datetime = field(default_factory=_utcnow)

    @property
    def rows(self) -> int:
        return sum(len(f) for f in self.tables.values())

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "tables": sorted(self.tables),
            "complete": self.complete,
            "errors": self.errors,
            "seconds": self.seconds,
            "read_at": self.read_at.isoformat(),
        }
        for name, frame in self.tables.items():
            write_parquet(directory / f"{name}.parquet", frame, {})
        (directory / "inventory.json").write_text(json.dumps(meta))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> DatabaseInventory:
        directory = Path(directory)
        meta = json.loads((directory / "inventory.json").read_text())
        tables = {
            name: read_parquet(directory / f"{name}.parquet")[0] for name in meta.pop("tables")
        }
        meta["read_at"] = datetime.fromisoformat(meta["read_at"])
        return cls(tables=tables, **meta)


@dataclass(frozen=True)
class _Read:
    """One bulk read: a table, its columns under canonical names, and the filter."""

    name: str
    table: str
    columns: dict[str, tuple[str, str]]  # canonical -> (db column, type: text|int|timestamp)
    where: sa.ColumnElement[bool] | None
    spec_path: str
    identity: tuple[str, ...] = ()
    """Canonical names of a composite identity's parts, combined into `row_id` after the read."""

    def frame(self, table: pa.Table) -> pd.DataFrame:
        frame = table.to_pandas()
        if not self.identity:
            return frame
        row_id = encode_frame([frame[part] for part in self.identity])
        frame = frame.drop(columns=list(self.identity))
        frame.insert(0, "row_id", row_id)
        return frame


def _reads(spec: ReconciliationSpec, tenant: str | None) -> list[_Read]:
    reads: list[_Read] = []
    for name, t in spec.tables.items():
        ids = t.id_columns
        # A composite identity is read part by part and encoded into row_id (integrity.identity).
        identity = tuple(f"row_id.{i}" for i in range(len(ids))) if len(ids) > 1 else ()
        columns = {part: (c, "text") for part, c in zip(identity or ("row_id",), ids)}
        columns.update(
            {
                "tenant": (t.tenant, "text"),
                "status": (t.status, "text"),
                "updated_at": (t.updated_at, "timestamp"),
            }
        )
        for ref in t.references:
            columns[ref.column] = (ref.column, "text")
        where = None
        if tenant is not None:
            where = sa.column(t.tenant) == tenant
            uploads = spec.uploads
            if uploads is not None and uploads.processed_table == name:
                # An upload under the tenant's prefix belongs to the tenant whatever its row says.
                prefix = like_escape(uploads.prefix.format(tenant=tenant)) + "%"
                where = sa.or_(where, sa.column(uploads.processed_column).like(prefix, escape="\\"))
        reads.append(_Read(name, t.table, columns, where, f"tables.{name}", identity))
    if spec.jobs is not None:
        j = spec.jobs
        where = None
        if tenant is not None and spec.uploads is not None:
            prefix = like_escape(spec.uploads.prefix.format(tenant=tenant)) + "%"
            where = sa.column(j.key).like(prefix, escape="\\")
        reads.append(
            _Read(
                JOBS,
                j.table,
                {
                    "key": (j.key, "text"),
                    "status": (j.status, "text"),
                    "started_at": (j.started_at, "timestamp"),
                    "updated_at": (j.updated_at, "timestamp"),
                },
                where,
                "jobs",
            )
        )
    if spec.plans is not None:
        p = spec.plans
        columns = {
            "row_id": (p.id, "text"),
            "tenant": (p.tenant, "text"),
            "status": (p.status, "text"),
            "completed": (p.completed, "int"),
            "total": (p.total, "int"),
            "updated_at": (p.updated_at, "timestamp"),
        }
        if "{project}" in p.sheets_prefix:
            columns["project"] = (p.project, "text")
        where = sa.column(p.tenant) == tenant if tenant is not None else None
        reads.append(_Read(PLANS, p.table, columns, where, "plans"))
    return reads


def _to_arrow(values: list[Any], kind: str) -> pa.Array:
    if kind == "text":
        return pa.array(
            [None if v is None else v if isinstance(v, str) else str(v) for v in values],
            pa.string(),
        )
    if kind == "int":
        return pa.array(values, pa.int64())
    if values and any(isinstance(v, str) for v in values):
        parsed = pd.to_datetime(pd.Series(values, dtype="object"), utc=True, format="ISO8601")
        return pa.array(parsed, pa.timestamp("us", tz="UTC"))
    return pa.array(values, pa.timestamp("us", tz="UTC"))


_ARROW_TYPES = {"text": pa.string(), "int": pa.int64(), "timestamp": pa.timestamp("us", tz="UTC")}


def safe_url(url: str | sa.URL) -> str:
    """The database URL with its password hidden, fit for messages."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable database URL>"


def db_error_reason(exc: BaseException) -> str:
    """The first line of a database error, the driver's own message where there is one."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return (text.splitlines() or [""])[0][:200]


def check_database(engine: sa.Engine, spec: ReconciliationSpec) -> None:
    """Fail with one readable line if the database is unreachable or lacks a spec'd column."""
    reads = _reads(spec, None)
    try:
        inspector = sa.inspect(engine)
        for read in reads:
            schema, table = split_table_name(read.table)
            if not inspector.has_table(table, schema=schema):
                raise SpecError(
                    f"{read.spec_path}: table {read.table!r} not found in {safe_url(engine.url)}"
                )
            present = {c["name"] for c in inspector.get_columns(table, schema=schema)}
            for canonical, (column, _) in read.columns.items():
                if column not in present:
                    field_name = (
                        canonical.split(".")[0]
                        if canonical.split(".")[0] in ("row_id", "tenant", "status")
                        else column
                    )
                    raise SpecError(
                        f"{read.spec_path}: column {column!r} ({field_name}) not found in table {read.table!r}"
                    )
    except sa.exc.SQLAlchemyError as exc:
        reason = db_error_reason(exc)
        raise DatabaseError(f"cannot read database {safe_url(engine.url)}: {reason}") from None


def read_database(
    engine: sa.Engine,
    spec: ReconciliationSpec,
    *,
    tenant: str | None = None,
    chunk_size: int = 10_000,
    attempts: int = 3,
    on_progress: ProgressCallback | None = None,
) -> DatabaseInventory:
    """Read every spec'd table with one streamed SELECT each (filtered to a tenant if given)."""
    started = time.perf_counter()
    tables: dict[str, pd.DataFrame] = {}
    errors: list[str] = []
    for read in _reads(spec, tenant):
        names = list(read.columns)
        query = sa.select(
            *[sa.column(col).label(canon) for canon, (col, _) in read.columns.items()]
        ).select_from(table_clause(read.table))
        if read.where is not None:
            query = query.where(read.where)
        schema = pa.schema([(n, _ARROW_TYPES[read.columns[n][1]]) for n in names])
        for attempt in range(1, attempts + 1):
            batches: list[pa.RecordBatch] = []
            try:
                with engine.connect() as conn:
                    result = conn.execution_options(
                        stream_results=True, yield_per=chunk_size
                    ).execute(query)
                    while rows := result.fetchmany(chunk_size):
                        cols = list(zip(*rows))
                        batches.append(
                            pa.record_batch(
                                [
                                    _to_arrow(list(c), read.columns[n][1])
                                    for n, c in zip(names, cols)
                                ],
                                schema=schema,
                            )
                        )
                        if on_progress is not None:
                            on_progress("rows", len(rows))
                tables[read.name] = read.frame(pa.Table.from_batches(batches, schema=schema))
                break
            except sa.exc.DBAPIError as exc:
                if attempt < attempts and (exc.connection_invalidated or is_transient(exc)):
                    time.sleep(0.2 * 2 ** (attempt - 1))
                    continue
                reason = db_error_reason(exc)
                errors.append(
                    f"reading {read.spec_path} ({read.table}) failed after {attempt} attempts: {reason}"
                )
                tables[read.name] = read.frame(schema.empty_table())
                break
    return DatabaseInventory(
        tables=tables, complete=not errors, errors=errors, seconds=time.perf_counter() - started
    )


def is_transient(exc: sa.exc.DBAPIError) -> bool:
    """A lock, timeout or lost connection: worth another attempt."""
    text = str(getattr(exc, "orig", exc)).lower()
    return any(
        s in text
        for s in (
            "database is locked",
            "connection",
            "server closed",
            "terminating",
            "timeout",
            "could not receive",
        )
    )


def discover_tenants(store: ObjectStore, engine: sa.Engine, spec: ReconciliationSpec) -> list[str]:
    """Tenants found in storage (the prefixes under each tenant template) and in the database."""
    from integrity.storage.base import list_common_prefixes

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


def referenced_keys(
    db: DatabaseInventory, spec: ReconciliationSpec, bucket: str, backend: str
) -> list[str]:
    """Every key (both spellings) the database's reference columns name in this bucket.

    Spellings this kind of store cannot hold are left out: they are invalid_reference findings,
    and no listing may follow them (a '..' key would lead a directory listing out of its root).
    """
    keys: list[str] = []
    for name, t in spec.tables.items():
        frame = db.tables.get(name)
        if frame is None or frame.empty:
            continue
        for ref in t.references:
            parsed = usable_references(frame[ref.column], bucket, backend)
            ours = parsed["bucket"].isna() | (parsed["bucket"] == bucket)
            keys.extend(parsed.loc[ours, "key"].dropna())
            keys.extend(parsed.loc[ours, "alternative"].dropna())
    return keys
