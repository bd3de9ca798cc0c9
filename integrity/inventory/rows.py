"""The database inventory: the rows the spec names, read in bulk with canonical columns.

Every table streams, batch by batch, into its own Parquet file, so memory stays bounded whatever
the table's size; the inventory holds the files and loads a table as a frame only when asked.
On PostgreSQL a table is read through ADBC (`adbc-driver-postgresql`: COPY in binary, decoded
into Arrow in C++, several times the rows/s of a streamed SELECT, see BENCHMARKS.md); other
databases are read with one streamed SELECT. A read that failed after its retries leaves an
empty file and makes the inventory incomplete, with the reason; nothing downstream may act on it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from integrity.clock import utcnow
from integrity.database import split_table_name, table_clause
from integrity.errors import DatabaseError, SpecError
from integrity.identity import encode_frame
from integrity.inventory import snapshots as _snapshots  # noqa: F401  (sets Arrow's memory pool)
from integrity.inventory.names import PLANS, PROCESSING_JOBS
from integrity.inventory.objects import ProgressCallback
from integrity.keys import like_escape, usable_references
from integrity.spec import ReconciliationSpec

ReadMethod = Literal["auto", "select", "adbc"]
META_FILE = "inventory.json"
ROW_GROUP_ROWS = 131_072


class _Scratch:
    """A temporary directory, removed once nothing refers to it any more."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="integrity-db-"))
        weakref.finalize(self, shutil.rmtree, self.path, ignore_errors=True)


class _Tables(Mapping[str, pd.DataFrame]):
    """The inventory's tables as frames, each read from its file the first time it is asked for."""

    def __init__(self, inventory: DatabaseInventory) -> None:
        self._inventory = inventory  # keeps the files (and a scratch directory) alive
        self._frames: dict[str, pd.DataFrame] = {}

    def __getitem__(self, name: str) -> pd.DataFrame:
        frame = self._frames.get(name)
        if frame is None:
            frame = pq.read_table(self._inventory.paths[name]).to_pandas()
            self._frames[name] = frame
        return frame

    def __iter__(self) -> Iterator[str]:
        return iter(self._inventory.paths)

    def __len__(self) -> int:
        return len(self._inventory.paths)

    @property
    def loaded(self) -> frozenset[str]:
        """The tables read into memory so far."""
        return frozenset(self._frames)


class DatabaseInventory:
    """The rows the spec names: one Parquet file per table, with canonical column names.

    `paths` names each table's file; `tables` gives them as frames, each loaded on first use
    (the diff engine may read the files directly instead). Without a directory of its own the
    inventory keeps its files in a temporary directory that lives as long as it does.
    """

    def __init__(
        self,
        paths: Mapping[str, str | Path] | None = None,
        *,
        tables: Mapping[str, pd.DataFrame] | None = None,
        complete: bool = True,
        errors: list[str] | None = None,
        seconds: float = 0.0,
        read_at: datetime | None = None,
        table_rows: Mapping[str, int] | None = None,
        scratch: _Scratch | None = None,
    ) -> None:
        self._scratch = scratch
        self.paths: dict[str, Path] = {name: Path(p) for name, p in (paths or {}).items()}
        self._table_rows: dict[str, int] = dict(table_rows or {})
        if tables is not None:
            # Frames given directly (tests, older callers) are written to files like a read's.
            self._scratch = self._scratch or _Scratch()
            for name, frame in tables.items():
                path = self._scratch.path / f"{name}.parquet"
                pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
                self.paths[name] = path
                self._table_rows[name] = len(frame)
        self.complete = complete
        self.errors = list(errors or [])
        self.seconds = seconds
        self.read_at = read_at or utcnow()
        self._tables = _Tables(self)

    def __repr__(self) -> str:
        return (
            f"DatabaseInventory(tables={self.table_rows!r}, complete={self.complete!r}, "
            f"errors={self.errors!r}, seconds={self.seconds:.3f}, read_at={self.read_at!r})"
        )

    @property
    def tables(self) -> Mapping[str, pd.DataFrame]:
        """Each table as a frame, read from its file the first time it is used."""
        return self._tables

    @property
    def table_rows(self) -> dict[str, int]:
        """Rows per table, from what the read counted or the files' footers (no data loaded)."""
        for name, path in self.paths.items():
            if name not in self._table_rows:
                self._table_rows[name] = pq.read_metadata(path).num_rows
        return {name: self._table_rows[name] for name in self.paths}

    @property
    def rows(self) -> int:
        return sum(self.table_rows.values())

    def save(self, directory: str | Path) -> Path:
        """Write `<name>.parquet` per table and inventory.json into `directory`.

        A file already there is kept as it is; one in the inventory's temporary directory is
        moved, not copied; any other is copied. Each file and then inventory.json replace their
        predecessors atomically, so a reader never sees half a snapshot under its final name.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        rows = self.table_rows
        for name, path in list(self.paths.items()):
            target = directory / f"{name}.parquet"
            if target.exists() and os.path.samefile(path, target):
                continue
            tmp = target.with_name(target.name + ".tmp")
            if self._scratch is not None and path.parent == self._scratch.path:
                shutil.move(path, tmp)
            else:
                shutil.copyfile(path, tmp)
            tmp.replace(target)
            self.paths[name] = target
        meta = {
            "tables": sorted(self.paths),
            "complete": self.complete,
            "errors": self.errors,
            "seconds": self.seconds,
            "read_at": self.read_at.isoformat(),
            "rows": rows,
        }
        tmp = directory / (META_FILE + ".tmp")
        tmp.write_text(json.dumps(meta))
        tmp.replace(directory / META_FILE)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> DatabaseInventory:
        """The inventory saved in `directory`; its tables are read when first used."""
        directory = Path(directory)
        meta = json.loads((directory / META_FILE).read_text())
        paths = {name: directory / f"{name}.parquet" for name in meta["tables"]}
        for path in paths.values():
            if not path.is_file():
                raise FileNotFoundError(f"{path}: a table of the database inventory is missing")
        return cls(
            paths,
            complete=meta["complete"],
            errors=meta["errors"],
            seconds=meta["seconds"],
            read_at=datetime.fromisoformat(meta["read_at"]),
            table_rows=meta.get("rows"),
        )


_ARROW_TYPES = {"text": pa.string(), "int": pa.int64(), "timestamp": pa.timestamp("us", tz="UTC")}


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

    @property
    def schema(self) -> pa.Schema:
        """The columns as read, under their canonical names (identity parts apart)."""
        return pa.schema([(n, _ARROW_TYPES[kind]) for n, (_, kind) in self.columns.items()])

    @property
    def output_schema(self) -> pa.Schema:
        """The columns as stored: a composite identity's parts become one `row_id`."""
        if not self.identity:
            return self.schema
        rest = [f for f in self.schema if f.name not in self.identity]
        return pa.schema([pa.field("row_id", pa.string()), *rest])

    def select(self, *, cast: bool = False) -> sa.Select[Any]:
        """The SELECT with canonical labels; `cast` makes the database deliver the target types
        (text and bigint), as a driver returning Arrow types needs."""
        columns = []
        for canonical, (column, kind) in self.columns.items():
            expr: sa.ColumnElement[Any] = sa.column(column)
            if cast and kind == "text":
                expr = sa.cast(expr, sa.Text)
            elif cast and kind == "int":
                expr = sa.cast(expr, sa.BigInteger)
            columns.append(expr.label(canonical))
        query = sa.select(*columns).select_from(table_clause(self.table))
        return query if self.where is None else query.where(self.where)

    def finish(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """A batch as stored: a composite identity encoded into `row_id` (integrity.identity)."""
        if not self.identity:
            return batch
        row_id = encode_frame([batch.column(part).to_pandas() for part in self.identity])
        arrays = [pa.array(row_id, pa.string(), from_pandas=True)]
        arrays += [batch.column(f.name) for f in self.output_schema if f.name != "row_id"]
        return pa.record_batch(arrays, schema=self.output_schema)


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
                PROCESSING_JOBS,
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
    directory: str | Path | None = None,
    chunk_size: int = 10_000,
    attempts: int = 3,
    on_progress: ProgressCallback | None = None,
    method: ReadMethod = "auto",
) -> DatabaseInventory:
    """Read every spec'd table (filtered to a tenant if given) into `<directory>/<name>.parquet`.

    `directory` None keeps the files in a temporary directory the inventory owns. `method`
    "auto" reads PostgreSQL through ADBC and any other database with a streamed SELECT;
    "select" forces the SELECT, "adbc" forces ADBC. A table whose read fails on a transient
    error is read again from the start, its partial file discarded (and the rows it had
    reported to `on_progress` taken back with a negative count).
    """
    started = time.perf_counter()
    scratch = _Scratch() if directory is None else None
    out = Path(directory) if directory is not None else scratch.path  # type: ignore[union-attr]
    out.mkdir(parents=True, exist_ok=True)
    batches = _batch_reader(engine, method)
    paths: dict[str, Path] = {}
    rows: dict[str, int] = {}
    errors: list[str] = []
    for read in _reads(spec, tenant):
        path = paths[read.name] = out / f"{read.name}.parquet"
        for attempt in range(1, attempts + 1):
            counted = [0]
            try:
                rows[read.name] = _write_table(
                    path, read, batches(read, chunk_size), on_progress, counted
                )
                break
            except _read_failures() as exc:
                if on_progress is not None and counted[0]:
                    on_progress("rows", -counted[0])
                if attempt < attempts and _worth_retrying(exc):
                    time.sleep(0.2 * 2 ** (attempt - 1))
                    continue
                reason = _scrub(db_error_reason(exc), engine.url.password)
                errors.append(
                    f"reading {read.spec_path} ({read.table}) failed after {attempt} attempts: {reason}"
                )
                rows[read.name] = _write_table(path, read, _no_batches(), None, [0])
                break
    return DatabaseInventory(
        paths,
        complete=not errors,
        errors=errors,
        seconds=time.perf_counter() - started,
        table_rows=rows,
        scratch=scratch,
    )


def _write_table(
    path: Path,
    read: _Read,
    batches: Iterator[pa.RecordBatch],
    on_progress: ProgressCallback | None,
    counted: list[int],
) -> int:
    """Stream batches into `path` through a partial file that only a finished read renames.

    Batches are gathered into row groups of about ROW_GROUP_ROWS rows (a reader of the file
    scans a few large groups, not one per driver batch), each written in a second thread while
    the next is read (Arrow releases the GIL for both), one group in flight at most. Any failure
    removes the partial file, so the table's file never holds part of a read.
    """
    partial = path.with_name(path.name + ".partial")
    schema = read.output_schema
    try:
        with (
            contextlib.closing(batches),
            pq.ParquetWriter(partial, schema) as writer,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet") as pool,
        ):
            writing: Future[None] | None = None
            pending: list[pa.RecordBatch] = []
            pending_rows = 0
            for batch in batches:
                batch = read.finish(batch)
                if not batch.num_rows:
                    continue
                pending.append(batch)
                pending_rows += batch.num_rows
                counted[0] += batch.num_rows
                if on_progress is not None:
                    on_progress("rows", batch.num_rows)
                if pending_rows >= ROW_GROUP_ROWS:
                    if writing is not None:
                        writing.result()
                    writing = pool.submit(
                        writer.write_table, pa.Table.from_batches(pending, schema)
                    )
                    pending, pending_rows = [], 0
            if writing is not None:
                writing.result()
            if pending:
                writer.write_table(pa.Table.from_batches(pending, schema))
        partial.replace(path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return counted[0]


def _no_batches() -> Iterator[pa.RecordBatch]:
    yield from ()


BatchReader = Callable[[_Read, int], Iterator[pa.RecordBatch]]


def _batch_reader(engine: sa.Engine, method: ReadMethod) -> BatchReader:
    """The batches of a read: ADBC on PostgreSQL (unless told otherwise), a SELECT elsewhere."""
    if method not in ("auto", "select", "adbc"):
        raise ValueError(f"read method {method!r}: expected auto, select or adbc")
    if method == "select" or (method == "auto" and engine.dialect.name != "postgresql"):
        return lambda read, chunk_size: _select_batches(engine, read, chunk_size)
    if engine.dialect.name != "postgresql":
        raise ValueError(f"read method 'adbc' reads PostgreSQL, not {engine.dialect.name}")
    conninfo = _conninfo(engine)
    if conninfo is None or not _has_adbc():
        if method == "adbc":
            raise ValueError("read method 'adbc' needs adbc-driver-postgresql and a libpq URL")
        return lambda read, chunk_size: _select_batches(engine, read, chunk_size)
    return lambda read, chunk_size: _adbc_batches(conninfo, read)


def _select_batches(engine: sa.Engine, read: _Read, chunk_size: int) -> Iterator[pa.RecordBatch]:
    """One streamed SELECT, each chunk of rows converted to an Arrow batch."""
    names = list(read.columns)
    schema = read.schema
    with engine.connect() as conn:
        result = conn.execution_options(stream_results=True, yield_per=chunk_size).execute(
            read.select()
        )
        while rows := result.fetchmany(chunk_size):
            cols = list(zip(*rows))
            yield pa.record_batch(
                [_to_arrow(list(c), read.columns[n][1]) for n, c in zip(names, cols)],
                schema=schema,
            )


def _adbc_batches(conninfo: str, read: _Read) -> Iterator[pa.RecordBatch]:
    """The SELECT through ADBC: PostgreSQL's COPY in binary, decoded into Arrow batches in C++.

    COPY takes no parameters, so the filter's values are written into the statement as
    escaped literals (`_inline`).
    """
    import adbc_driver_postgresql.dbapi as adbc

    statement = _inline(read.select(cast=True))
    with adbc.connect(conninfo) as conn, conn.cursor() as cursor:
        cursor.execute(statement)
        for batch in cursor.fetch_record_batch():
            yield _conform(batch, read)


def _conform(batch: pa.RecordBatch, read: _Read) -> pa.RecordBatch:
    """A driver's batch in the read's types, as the SELECT path gives them: timestamps in UTC
    (a timestamp without time zone taken as UTC), text timestamps parsed as ISO 8601."""
    schema = read.schema
    arrays = []
    for array, target, (_, kind) in zip(batch.columns, schema, read.columns.values()):
        if array.type == target.type:
            pass
        elif kind != "timestamp" or pa.types.is_null(array.type):
            array = array.cast(target.type)
        elif pa.types.is_timestamp(array.type):
            if array.type.tz is None:
                array = array.cast(pa.timestamp("us"))
            array = array.cast(target.type)
        elif pa.types.is_date(array.type):
            array = array.cast(pa.timestamp("us")).cast(target.type)
        elif pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
            array = _to_arrow(array.to_pylist(), kind)
        else:
            array = array.cast(target.type)
        arrays.append(array)
    return pa.record_batch(arrays, schema=schema)


def _literal(value: Any) -> str:
    """A SQL literal PostgreSQL reads the same whatever standard_conforming_strings says."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise TypeError(f"cannot write {type(value).__name__} into a statement as a literal")
    if isinstance(value, int):
        return str(value)
    if "\x00" in value:
        raise ValueError("a text value holds a NUL character, which PostgreSQL text cannot")
    return "E'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


_POSTGRES = None


def _inline(query: sa.Select[Any]) -> str:
    """The statement for PostgreSQL with its parameters written in as literals."""
    global _POSTGRES
    if _POSTGRES is None:
        from sqlalchemy.dialects.postgresql import psycopg

        _POSTGRES = psycopg.dialect()
    compiled = query.compile(dialect=_POSTGRES)
    return compiled.string % {name: _literal(v) for name, v in compiled.params.items()}


def _conninfo(engine: sa.Engine) -> str | None:
    """The libpq connection string of the engine's URL, as its own driver would connect.

    It holds the password: it goes to the driver and nowhere else (errors are scrubbed).
    """
    try:
        import psycopg.conninfo
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return None
    try:
        args, kwargs = engine.dialect.create_connect_args(engine.url)
        if args:
            return None
        params = {
            ("dbname" if k == "database" else k): str(v)
            for k, v in kwargs.items()
            if isinstance(v, (str, int)) and not isinstance(v, bool)
        }
        return psycopg.conninfo.make_conninfo("", **params)
    except Exception:
        return None


def _has_adbc() -> bool:
    try:
        import adbc_driver_postgresql.dbapi  # noqa: F401
    except ImportError:
        return False
    return True


def _read_failures() -> tuple[type[BaseException], ...]:
    """What a failed read raises: the database's errors (ADBC's reader raises the server's as
    OSError), a value Arrow cannot convert, a file that cannot be written."""
    failures: list[type[BaseException]] = [
        sa.exc.DBAPIError,
        pa.ArrowException,
        ValueError,
        OSError,
    ]
    with contextlib.suppress(ImportError):
        import adbc_driver_manager

        failures.append(adbc_driver_manager.Error)
    return tuple(failures)


def _worth_retrying(exc: BaseException) -> bool:
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    return is_transient(exc)


def _scrub(text: str, password: str | None) -> str:
    return text.replace(password, "***") if password else text


def is_transient(exc: BaseException) -> bool:
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
