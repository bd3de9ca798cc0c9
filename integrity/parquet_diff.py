"""The diff over the two inventories' Parquet files, out of core, under a memory limit.

The same findings as `integrity.diff.diff_inventories`, computed by DuckDB over the snapshot
files instead of over frames in memory: the joins, anti-joins and group-bys run in DuckDB, which
spills to a directory of its own past the memory limit (`INTEGRITY_MEMORY_LIMIT`, e.g. "2GB" or
"50%"), so memory is bounded by the limit, not by the number of objects or rows. Python sees only
what must be Python, a chunk at a time:

- references that are not plain keys (URLs, '%', a leading '/', surrounding white space, control
  characters, keys the store cannot hold) are parsed by `integrity.keys.usable_references`,
  once per distinct value; a plain key is its own key, decided in the engine;
- Unicode/case near-matches (`integrity.keys.normalized_array`) are looked for only for the
  spellings that were not found as spelled; the listed keys' normalised form is computed in the
  engine (ASCII keys by lower(), others by the same Arrow function as a vectorised UDF) and only
  kept where it equals a wanted one;
- the findings themselves (few) are assembled with the same code and order as the in-memory
  diff, so both give identical frames.
"""

from __future__ import annotations

import functools
import json
import string
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from integrity import settings
from integrity.diff import (
    FINDING_KINDS,
    DiffOptions,
    ReconciliationReport,
    RowEmitter,
    diff_inventories,
    findings_frame,
    progress_findings,
    typed_findings,
    upload_findings,
)
from integrity.engine import EngineLimits, EngineSession, connect, sql_literal
from integrity.errors import IntegrityError
from integrity.inventory import (
    ALL_TENANTS,
    PLANS,
    PROCESSING_JOBS,
    DatabaseInventory,
    StorageInventory,
)
from integrity.keys import BACKENDS, S3_MAX_KEY_BYTES, normalized_array, usable_references
from integrity.spec import ReconciliationSpec

CHUNK_ROWS = 64 * 1024
TIMESTAMP = pa.timestamp("us", tz="UTC")


def diff_any_size(
    storage: StorageInventory,
    db: DatabaseInventory,
    spec: ReconciliationSpec,
    options: DiffOptions | None = None,
    *,
    limits: EngineLimits | None = None,
) -> ReconciliationReport:
    """The diff reconcile and the report asset run: small inventories in memory (the frame
    engine), the rest out of core under the memory limit (diff_parquet). The two give the same
    findings, which the differential test holds them to."""
    limits = limits or EngineLimits.default()
    if storage.count + db.rows >= limits.in_memory_below:
        return diff_parquet(storage, db, spec, options, limits=limits)
    started = time.perf_counter()
    report = diff_inventories(storage, db, spec, options)
    report.timings.update(
        engine_seconds=time.perf_counter() - started,
        memory_limit_bytes=float(limits.memory_limit),
        spill_peak_bytes=0.0,
    )
    return report


# --------------------------------------------------------------------------- SQL pieces


_lit = sql_literal


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _in(column: str, values: list[str] | tuple[str, ...] | None) -> str:
    """`column IN (...)` that is false (never NULL) for a NULL column or an empty list."""
    if not values:
        return "false"
    return f"coalesce({column} IN ({', '.join(_lit(v) for v in values)}), false)"


def _re2_literal(text: str) -> str:
    """A literal for RE2 (DuckDB's regex engine): ASCII punctuation as \\x{..}."""
    return "".join(
        c if (c.isalnum() or c in "_/" or ord(c) > 127) else f"\\x{{{ord(c):02x}}}" for c in text
    )


def _re2_template(template: str, tail: str = "") -> tuple[str, list[str]]:
    """`integrity.spec.template_regex` for RE2, with the field names in group order."""
    pattern, names = "^", []
    for literal, name, _, _ in string.Formatter().parse(template):
        pattern += _re2_literal(literal)
        if name:
            pattern += "([^/]+)"
            names.append(name)
    return pattern + tail, names


WHITESPACE_BELOW = 0x3001
"""Every character str.isspace() holds true for is below this (checked by the tests)."""


@functools.cache
def _python_whitespace() -> str:
    """An RE2 class of the characters str.strip() removes (Unicode white space)."""
    chars = [c for c in range(WHITESPACE_BELOW) if chr(c).isspace()]
    return "[" + "".join(f"\\x{{{c:x}}}" for c in chars) + "]"


def _plain_key_sql(column: str, backend: str) -> str:
    """True where the value is a plain key of this store: what `usable_references` returns as
    itself, with no bucket, no other spelling and no problem. Anything else goes to Python."""
    space = _python_whitespace()
    needs_parser = f"://|%|^/|[\\x00-\\x1f\\x7f]|^{space}|{space}$"
    if backend == "s3":
        fits = f"strlen({column}) <= {S3_MAX_KEY_BYTES}"
    elif backend == "local":
        needs_parser += r"|/$|//|(^|/)\.\.?(/|$)"
        fits = f"strlen({column}) <= 255"
    else:
        raise ValueError(f"unknown storage backend {backend!r} (one of {', '.join(BACKENDS)})")
    return f"({column} <> '' AND {fits} AND NOT regexp_matches({column}, {_lit(needs_parser)}))"


def _us(moment: pd.Timestamp) -> int:
    """Microseconds since the epoch, rounded down."""
    return (moment - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)


def _before_us(now: pd.Timestamp, age: pd.Timedelta) -> int:
    """The smallest whole microsecond t with not (now - t > age): `x < this` is `now - x > age`."""
    limit_ns = (now - age - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(nanoseconds=1)
    return -((-limit_ns) // 1000)


# --------------------------------------------------------------------------- the diff


@dataclass(frozen=True)
class _Part:
    """One reference column of one spec table (or the processed column, index -1)."""

    index: int
    ref_index: int
    name: str
    table: str
    column: str
    where: str
    judged: str


class _ParquetDiff:
    def __init__(
        self,
        session: EngineSession,
        storage: StorageInventory,
        files: dict[str, Path],
        spec: ReconciliationSpec,
        options: DiffOptions,
        now: pd.Timestamp,
    ) -> None:
        self.conn = session.conn
        self.session = session
        self.storage = storage
        self.files = files
        self.spec = spec
        self.options = options
        self.now = now
        self.bucket = storage.bucket
        self.backend = storage.backend
        self.columns = {name: set(pq.read_schema(path).names) for name, path in files.items()}
        self.conn.execute(
            "CREATE VIEW objects AS SELECT key, last_modified, file_row_number AS pos "
            f"FROM read_parquet({_lit(str(storage.path))}, file_row_number = true)"
        )
        self._normal: dict[str, str | None] = {}
        self.processed_ref: tuple[int, int] | None = None
        self.timings: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            key = f"engine_{name}_seconds"
            self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - started

    # -- helpers

    def _table(self, name: str) -> str:
        return f"read_parquet({_lit(str(self.files[name]))}, file_row_number = true)"

    def _arrow(self, sql: str) -> pa.Table:
        return self.conn.sql(sql).to_arrow_table()

    def _frame(self, sql: str, types: dict[str, pa.DataType]) -> pd.DataFrame:
        table = self._arrow(sql)
        return table.cast(
            pa.schema([(n, types.get(n, table.schema.field(n).type)) for n in table.column_names])
        ).to_pandas()

    def _register(self, name: str, values: list[str]) -> None:
        self.conn.register(name, pa.table({"s": pa.array(values, pa.string())}))

    def _has_rows(self, name: str) -> bool:
        return name in self.files and pq.read_metadata(self.files[name]).num_rows > 0

    # -- references

    def parts(self, as_of: pd.Timestamp | None) -> list[_Part]:
        parts = []
        for index, (name, t) in enumerate(self.spec.tables.items()):
            if not self._has_rows(name):
                continue
            live = f"NOT {_in('status', t.skip_statuses)}"
            judged = (
                f"NOT coalesce(epoch_us(updated_at) > {_us(as_of)}, false)"
                if as_of is not None
                else "true"
            )
            for ref_index, ref in enumerate(t.references):
                where = f"{live} AND {_ident(ref.column)} IS NOT NULL"
                if ref.when_status is not None:
                    where += f" AND {_in('status', ref.when_status)}"
                parts.append(_Part(index, ref_index, name, t.table, ref.column, where, judged))
        return parts

    def processed_part(self, parts: list[_Part]) -> _Part | None:
        """The processed column's rows for the upload check, all statuses: those a reference
        part already looks up are left to it (`processed_ref`), so no row is looked up twice."""
        uploads = self.spec.uploads
        if uploads is None or not self._has_rows(uploads.processed_table):
            return None
        column = uploads.processed_column
        where = f"{_ident(column)} IS NOT NULL"
        same = [p for p in parts if p.name == uploads.processed_table and p.column == column]
        if same:
            self.processed_ref = (same[0].index, same[0].ref_index)
            where += f" AND NOT ({same[0].where})"
        return _Part(-1, -1, uploads.processed_table, "", column, where, "true")

    def parse_residual(self, parts: list[_Part]) -> None:
        """Every distinct reference that is not a plain key, parsed by Python a chunk at a time
        into a Parquet file the engine joins back (`residual`)."""
        schema = pa.schema(
            [
                ("value", pa.string()),
                ("bucket", pa.string()),
                ("key", pa.string()),
                ("alternative", pa.string()),
                ("problem", pa.string()),
            ]
        )
        path = self.session.work_dir / "residual.parquet"
        selects = " UNION ALL ".join(
            f"SELECT {_ident(p.column)}::VARCHAR AS v FROM {self._table(p.name)} WHERE {p.where}"
            for p in parts
        )
        with pq.ParquetWriter(path, schema) as writer:
            if selects:
                reader = self.conn.sql(
                    f"SELECT DISTINCT v FROM ({selects}) WHERE NOT {_plain_key_sql('v', self.backend)}"
                ).to_arrow_reader(CHUNK_ROWS)
                for batch in reader:
                    values = batch.column(0).to_pandas()
                    parsed = usable_references(values, self.bucket, self.backend)
                    writer.write_table(
                        pa.table(
                            {
                                "value": batch.column(0),
                                **{
                                    c: pa.array(parsed[c].to_numpy(), pa.string(), from_pandas=True)
                                    for c in ("bucket", "key", "alternative", "problem")
                                },
                            },
                            schema=schema,
                        )
                    )
        self.conn.execute(f"CREATE VIEW residual AS SELECT * FROM read_parquet({_lit(str(path))})")

    def unfound_references(self, parts: list[_Part]) -> pd.DataFrame:
        """Every reference row whose key is not listed as spelled, is invalid or is foreign,
        with its row's columns.

        The one join of all references against all listed keys carries nothing but the key
        and the row's place (part, position), so what the engine holds or spills per row is
        small; the few rows it finds are read again with their columns afterwards.
        """
        if not parts:
            return pd.DataFrame()
        refs = " UNION ALL ".join(
            f"""SELECT {p.index} AS part, {p.ref_index} AS ref, file_row_number AS pos,
                {_ident(p.column)}::VARCHAR AS reference
            FROM {self._table(p.name)} WHERE {p.where}"""
            for p in parts
        )
        ours = f"(bucket IS NULL OR bucket = {_lit(self.bucket)})"
        hits = self._arrow(
            f"""
            WITH refs AS NOT MATERIALIZED ({refs}),
            parsed AS NOT MATERIALIZED (
                SELECT refs.part, refs.ref, refs.pos,
                    CASE WHEN p.value IS NULL THEN refs.reference ELSE p.key END AS key,
                    p.bucket, p.problem
                FROM refs LEFT JOIN residual p ON p.value = refs.reference
            )
            SELECT part, ref, pos FROM parsed WHERE problem IS NOT NULL OR NOT {ours}
            UNION ALL
            SELECT r.part, r.ref, r.pos FROM (
                SELECT part, ref, pos, key FROM parsed WHERE problem IS NULL AND {ours}
            ) r ANTI JOIN (SELECT key FROM objects) o ON o.key = r.key
            """
        )
        self.conn.register("hits", hits)
        rows = " UNION ALL ".join(
            f"""SELECT {p.index} AS part, {p.ref_index} AS ref, t.file_row_number AS pos,
                {"row_id::VARCHAR" if p.index >= 0 else "NULL::VARCHAR"} AS row_id,
                {"tenant::VARCHAR" if p.index >= 0 else "NULL::VARCHAR"} AS tenant,
                {"status::VARCHAR" if p.index >= 0 else "NULL::VARCHAR"} AS status,
                {"updated_at::TIMESTAMPTZ" if p.index >= 0 else "NULL::TIMESTAMPTZ"} AS updated_at,
                {_ident(p.column)}::VARCHAR AS reference, {p.judged} AS judged
            FROM {self._table(p.name)} t SEMI JOIN (
                SELECT pos FROM hits WHERE part = {p.index} AND ref = {p.ref_index}
            ) h ON h.pos = t.file_row_number"""
            for p in parts
        )
        sql = f"""
            SELECT x.*,
                CASE WHEN p.value IS NULL THEN x.reference ELSE p.key END AS key,
                p.alternative, p.bucket, p.problem
            FROM ({rows}) x LEFT JOIN residual p ON p.value = x.reference
        """
        found = self._frame(sql, {"updated_at": TIMESTAMP})
        self.conn.unregister("hits")
        return found.sort_values(["part", "ref", "pos"], kind="stable", ignore_index=True)

    def listed(self, spellings: pd.Series) -> set[str]:
        """Which of a few spellings are listed keys (the engine scans the keys once)."""
        values = sorted(set(spellings.dropna()))
        if not values:
            return set()
        self._register("wanted_keys", values)
        found = self._arrow(
            "SELECT DISTINCT o.key FROM objects o SEMI JOIN wanted_keys w ON o.key = w.s"
        )
        self.conn.unregister("wanted_keys")
        return set(found.column(0).to_pylist())

    def learn_normal_matches(self, spellings: pd.Series) -> None:
        """For each spelling, the first listed key (in listing order) sharing its normalised
        form, like `_ObjectIndex.normal_match`; found in one scan of the listed keys."""
        values = sorted(set(spellings.dropna()) - set(self._normal))
        if not values:
            return
        normal = normalized_array(pa.array(values, pa.string()))
        norms = sorted({n for n in normal.to_pylist() if n is not None})
        matched: dict[str, str] = {}
        if norms and self.storage.count:
            self._register("wanted_normal", norms)
            self._ensure_udf()
            found = self._arrow(
                """
                SELECT norm, arg_min(key, pos) AS match FROM (
                    SELECT key, pos, lower(key) AS norm FROM objects WHERE strlen(key) = length(key)
                    UNION ALL
                    SELECT key, pos, integrity_normal(key) AS norm
                    FROM objects WHERE strlen(key) <> length(key)
                ) WHERE norm IN (SELECT s FROM wanted_normal)
                GROUP BY norm
                """
            )
            self.conn.unregister("wanted_normal")
            matched = dict(zip(found.column(0).to_pylist(), found.column(1).to_pylist()))
        for value, norm in zip(values, normal.to_pylist()):
            self._normal[value] = matched.get(norm) if norm is not None else None

    def _ensure_udf(self) -> None:
        if getattr(self, "_udf", False):
            return
        import duckdb

        self.conn.create_function(
            "integrity_normal",
            lambda values: normalized_array(values),
            [duckdb.sqltypes.VARCHAR],
            duckdb.sqltypes.VARCHAR,
            type="arrow",
        )
        self._udf = True

    def normal_match(self, values: pd.Series) -> pd.Series:
        out = np.array(
            [self._normal.get(v) if isinstance(v, str) else None for v in values], dtype=object
        )
        return pd.Series(out, index=values.index, dtype="object")

    # -- uploads

    def unprocessed_uploads(self, near_processed: set[str]) -> pd.DataFrame:
        """Uploads with no processed row naming them, joined with their first job row, where
        they are orphans or stuck jobs (before near-matched processed keys are taken out)."""
        uploads = self.spec.uploads
        assert uploads is not None
        head = uploads.prefix.split("{tenant}", 1)[0]
        where = f"prefix(key, {_lit(head)}) AND NOT suffix(key, '/')"
        if self.options.tenant is not None and self.options.tenant != ALL_TENANTS:
            where += f" AND prefix(key, {_lit(uploads.prefix.format(tenant=self.options.tenant))})"
        processed = ""
        if self._has_rows(uploads.processed_table):
            column = _ident(uploads.processed_column)
            processed = f"""
                AND NOT EXISTS (
                    WITH parsed AS (
                        SELECT CASE WHEN p.value IS NULL THEN d.v ELSE p.key END AS k,
                            p.alternative AS a
                        FROM (SELECT {column}::VARCHAR AS v
                              FROM {self._table(uploads.processed_table)}
                              WHERE {column} IS NOT NULL) d
                        LEFT JOIN residual p ON p.value = d.v
                        WHERE p.bucket IS NULL OR p.bucket = {_lit(self.bucket)}
                    ),
                    spellings AS (
                        SELECT k AS s FROM parsed WHERE k IS NOT NULL
                        UNION ALL SELECT a FROM parsed WHERE a IS NOT NULL
                    )
                    SELECT 1 FROM spellings WHERE spellings.s = objects.key
                )"""
        jobs_spec = self.spec.jobs
        requeue = jobs_spec.requeue_statuses if jobs_spec else []
        processing = jobs_spec.processing_statuses if jobs_spec else []
        if self._has_rows(PROCESSING_JOBS):
            jobs = f"""(SELECT key::VARCHAR AS key, status::VARCHAR AS status,
                    started_at::TIMESTAMPTZ AS started_at, updated_at::TIMESTAMPTZ AS updated_at,
                    file_row_number AS jpos FROM {self._table(PROCESSING_JOBS)})"""
        else:
            jobs = (
                "(SELECT NULL::VARCHAR AS key, NULL::VARCHAR AS status, NULL::TIMESTAMPTZ AS "
                "started_at, NULL::TIMESTAMPTZ AS updated_at, 0 AS jpos WHERE false)"
            )
        orphan_before = _before_us(self.now, pd.Timedelta(self.options.min_age))
        stuck_before = _before_us(self.now, pd.Timedelta(self.options.stuck_after))
        sql = f"""
            WITH candidates AS (
                SELECT key, pos, last_modified FROM objects WHERE {where} {processed}
            ),
            joined AS (
                SELECT c.key, c.pos, c.last_modified, j.status AS job_status,
                    j.started_at AS job_started_at, j.updated_at AS job_updated_at
                FROM candidates c LEFT JOIN {jobs} j ON j.key = c.key
                QUALIFY row_number() OVER (PARTITION BY c.key ORDER BY j.jpos) = 1
            ),
            judged AS (
                SELECT *,
                    CASE WHEN job_updated_at IS NULL OR last_modified >= job_updated_at
                        THEN last_modified ELSE job_updated_at END AS last_seen,
                    coalesce(job_started_at, job_updated_at) AS started
                FROM joined
            )
            SELECT key, pos, job_status, job_started_at, job_updated_at, started,
                (job_status IS NULL OR {_in("job_status", requeue)})
                    AND coalesce(epoch_us(last_seen) < {orphan_before}, false) AS is_orphan,
                {_in("job_status", processing)}
                    AND coalesce(epoch_us(started) < {stuck_before}, false) AS is_stuck
            FROM judged
            WHERE ((job_status IS NULL OR {_in("job_status", requeue)})
                    AND coalesce(epoch_us(last_seen) < {orphan_before}, false))
                OR ({_in("job_status", processing)}
                    AND coalesce(epoch_us(started) < {stuck_before}, false))
        """
        merged = self._frame(
            sql,
            {"job_started_at": TIMESTAMP, "job_updated_at": TIMESTAMP, "started": TIMESTAMP},
        ).sort_values("pos", kind="stable", ignore_index=True)
        return merged.loc[~merged["key"].isin(near_processed)].reset_index(drop=True)

    # -- plans

    def progress(self) -> pd.DataFrame | None:
        plans_spec = self.spec.plans
        if plans_spec is None or not self._has_rows(PLANS):
            return None
        has_project = "project" in self.columns[PLANS]
        groups = ["tenant", "project", "plan"] if has_project else ["tenant", "plan"]
        pattern, names = _re2_template(plans_spec.sheets_prefix, ".+")
        head = plans_spec.sheets_prefix.split("{", 1)[0]
        fields = ", ".join(f"g[{_lit(n)}] AS {_ident(n)}" for n in names)
        on = " AND ".join(
            f"c.{_ident(g)} = live.{_ident('row_id' if g == 'plan' else g)}::VARCHAR"
            for g in groups
        )
        project = "live.project::VARCHAR AS project," if has_project else ""
        sql = f"""
            WITH counts AS (
                SELECT {", ".join(_ident(g) for g in groups)}, count(*) AS expected FROM (
                    SELECT {fields} FROM (
                        SELECT regexp_extract(key, {_lit(pattern)}, [{", ".join(_lit(n) for n in names)}]) AS g
                        FROM objects
                        WHERE suffix(key, {_lit(plans_spec.descriptor_suffix)})
                            AND prefix(key, {_lit(head)}) AND regexp_matches(key, {_lit(pattern)})
                    )
                ) GROUP BY ALL
            ),
            live AS (
                SELECT *, file_row_number AS pos FROM {self._table(PLANS)}
                WHERE NOT {_in("status::VARCHAR", plans_spec.skip_statuses)}
            )
            SELECT live.pos, live.row_id::VARCHAR AS plan, live.tenant::VARCHAR AS tenant, {project}
                live.status::VARCHAR AS status, live.completed::BIGINT AS completed,
                live.total::BIGINT AS total, live.updated_at::TIMESTAMPTZ AS updated_at,
                coalesce(c.expected, 0)::BIGINT AS expected
            FROM live LEFT JOIN counts c ON {on}
            WHERE live.completed < coalesce(c.expected, 0)
        """
        behind = self._frame(sql, {"updated_at": TIMESTAMP}).sort_values(
            "pos", kind="stable", ignore_index=True
        )
        nulls = self.conn.execute(
            f"SELECT count(*) FILTER (completed IS NULL), count(*) FILTER (total IS NULL) "
            f"FROM {self._table(PLANS)}"
        ).fetchone()
        assert nulls is not None
        # A column with a NULL anywhere is a float column in a frame: its numbers print so.
        for column, null_count in zip(("completed", "total"), nulls):
            if null_count:
                behind[column] = behind[column].astype("float64")
        return behind


def _database_files(db: DatabaseInventory, work_dir: Path) -> dict[str, Path]:
    """The database inventory's Parquet file per table: its own where it has them, else a
    snapshot written into the engine's work directory."""
    paths = getattr(db, "paths", None)
    if isinstance(paths, dict) and paths and all(Path(p).is_file() for p in paths.values()):
        return {name: Path(p) for name, p in paths.items()}
    directory = db.save(work_dir / "database")
    return {name: directory / f"{name}.parquet" for name in db.tables}


def diff_parquet(
    storage: StorageInventory,
    db: DatabaseInventory,
    spec: ReconciliationSpec,
    options: DiffOptions | None = None,
    *,
    limits: EngineLimits | None = None,
) -> ReconciliationReport:
    """Compare the two inventories' files and return every finding, like `diff_inventories`,
    in memory bounded by the engine's limit."""
    limits = limits or EngineLimits.default()
    return _diff(
        storage,
        lambda work_dir: _database_files(db, work_dir),
        spec,
        options,
        limits,
        db_complete=db.complete,
        db_errors=db.errors,
        db_seconds=db.seconds,
    )


def diff_snapshots(
    storage: StorageInventory | str | Path,
    database_dir: str | Path,
    spec: ReconciliationSpec,
    options: DiffOptions | None = None,
    *,
    limits: EngineLimits | None = None,
) -> ReconciliationReport:
    """The diff of a storage snapshot file and a database snapshot directory (as
    `DatabaseInventory.save` writes it), neither of them loaded into memory."""
    if not isinstance(storage, StorageInventory):
        storage = StorageInventory.load(storage)
    directory = Path(database_dir)
    meta = json.loads((directory / "inventory.json").read_text())
    files = {name: directory / f"{name}.parquet" for name in meta["tables"]}
    return _diff(
        storage,
        lambda _: files,
        spec,
        options,
        limits or EngineLimits.default(),
        db_complete=meta.get("complete", True),
        db_errors=meta.get("errors", []),
        db_seconds=meta.get("seconds", 0.0),
    )


def _diff(
    storage: StorageInventory,
    database_files: Callable[[Path], dict[str, Path]],
    spec: ReconciliationSpec,
    options: DiffOptions | None,
    limits: EngineLimits,
    *,
    db_complete: bool,
    db_errors: list[str],
    db_seconds: float,
) -> ReconciliationReport:
    options = options or DiffOptions()
    now = pd.Timestamp(options.now or datetime.now(timezone.utc))
    if now.tzinfo is None:
        now = now.tz_localize("UTC")
    as_of = options.storage_as_of or storage.snapshot_at
    as_of = pd.Timestamp(as_of).tz_convert("UTC") if as_of is not None else None
    import duckdb  # about 0.3 s: imported when the out-of-core diff runs, not before

    started = time.perf_counter()
    try:
        with connect(limits) as session:
            files = database_files(session.work_dir)
            findings, row_counts, phases = _run_diff(
                session, storage, files, spec, options, now, as_of
            )
    except duckdb.OutOfMemoryException:
        raise IntegrityError(
            f"the diff needs more memory than its limit of {limits.memory_limit / 1e6:,.0f} MB "
            f"even when spilling to disk: raise {settings.ENV_MEMORY_LIMIT}"
        ) from None

    reasons = [f"storage: {e}" for e in storage.errors] + [f"database: {e}" for e in db_errors]
    return ReconciliationReport(
        findings=findings,
        complete=storage.complete and db_complete,
        reasons=reasons,
        bucket=storage.bucket,
        scope=options.tenant or ALL_TENANTS,
        objects_checked=storage.count,
        rows_checked=sum(row_counts.values()),
        generated_at=now.to_pydatetime(),
        options=options.to_dict(),
        timings={
            "list_seconds": storage.seconds,
            "read_seconds": db_seconds,
            "engine_seconds": time.perf_counter() - started,
            "memory_limit_bytes": float(limits.memory_limit),
            "spill_peak_bytes": float(session.spill_peak_bytes),
            **phases,
        },
        table_rows=_table_rows(row_counts, spec),
        storage_source=storage.source,
        storage_as_of=storage.as_of,
    )


def _run_diff(
    session: EngineSession,
    storage: StorageInventory,
    files: dict[str, Path],
    spec: ReconciliationSpec,
    options: DiffOptions,
    now: pd.Timestamp,
    as_of: pd.Timestamp | None,
) -> tuple[pd.DataFrame, dict[str, int], dict[str, float]]:
    row_counts = {name: pq.read_metadata(path).num_rows for name, path in files.items()}
    diff = _ParquetDiff(session, storage, files, spec, options, now)
    parts = diff.parts(as_of)
    processed = diff.processed_part(parts)
    looked_up = parts + ([processed] if processed else [])
    with diff.phase("parse"):
        diff.parse_residual(looked_up)
    with diff.phase("references"):
        unfound = diff.unfound_references(looked_up)
    findings = _assemble(diff, unfound, spec, options)
    return findings, row_counts, diff.timings


def _assemble(
    diff: _ParquetDiff, unfound: pd.DataFrame, spec: ReconciliationSpec, options: DiffOptions
) -> pd.DataFrame:
    """The findings in the order and with the types of `diff_inventories`."""
    bucket = diff.bucket
    if unfound.empty:
        unfound = pd.DataFrame(
            columns=["part", "ref", "pos", "key", "alternative", "bucket", "problem", "judged"]
        )
    for column in ("key", "alternative", "bucket", "problem"):
        unfound[column] = unfound[column].astype("object").where(unfound[column].notna(), None)
    # Not found as spelled: found after all if the other spelling is listed.
    with diff.phase("alternatives"):
        alternative_listed = diff.listed(unfound["alternative"])
    found = unfound["alternative"].isin(alternative_listed)
    foreign = unfound["bucket"].notna() & (unfound["bucket"] != bucket)
    resolved = unfound["key"].notna()
    references = unfound["part"] >= 0
    candidates = references & ~foreign & ~found & resolved & unfound["judged"].astype(bool)

    # Processed rows' spellings of ours that are not listed: their near matches are processed.
    processed_rows = ~references
    if diff.processed_ref is not None:
        processed_rows |= (unfound["part"] == diff.processed_ref[0]) & (
            unfound["ref"] == diff.processed_ref[1]
        )
    ours = processed_rows & (unfound["bucket"].isna() | (unfound["bucket"] == bucket))
    processed_unlisted = pd.concat(
        [
            unfound.loc[ours, "key"],
            unfound.loc[ours & ~found, "alternative"],
        ]
    ).dropna()
    with diff.phase("normal"):
        diff.learn_normal_matches(
            pd.concat(
                [
                    unfound.loc[candidates, "key"],
                    unfound.loc[candidates, "alternative"],
                    processed_unlisted,
                ]
            )
        )

    out: list[pd.DataFrame] = []
    if spec.uploads is not None:
        near_processed = set(diff.normal_match(processed_unlisted).dropna())
        with diff.phase("uploads"):
            merged = diff.unprocessed_uploads(near_processed)
        out += _upload_findings(merged, spec)

    for index, (_name, t) in enumerate(spec.tables.items()):
        for ref_index, ref in enumerate(t.references):
            mask = (unfound["part"] == index) & (unfound["ref"] == ref_index)
            if not mask.any():
                continue
            sel = unfound.loc[mask].rename(columns={"reference": ref.column})
            emit = RowEmitter(out, sel, t.table, ref.column)
            parsed_key = sel["key"]
            problem = sel["problem"]
            emit(
                "invalid_reference",
                problem.notna(),
                ref.column + " " + problem.fillna("").astype("object"),
                parsed_key,
            )
            emit(
                "foreign_reference",
                foreign.loc[mask],
                "references bucket "
                + sel["bucket"].fillna("").astype("object")
                + f", not {bucket}",
                parsed_key,
            )
            these = candidates.loc[mask]
            if these.any():
                primary = diff.normal_match(parsed_key.where(these))
                secondary = diff.normal_match(sel["alternative"].where(these))
                matched = primary.where(primary.notna(), secondary)
                near = these & matched.notna()
                emit(
                    "normalization_mismatch",
                    near,
                    "matches "
                    + matched.fillna("").astype("object")
                    + " only after Unicode/case normalisation",
                    parsed_key,
                )
                emit(ref.kind, these & ~near, ref.error_message, parsed_key)

    with diff.phase("progress"):
        behind = diff.progress()
    if behind is not None and not behind.empty:
        out.append(progress_findings(behind, spec))

    parts = [p for p in out if not p.empty]
    findings = pd.concat(parts, ignore_index=True) if parts else findings_frame()
    if options.status is not None:
        findings = findings.loc[findings["status"] == options.status]
    order = {kind: i for i, kind in enumerate(FINDING_KINDS)}
    findings = (
        findings.assign(_order=findings["kind"].map(order))
        .sort_values(["_order", "table", "key", "row_id"], kind="stable", na_position="last")
        .drop(columns="_order")
        .reset_index(drop=True)
    )
    return typed_findings(findings)


def _upload_findings(merged: pd.DataFrame, spec: ReconciliationSpec) -> list[pd.DataFrame]:
    if merged.empty:
        return []
    return upload_findings(
        merged,
        merged["is_orphan"].astype(bool),
        merged["is_stuck"].astype(bool),
        merged["started"],
        spec,
    )


def _table_rows(counts: dict[str, int], spec: ReconciliationSpec) -> dict[str, int]:
    """Rows read per database table name (the names findings carry in their `table` column)."""
    names = {name: t.table for name, t in spec.tables.items()}
    if spec.jobs is not None:
        names[PROCESSING_JOBS] = spec.jobs.table
    if spec.plans is not None:
        names[PLANS] = spec.plans.table
    rows: dict[str, int] = {}
    for name, count in counts.items():
        table = names.get(name, name)
        rows[table] = rows.get(table, 0) + count
    return rows
