"""The database inventory: the rows the spec names, read in bulk with canonical columns.

Each table is read with one streamed SELECT. A read that failed after its retries makes the
inventory incomplete, with the reason, and nothing downstream may act on it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import sqlalchemy as sa

from integrity.database import split_table_name, table_clause
from integrity.errors import DatabaseError, SpecError
from integrity.identity import encode_frame
from integrity.inventory.names import JOBS, PLANS, utcnow
from integrity.inventory.objects import ProgressCallback
from integrity.inventory.snapshots import read_parquet, write_parquet
from integrity.keys import like_escape, usable_references
from integrity.spec import ReconciliationSpec


@dataclass
class DatabaseInventory:
    """The rows the spec names, one frame per table with canonical column names."""

    tables: dict[str, pd.DataFrame]
    complete: bool = True
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    read_at: datetime = field(default_factory=utcnow)

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
