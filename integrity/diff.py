"""The bulk diff: two inventories in, one frame of findings out.

Everything here is vectorised joins and set membership over whole columns; there is no
request and no query per object or row. The finding kinds and their actions are stable names
used by reports, metadata, checks and remediation; each is defined in integrity.kinds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from integrity.inventory import (
    ALL_TENANTS,
    PLANS,
    PROCESSING_JOBS,
    DatabaseInventory,
    StorageInventory,
    read_parquet,
    write_parquet,
)
from integrity.keys import normalized_array, usable_references
from integrity.kinds import KINDS, KindRegistry
from integrity.spec import ReconciliationSpec, template_regex

# The kinds are defined in integrity.kinds; these names are what the engines, remediation and
# the Dagster layer import.
ACTIONS: dict[str, str] = KINDS.actions
FINDING_KINDS: tuple[str, ...] = KINDS.names
ACTION_KINDS: tuple[str, ...] = KINDS.action_kinds
REPORT_ONLY_KINDS: tuple[str, ...] = KINDS.report_only_kinds

FINDING_COLUMNS = [
    "kind",
    "table",
    "row_id",
    "key",
    "tenant",
    "action",
    "detail",
    "column",
    "reference",
    "status",
    "updated_at",
    "expected",
]
EXPORT_COLUMNS = ["kind", "table", "row_id", "key", "tenant", "action", "detail"]


@dataclass(frozen=True)
class DiffOptions:
    """What counts as drift: the age thresholds and the optional filters."""

    min_age: timedelta = KINDS.age("min_age").delta
    stuck_after: timedelta = KINDS.age("stuck_after").delta
    tenant: str | None = None
    status: str | None = None
    now: datetime | None = None
    storage_as_of: datetime | None = None
    """The time the storage inventory describes (an S3 Inventory report's creation time). A row
    created or updated after it may name an object the snapshot cannot show, so it is never
    reported as missing or near-missing; None: the listing is live."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "min_age_seconds": self.min_age.total_seconds(),
            "stuck_after_seconds": self.stuck_after.total_seconds(),
            "tenant": self.tenant,
            "status": self.status,
            "storage_as_of": self.storage_as_of.isoformat() if self.storage_as_of else None,
        }


@dataclass
class ReconciliationReport:
    """The findings and whether they can be trusted (complete) with the reasons if not."""

    findings: pd.DataFrame
    complete: bool
    reasons: list[str]
    bucket: str
    scope: str
    objects_checked: int
    rows_checked: int
    generated_at: datetime
    options: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    table_rows: dict[str, int] = field(default_factory=dict)
    """Rows read per database table, the denominator of remediation's circuit breaker."""
    storage_source: str = "listing"
    """Where the storage side came from: "listing" or an S3 Inventory report's manifest."""
    storage_as_of: datetime | None = None
    """The time the storage side describes: the listing's time or the inventory's snapshot."""

    def counts(self, registry: KindRegistry = KINDS) -> dict[str, int]:
        """Findings per kind, every kind of the registry in its order (0 for a kind not found)."""
        present = self.findings["kind"].value_counts()
        return {kind: int(present.get(kind, 0)) for kind in registry.names}

    def examples(self, limit: int = 20) -> list[dict[str, Any]]:
        """A few findings of each kind in turn, so one noisy kind does not hide the others."""
        if self.findings.empty:
            return []
        ranked = self.findings.assign(_rank=self.findings.groupby("kind", sort=False).cumcount())
        picked = ranked.sort_values(["_rank"], kind="stable").head(limit)
        return [
            {
                "kind": r.kind,
                "key": None if pd.isna(r.key) else r.key,
                "row_id": None if pd.isna(r.row_id) else r.row_id,
                "detail": r.detail,
            }
            for r in picked.itertuples(index=False)
        ]

    def summary(self, *, examples: int = 10) -> dict[str, Any]:
        """The JSON summary the CLI prints and the assets record."""
        return {
            "dry_run": True,
            "complete": self.complete,
            **({"reasons": self.reasons} if self.reasons else {}),
            "scope": self.scope,
            "checked": {"objects": self.objects_checked, "rows": self.rows_checked},
            "findings": self.counts(),
            "updated": 0,
            "requeued": 0,
            "examples": self.examples(examples),
            "timings": {k: round(float(v), 3) for k, v in self.timings.items()},
        }

    # -- files ---------------------------------------------------------------

    def _meta(self) -> dict[str, Any]:
        return {
            "complete": self.complete,
            "reasons": self.reasons,
            "bucket": self.bucket,
            "scope": self.scope,
            "objects_checked": self.objects_checked,
            "rows_checked": self.rows_checked,
            "generated_at": self.generated_at.isoformat(),
            "options": self.options,
            "timings": self.timings,
            "table_rows": self.table_rows,
            "storage_source": self.storage_source,
            "storage_as_of": self.storage_as_of.isoformat() if self.storage_as_of else None,
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        write_parquet(path, self.findings, self._meta())
        return path

    @classmethod
    def load(cls, path: str | Path) -> ReconciliationReport:
        frame, meta = read_parquet(Path(path))
        meta["generated_at"] = datetime.fromisoformat(meta["generated_at"])
        if meta.get("storage_as_of"):
            meta["storage_as_of"] = datetime.fromisoformat(meta["storage_as_of"])
        return cls(findings=typed_findings(frame), **meta)

    def export(self, path: str | Path) -> Path:
        """Write one line per finding: .csv or .jsonl, with the export columns."""
        path = Path(path)
        frame = self.findings[EXPORT_COLUMNS]
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".csv":
            frame.to_csv(path, index=False)
        elif path.suffix == ".jsonl":
            with path.open("w", encoding="utf-8") as out:
                for record in frame.astype("object").where(frame.notna(), None).to_dict("records"):
                    out.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            raise ValueError(f"{path.name}: the report file must end in .csv or .jsonl")
        return path


# --------------------------------------------------------------------------- the diff


def typed_findings(findings: pd.DataFrame) -> pd.DataFrame:
    """One set of column types for fresh and loaded reports: text columns are objects with None
    for missing (never NaN), updated_at is UTC, expected a nullable integer."""
    findings = findings.copy()
    findings["updated_at"] = pd.to_datetime(findings["updated_at"], utc=True)
    findings["expected"] = findings["expected"].astype("Int64")
    for column in FINDING_COLUMNS:
        if column in ("updated_at", "expected"):
            continue
        findings[column] = findings[column].astype("object").where(findings[column].notna(), None)
    return findings


def findings_frame(**columns: Any) -> pd.DataFrame:
    frame = pd.DataFrame(columns)
    for column in FINDING_COLUMNS:
        if column not in frame:
            frame[column] = None
    return frame[FINDING_COLUMNS]


class _ObjectIndex:
    """Set membership over the listed keys in Arrow (no Python string per key), with the
    normalised spelling built only when some reference is not found as spelled."""

    def __init__(self, keys: pd.Series) -> None:
        self.keys = pa.array(keys, type=pa.string(), from_pandas=True)
        self._normal: pa.Array | None = None

    def contains(self, values: pd.Series) -> pd.Series:
        found = pc.is_in(pa.array(values, type=pa.string(), from_pandas=True), value_set=self.keys)
        return pd.Series(found.fill_null(False).to_numpy(zero_copy_only=False), index=values.index)

    def normal_match(self, values: pd.Series) -> pd.Series:
        """The listed key a value matches after normalisation (None where none does)."""
        if values.empty or not values.notna().any():
            return pd.Series(None, index=values.index, dtype="object")
        if self._normal is None:
            self._normal = normalized_array(self.keys)
        positions = pc.index_in(normalized_array(values), value_set=self._normal)
        matched = pc.take(self.keys, positions).to_numpy(zero_copy_only=False)
        return pd.Series(matched, index=values.index, dtype="object")


@dataclass
class RowEmitter:
    """Appends findings about rows of one table's reference column."""

    out: list[pd.DataFrame]
    rows: pd.DataFrame
    table: str
    column: str

    def __call__(
        self, kind: str, where: pd.Series, detail: pd.Series | str, key: pd.Series
    ) -> None:
        if not where.any():
            return
        part = self.rows.loc[where]
        self.out.append(
            findings_frame(
                kind=kind,
                table=self.table,
                column=self.column,
                row_id=part["row_id"].to_numpy(),
                key=key.loc[where].to_numpy(),
                tenant=part["tenant"].to_numpy(),
                action=ACTIONS[kind],
                detail=detail.loc[where].to_numpy() if isinstance(detail, pd.Series) else detail,
                reference=part[self.column].to_numpy(),
                status=part["status"].to_numpy(),
                updated_at=part["updated_at"].to_numpy(),
            )
        )


def _missing_references(
    db: DatabaseInventory,
    spec: ReconciliationSpec,
    index: _ObjectIndex,
    bucket: str,
    backend: str,
    as_of: pd.Timestamp | None = None,
) -> list[pd.DataFrame]:
    out: list[pd.DataFrame] = []
    for name, t in spec.tables.items():
        rows = db.tables.get(name)
        if rows is None or rows.empty:
            continue
        live = ~rows["status"].isin(t.skip_statuses)
        # Storage as of a snapshot cannot show what a later row names: judge only older rows.
        judged = (
            ~(pd.to_datetime(rows["updated_at"], utc=True) > as_of)
            if as_of is not None
            else pd.Series(True, index=rows.index)
        )
        for ref in t.references:
            mask = live & rows[ref.column].notna()
            if ref.when_status is not None:
                mask &= rows["status"].isin(ref.when_status)
            sel = rows.loc[mask]
            if sel.empty:
                continue
            parsed = usable_references(sel[ref.column], bucket, backend)
            invalid = parsed["problem"].notna()
            foreign = parsed["bucket"].notna() & (parsed["bucket"] != bucket)
            unresolved = parsed["key"].isna()
            found = index.contains(parsed["key"]) | index.contains(parsed["alternative"])
            candidates = ~foreign & ~found & ~unresolved & judged.loc[sel.index]
            emit = RowEmitter(out, sel, t.table, ref.column)
            emit(
                "invalid_reference",
                invalid,
                ref.column + " " + parsed["problem"].fillna("").astype("object"),
                parsed["key"],
            )
            emit(
                "foreign_reference",
                foreign,
                "references bucket "
                + parsed["bucket"].fillna("").astype("object")
                + f", not {bucket}",
                parsed["key"],
            )
            if candidates.any():
                primary = index.normal_match(parsed["key"].where(candidates))
                secondary = index.normal_match(parsed["alternative"].where(candidates))
                matched = primary.where(primary.notna(), secondary)
                near = candidates & matched.notna()
                emit(
                    "normalization_mismatch",
                    near,
                    "matches "
                    + matched.fillna("").astype("object")
                    + " only after Unicode/case normalisation",
                    parsed["key"],
                )
                emit(ref.kind, candidates & ~near, ref.error_message, parsed["key"])
    return out


def _processed_keys(
    db: DatabaseInventory,
    spec: ReconciliationSpec,
    index: _ObjectIndex,
    bucket: str,
    backend: str,
) -> pd.Series:
    """Every listed key that some processed-table row names, in any spelling (status ignored)."""
    uploads = spec.uploads
    assert uploads is not None
    rows = db.tables.get(uploads.processed_table)
    if rows is None or rows.empty:
        return pd.Series([], dtype="object")
    parsed = usable_references(rows[uploads.processed_column], bucket, backend)
    ours = parsed.loc[parsed["bucket"].isna() | (parsed["bucket"] == bucket)]
    spellings = pd.concat([ours["key"], ours["alternative"]]).dropna()
    listed = index.contains(spellings)
    direct = spellings[listed]
    near = index.normal_match(spellings[~listed]).dropna()
    return pd.concat([direct, near]).astype("object")


def _unprocessed_uploads(
    storage: StorageInventory,
    db: DatabaseInventory,
    spec: ReconciliationSpec,
    index: _ObjectIndex,
    options: DiffOptions,
    now: pd.Timestamp,
) -> list[pd.DataFrame]:
    uploads = spec.uploads
    if uploads is None:
        return []
    head = uploads.prefix.split("{tenant}", 1)[0]
    objects = storage.objects
    keys = objects["key"]
    in_uploads = keys.str.startswith(head) & ~keys.str.endswith("/")
    if options.tenant is not None and options.tenant != ALL_TENANTS:
        in_uploads &= keys.str.startswith(uploads.prefix.format(tenant=options.tenant))
    candidates = objects.loc[
        in_uploads & ~keys.isin(_processed_keys(db, spec, index, storage.bucket, storage.backend))
    ]
    if candidates.empty:
        return []
    jobs = db.tables.get(PROCESSING_JOBS)
    if jobs is None or jobs.empty:
        jobs = pd.DataFrame(columns=["key", "status", "started_at", "updated_at"])
    jobs = jobs.drop_duplicates("key").rename(
        columns={
            "status": "job_status",
            "started_at": "job_started_at",
            "updated_at": "job_updated_at",
        }
    )
    merged = candidates.merge(jobs, on="key", how="left", validate="one_to_one")
    job_updated = pd.to_datetime(merged["job_updated_at"], utc=True)
    last_seen = merged["last_modified"].where(
        job_updated.isna() | (merged["last_modified"] >= job_updated), job_updated
    )
    jobs_spec = spec.jobs
    requeue = jobs_spec.requeue_statuses if jobs_spec else []
    processing = jobs_spec.processing_statuses if jobs_spec else []

    is_orphan = (merged["job_status"].isna() | merged["job_status"].isin(requeue)) & (
        now - last_seen > options.min_age
    )
    started = pd.to_datetime(merged["job_started_at"], utc=True)
    started = started.where(started.notna(), job_updated)
    is_stuck = merged["job_status"].isin(processing) & (now - started > options.stuck_after)

    return upload_findings(merged, is_orphan, is_stuck, started, spec)


def upload_findings(
    merged: pd.DataFrame,
    is_orphan: pd.Series,
    is_stuck: pd.Series,
    started: pd.Series,
    spec: ReconciliationSpec,
) -> list[pd.DataFrame]:
    """orphan_object and stuck_job findings from uploads merged with their jobs (columns key,
    job_status, job_updated_at), given which are orphans or stuck and when each job started."""
    uploads = spec.uploads
    assert uploads is not None
    tenant = merged["key"].str.extract(template_regex(uploads.prefix))["tenant"]
    job_table = spec.jobs.table if spec.jobs else None
    out = []
    for kind, where, detail in (
        (
            "orphan_object",
            is_orphan,
            "no "
            + uploads.processed_table
            + " row; processing job "
            + merged["job_status"].fillna("absent").astype("object"),
        ),
        (
            "stuck_job",
            is_stuck,
            "processing job processing since "
            + started.dt.strftime("%Y-%m-%dT%H:%M:%SZ").fillna("?").astype("object"),
        ),
    ):
        if not where.any():
            continue
        part = merged.loc[where]
        out.append(
            findings_frame(
                kind=kind,
                table=job_table,
                row_id=part["key"].to_numpy(),
                key=part["key"].to_numpy(),
                tenant=tenant.loc[where].to_numpy(),
                action=ACTIONS[kind],
                detail=detail.loc[where].to_numpy(),
                status=part["job_status"].to_numpy(),
                updated_at=part["job_updated_at"].to_numpy(),
            )
        )
    return out


def _progress_behind(
    storage: StorageInventory, db: DatabaseInventory, spec: ReconciliationSpec
) -> list[pd.DataFrame]:
    plans_spec = spec.plans
    plans = db.tables.get(PLANS)
    if plans_spec is None or plans is None or plans.empty:
        return []
    keys = storage.objects["key"]
    descriptors = keys[keys.str.endswith(plans_spec.descriptor_suffix)]
    groups = ["tenant", "project", "plan"] if "project" in plans.columns else ["tenant", "plan"]
    found = descriptors.str.extract(template_regex(plans_spec.sheets_prefix, ".+"))
    counts = found.dropna().groupby(groups, sort=False).size().rename("expected").reset_index()
    live = plans.loc[~plans["status"].isin(plans_spec.skip_statuses)].rename(
        columns={"row_id": "plan"}
    )
    merged = live.merge(counts, on=groups, how="left")
    merged["expected"] = merged["expected"].fillna(0).astype("int64")
    behind = merged.loc[merged["completed"] < merged["expected"]]
    if behind.empty:
        return []
    return [progress_findings(behind, spec)]


def progress_findings(behind: pd.DataFrame, spec: ReconciliationSpec) -> pd.DataFrame:
    """progress_behind findings from live plans (plan, tenant[, project], status, completed,
    total, updated_at) with the descriptor count found in storage (`expected`)."""
    plans_spec = spec.plans
    assert plans_spec is not None
    prefix_of = plans_spec.sheets_prefix.format
    detail = [
        f"{plans_spec.completed} {c} < {e} descriptors in storage (of {t} pages)"
        for c, e, t in zip(behind["completed"], behind["expected"], behind["total"])
    ]
    return findings_frame(
        kind="progress_behind",
        table=plans_spec.table,
        row_id=behind["plan"].to_numpy(),
        key=[
            prefix_of(tenant=r.tenant, plan=r.plan, project=getattr(r, "project", ""))
            for r in behind.itertuples(index=False)
        ],
        tenant=behind["tenant"].to_numpy(),
        action=ACTIONS["progress_behind"],
        detail=detail,
        column=plans_spec.completed,
        status=behind["status"].to_numpy(),
        updated_at=behind["updated_at"].to_numpy(),
        expected=behind["expected"].to_numpy(),
    )


def diff_inventories(
    storage: StorageInventory,
    db: DatabaseInventory,
    spec: ReconciliationSpec,
    options: DiffOptions | None = None,
) -> ReconciliationReport:
    """Compare the two inventories and return every finding, sorted by kind, table and key."""
    options = options or DiffOptions()
    now = pd.Timestamp(options.now or datetime.now(timezone.utc))
    if now.tzinfo is None:
        now = now.tz_localize("UTC")
    index = _ObjectIndex(storage.objects["key"])

    parts = _unprocessed_uploads(storage, db, spec, index, options, now)
    as_of = options.storage_as_of or storage.snapshot_at
    as_of = pd.Timestamp(as_of).tz_convert("UTC") if as_of is not None else None
    parts += _missing_references(db, spec, index, storage.bucket, storage.backend, as_of)
    parts += _progress_behind(storage, db, spec)
    parts = [p for p in parts if not p.empty]
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
    findings = typed_findings(findings)

    reasons = [f"storage: {e}" for e in storage.errors] + [f"database: {e}" for e in db.errors]
    return ReconciliationReport(
        findings=findings,
        complete=storage.complete and db.complete,
        reasons=reasons,
        bucket=storage.bucket,
        scope=options.tenant or ALL_TENANTS,
        objects_checked=len(storage.objects),
        rows_checked=db.rows,
        generated_at=now.to_pydatetime(),
        options=options.to_dict(),
        timings={"list_seconds": storage.seconds, "read_seconds": db.seconds},
        table_rows=_table_rows(db, spec),
        storage_source=storage.source,
        storage_as_of=storage.as_of,
    )


def _table_rows(db: DatabaseInventory, spec: ReconciliationSpec) -> dict[str, int]:
    """Rows read per database table name (the names findings carry in their `table` column)."""
    names = {name: t.table for name, t in spec.tables.items()}
    if spec.jobs is not None:
        names[PROCESSING_JOBS] = spec.jobs.table
    if spec.plans is not None:
        names[PLANS] = spec.plans.table
    rows: dict[str, int] = {}
    for name, frame in db.tables.items():
        table = names.get(name, name)
        rows[table] = rows.get(table, 0) + len(frame)
    return rows
