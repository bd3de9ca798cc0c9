"""Key-range shards: one tenant's key space (or the whole bucket) in K ranges, each listed, read
and diffed on its own, and the K shard reports merged into the report of one unsharded run.

A shard is the keys in (after, end]: `after` is the StartAfter of its listing, `end` where the
listing stops. The K-1 boundaries come from a storage inventory at hand (quantiles of its keys)
or from a sampled listing (a few delimiter probes, never a full listing), and are snapped so no
unit a finding is computed over straddles two shards: a plan's sheets prefix (its descriptors
are counted together) stays whole; an upload is one key, judged with its job and the rows
that name it.

Each shard judges the objects in its range and the references whose key falls in it (a
reference that names no key belongs to the first shard); the database side is read whole (or
for the tenant) by every shard. Concatenating the shard findings is then exactly one run's,
except where a judgement needs keys from two shards: a reference whose two spellings (literal
and percent-decoded) fall in different shards, or a Unicode/case-normalisation class whose
spellings and listed keys span shards (a near-match, or an upload recorded under another
spelling). Each shard publishes its listed keys that are such variants (few); the merge finds
the classes that span shards, rebuilds the small world of those classes from the shard
snapshots, diffs it, and replaces the findings of exactly those units. Where several listed
keys share a normal form, the merge names the smallest (byte order), as one run does when they
lie under one listed prefix.
"""

from __future__ import annotations

import hashlib
import json
import re
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from integrity.diff import FINDING_KINDS, DiffOptions, ReconciliationReport, diff_inventories
from integrity.errors import UsageError
from integrity.inventory import (
    OBJECT_SCHEMA,
    PLANS,
    PROCESSING_JOBS,
    DatabaseInventory,
    StorageInventory,
    covering_prefixes,
    list_storage,
    merge_storage,
    read_parquet,
    referenced_keys,
    write_parquet,
)
from integrity.keys import normalized_array, usable_references
from integrity.spec import ReconciliationSpec, template_regex
from integrity.storage.base import ObjectStore

MAX_SHARDS = 1024
UPLOAD_KINDS = ("orphan_object", "stuck_job")
PLAN_KINDS = ("progress_behind",)
PLAN_FILE = "plan.json"
VARIANTS_FILE = "variants.parquet"
FINDINGS_FILE = "findings.parquet"

KeyLookup = Callable[[int, list[str]], pd.DataFrame]
"""(shard, keys) -> the rows (OBJECT_SCHEMA) of those keys that shard's storage snapshot holds."""


def check_shard_count(value: object, field_name: str = "shards") -> int:
    """A shard count: a whole number from 1 to MAX_SHARDS, else UsageError naming the field."""
    try:
        count = int(str(value).strip())
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_SHARDS or str(value).strip() != str(count):
        raise UsageError(
            f"{field_name}: must be a whole number from 1 to {MAX_SHARDS}, not {value!r}"
        )
    return count


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class ShardPlan:
    """K key ranges: shard i holds the keys in (boundaries[i-1], boundaries[i]]."""

    boundaries: tuple[str, ...]
    tenant: str | None = None
    source: str = "explicit"
    """Where the boundaries came from: "inventory", "sampled listing" or "explicit"."""

    @property
    def shards(self) -> int:
        return len(self.boundaries) + 1

    def key_range(self, shard: int) -> tuple[str | None, str | None]:
        """(after, end) of one shard: its listing starts after `after` and stops at `end`."""
        if not 0 <= shard < self.shards:
            raise UsageError(f"shard {shard} is not one of the plan's {self.shards} shards")
        after = self.boundaries[shard - 1] if shard > 0 else None
        end = self.boundaries[shard] if shard < len(self.boundaries) else None
        return after, end

    def shard_of(self, keys: pd.Series | pa.Array | Sequence[str | None]) -> np.ndarray:
        """The shard of each key (byte order, as S3 lists); a missing key is the first shard's."""
        array = (
            keys
            if isinstance(keys, pa.Array)
            else pa.array(keys, type=pa.string(), from_pandas=True)
        )
        out = np.zeros(len(array), dtype=np.int64)
        for boundary in self.boundaries:
            after = pc.greater(array, pa.scalar(boundary, pa.string())).fill_null(False)
            out += after.to_numpy(zero_copy_only=False)
        return out

    @property
    def fingerprint(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {"boundaries": list(self.boundaries), "tenant": self.tenant, "source": self.source}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShardPlan:
        return cls(tuple(data["boundaries"]), data.get("tenant"), data.get("source", "explicit"))

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / PLAN_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), ensure_ascii=False))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> ShardPlan:
        return cls.from_dict(json.loads((Path(directory) / PLAN_FILE).read_text()))


def _unit_patterns(spec: ReconciliationSpec) -> list[str]:
    """Prefixes whose keys one finding is computed over together: a plan's sheets."""
    return [template_regex(spec.plans.sheets_prefix)] if spec.plans is not None else []


def snap(boundary: str, spec: ReconciliationSpec) -> str:
    """Move a boundary down out of any unit it would split: to just before the unit's prefix.

    A boundary inside a plan's sheets prefix P becomes P without its final '/', which sorts
    before every key under P, so the whole unit falls in the next shard.
    """
    patterns = [re.compile(p) for p in _unit_patterns(spec)]
    moved = True
    while moved:
        moved = False
        for pattern in patterns:
            match = pattern.match(boundary)
            if match is not None:
                boundary = match.group(0)[:-1]
                moved = True
    return boundary


def explicit_plan(
    boundaries: Sequence[str], spec: ReconciliationSpec, *, tenant: str | None = None
) -> ShardPlan:
    """A plan from boundaries a person chose (StartAfter values), snapped and sorted."""
    if len(boundaries) + 1 > MAX_SHARDS:
        raise UsageError(f"boundaries: at most {MAX_SHARDS - 1} boundaries, not {len(boundaries)}")
    for boundary in boundaries:
        if not isinstance(boundary, str):
            raise UsageError(f"boundaries: {boundary!r} is not a key (a string)")
    return ShardPlan(tuple(sorted(snap(b, spec) for b in boundaries)), tenant, "explicit")


def plan_shards(
    candidates: Iterable[str],
    shards: int,
    spec: ReconciliationSpec,
    *,
    tenant: str | None = None,
    source: str = "explicit",
) -> ShardPlan:
    """K-1 boundaries spread evenly over sorted candidate keys, snapped; K shards always.

    With fewer distinct candidates than shards, the last boundaries repeat and their shards are
    empty (a valid partition of the key space: every key still has exactly one shard).
    """
    shards = check_shard_count(shards)
    keys = sorted({snap(k, spec) for k in candidates})
    if not keys:
        # Nothing to split: every key falls in the last shard, the others are empty.
        return ShardPlan(("",) * (shards - 1), tenant, source)
    picks = [keys[min(len(keys) - 1, (i * len(keys)) // shards)] for i in range(1, shards)]
    # Quantiles of distinct snapped keys are non-decreasing; repeat the last for a short list.
    return ShardPlan(tuple(sorted(picks)), tenant, source)


def plan_from_inventory(
    inventory: StorageInventory,
    shards: int,
    spec: ReconciliationSpec,
    *,
    tenant: str | None = None,
) -> ShardPlan:
    """Boundaries at the object quantiles of a storage inventory (a report or a snapshot), so
    each shard gets about the same number of objects."""
    shards = check_shard_count(shards)
    keys = pa.array(inventory.objects["key"], type=pa.string(), from_pandas=True)
    ordered = pc.take(keys, pc.sort_indices(keys))
    n = len(ordered)
    if n == 0:
        return plan_shards([], shards, spec, tenant=tenant, source="inventory")
    picks = [ordered[min(n - 1, (i * n) // shards)].as_py() for i in range(1, shards)]
    snapped = sorted(snap(k, spec) for k in picks)
    return ShardPlan(tuple(snapped), tenant, "inventory")


def plan_from_sample(
    store: ObjectStore,
    shards: int,
    spec: ReconciliationSpec,
    prefixes: list[str] | None = None,
    *,
    tenant: str | None = None,
    max_probes: int = 16,
) -> ShardPlan:
    """Boundaries from a sampled listing: delimiter probes walk the 'directories' breadth first
    (one page each, at most max_probes requests) and the first page of keys of the scope.

    It balances directories, not objects (a sample cannot count); an inventory balances objects.
    """
    shards = check_shard_count(shards)
    queue = list(prefixes) if prefixes else [""]
    candidates: list[str] = []
    probes = 0
    while queue and probes < max_probes:
        prefix = queue.pop(0)
        page = next(iter(store.list_pages(prefix, delimiter="/")), None)
        probes += 1
        if page is None:
            continue
        candidates.extend(page.keys)
        # A directory's boundary sorts just before it: its name without the final '/'.
        candidates.extend(p[:-1] for p in page.common_prefixes)
        queue.extend(page.common_prefixes)
    if len(set(candidates)) < shards and probes < max_probes:
        for prefix in prefixes or [""]:
            page = next(iter(store.list_pages(prefix)), None)
            if page is not None:
                candidates.extend(page.keys)
    return plan_shards(candidates, shards, spec, tenant=tenant, source="sampled listing")


# --------------------------------------------------------------------------- one shard


def list_shard(
    store: ObjectStore,
    db: DatabaseInventory,
    spec: ReconciliationSpec,
    plan: ShardPlan,
    shard: int,
    prefixes: list[str] | None,
    *,
    concurrency: int = 8,
) -> StorageInventory:
    """The shard's range of the scope's prefixes, plus the directories its rows point into
    outside them (the same prefixes one unsharded run lists, cut to the range)."""
    key_range = plan.key_range(shard)
    inventory = list_storage(store, prefixes, concurrency=concurrency, key_range=key_range)
    if "" in inventory.prefixes:
        return inventory
    extra = covering_prefixes(
        referenced_keys(db, spec, store.bucket, store.backend), inventory.prefixes
    )
    if not extra:
        return inventory
    return merge_storage(
        inventory, list_storage(store, extra, concurrency=concurrency, key_range=key_range)
    )


def restrict_inventory(
    inventory: StorageInventory, plan: ShardPlan, shard: int
) -> StorageInventory:
    """A shard's part of an inventory already at hand (an S3 Inventory report, say)."""
    keep = plan.shard_of(inventory.objects["key"]) == shard
    return StorageInventory(
        bucket=inventory.bucket,
        prefixes=inventory.prefixes,
        objects=inventory.objects.loc[keep].reset_index(drop=True),
        complete=inventory.complete,
        errors=inventory.errors,
        requests=inventory.requests,
        seconds=inventory.seconds,
        listed_at=inventory.listed_at,
        backend=inventory.backend,
        source=inventory.source,
        snapshot_at=inventory.snapshot_at,
    )


def _references(
    db: DatabaseInventory, spec: ReconciliationSpec, bucket: str, backend: str
) -> pd.DataFrame:
    parts = []
    for name, t in spec.tables.items():
        rows = db.tables.get(name)
        if rows is None or rows.empty:
            continue
        for ref in t.references:
            parsed = usable_references(rows[ref.column], bucket, backend)
            parts.append(
                pd.DataFrame(
                    {
                        "name": name,
                        "table": t.table,
                        "column": ref.column,
                        "position": np.arange(len(rows)),
                        "row_id": rows["row_id"].astype("object").to_numpy(),
                        "key": parsed["key"].to_numpy(),
                        "alternative": parsed["alternative"].to_numpy(),
                        "ours": (parsed["bucket"].isna() | (parsed["bucket"] == bucket)).to_numpy(),
                        "present": rows[ref.column].notna().to_numpy(),
                    }
                )
            )
    if not parts:
        return pd.DataFrame(
            columns=[
                "name",
                "table",
                "column",
                "position",
                "row_id",
                "key",
                "alternative",
                "ours",
                "present",
            ]
        )
    return pd.concat(parts, ignore_index=True)


def _format_template(template: str, columns: dict[str, pd.Series], index: pd.Index) -> pd.Series:
    """A prefix template filled in per row, vectorised (no Python call per row)."""
    out = pd.Series("", index=index, dtype="object")
    for literal, name, _, _ in string.Formatter().parse(template):
        out = out + literal
        if name:
            out = out + columns[name].astype("object").where(columns[name].notna(), "None").astype(
                str
            )
    return out


def plan_prefixes(plans: pd.DataFrame, spec: ReconciliationSpec) -> pd.Series:
    """Each plan row's sheets prefix (the key its progress finding carries)."""
    assert spec.plans is not None
    columns = {
        "tenant": plans["tenant"],
        "plan": plans["row_id"],
        "project": plans["project"]
        if "project" in plans.columns
        else pd.Series("", index=plans.index),
    }
    return _format_template(spec.plans.sheets_prefix, columns, plans.index)


def shard_database(
    db: DatabaseInventory,
    spec: ReconciliationSpec,
    plan: ShardPlan,
    shard: int,
    bucket: str,
    backend: str,
    refs: pd.DataFrame | None = None,
) -> DatabaseInventory:
    """The database as one shard judges it: the references owned by other shards blanked (they
    are judged there) and only the plans whose sheets prefix is in the shard; jobs whole."""
    refs = _references(db, spec, bucket, backend) if refs is None else refs
    owner = plan.shard_of(refs["key"]) if len(refs) else np.zeros(0, dtype=np.int64)
    tables = dict(db.tables)
    for (name, column), part in refs.groupby(["name", "column"], sort=False):
        foreign = part.loc[owner[part.index] != shard, "position"].to_numpy()
        if len(foreign) == 0:
            continue
        frame = tables[name].copy() if tables[name] is db.tables[name] else tables[name]
        values = frame[column].astype("object")
        values.iloc[foreign] = None
        frame[column] = values
        tables[name] = frame
    plans = tables.get(PLANS)
    if spec.plans is not None and plans is not None and not plans.empty:
        mine = plan.shard_of(plan_prefixes(plans, spec)) == shard
        tables[PLANS] = plans.loc[mine].reset_index(drop=True)
    return DatabaseInventory(
        tables=tables,
        complete=db.complete,
        errors=db.errors,
        seconds=db.seconds,
        read_at=db.read_at,
    )


def variant_keys(
    storage: StorageInventory,
    db: DatabaseInventory,
    spec: ReconciliationSpec,
    refs: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Listed objects that share a normal form with some database spelling without being one:
    the near-matches another shard may need. Few; in columns (OBJECT_SCHEMA)."""
    if refs is None:
        refs = _references(db, spec, storage.bucket, storage.backend)
    ours = refs.loc[refs["ours"]]
    spellings = pd.concat([ours["key"], ours["alternative"]]).dropna().unique()
    objects = storage.objects
    if len(spellings) == 0 or objects.empty:
        return objects.iloc[0:0].reset_index(drop=True)
    spelled = pa.array(spellings, type=pa.string())
    keys = pa.array(objects["key"], type=pa.string(), from_pandas=True)
    near = pc.is_in(normalized_array(keys), value_set=normalized_array(spelled))
    exact = pc.is_in(keys, value_set=spelled)
    mask = pc.and_(near, pc.invert(exact)).fill_null(False).to_numpy(zero_copy_only=False)
    return objects.loc[mask].reset_index(drop=True)


@dataclass
class ShardReport:
    """One shard's findings (the units it owns) and the variants the merge may need."""

    shard: int
    plan: ShardPlan
    report: ReconciliationReport
    variants: pd.DataFrame
    backend: str = "s3"

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        self.plan.save(directory)
        self.report.save(directory / FINDINGS_FILE)
        write_parquet(
            directory / VARIANTS_FILE,
            self.variants,
            {"shard": self.shard, "backend": self.backend, "plan": self.plan.fingerprint},
        )
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> ShardReport:
        directory = Path(directory)
        variants, meta = read_parquet(directory / VARIANTS_FILE)
        return cls(
            shard=int(meta["shard"]),
            plan=ShardPlan.load(directory),
            report=ReconciliationReport.load(directory / FINDINGS_FILE),
            variants=variants,
            backend=meta.get("backend", "s3"),
        )


def diff_shard(
    storage: StorageInventory,
    db: DatabaseInventory,
    spec: ReconciliationSpec,
    plan: ShardPlan,
    shard: int,
    options: DiffOptions | None = None,
) -> ShardReport:
    """Diff one shard: its objects against the references it owns; keep the units it owns."""
    refs = _references(db, spec, storage.bucket, storage.backend)
    view = shard_database(db, spec, plan, shard, storage.bucket, storage.backend, refs)
    report = diff_inventories(storage, view, spec, options)
    owned = plan.shard_of(report.findings["key"]) == shard
    report.findings = report.findings.loc[owned].reset_index(drop=True)
    # Every shard read the same rows; only the plans were cut to the shard's own.
    report.rows_checked = db.rows
    plans = db.tables.get(PLANS)
    if spec.plans is not None and plans is not None and spec.plans.table in report.table_rows:
        report.table_rows[spec.plans.table] = len(plans)
    return ShardReport(
        shard=shard,
        plan=plan,
        report=report,
        variants=variant_keys(storage, db, spec, refs),
        backend=storage.backend,
    )


# --------------------------------------------------------------------------- the merge


def sort_findings(findings: pd.DataFrame) -> pd.DataFrame:
    """The report's order: by kind, table, key, row id."""
    order = {kind: i for i, kind in enumerate(FINDING_KINDS)}
    return (
        findings.assign(_order=findings["kind"].map(order))
        .sort_values(["_order", "table", "key", "row_id"], kind="stable", na_position="last")
        .drop(columns="_order")
        .reset_index(drop=True)
    )


def lookup_in_snapshot(path: str | Path, keys: list[str]) -> pd.DataFrame:
    """The rows of `keys` in a storage snapshot file, read with a filter (not the whole file)."""
    if not keys:
        return OBJECT_SCHEMA.empty_table().to_pandas()
    table = pq.read_table(
        path, columns=OBJECT_SCHEMA.names, filters=[("key", "in", sorted(set(keys)))]
    )
    return table.to_pandas()


@dataclass
class MergeDetail:
    """What the merge re-judged across shards (for metadata and tests)."""

    classes: int = 0
    units: int = 0
    replaced: int = 0
    lookups: dict[int, int] = field(default_factory=dict)


def _options_of(report: ReconciliationReport) -> DiffOptions:
    o = report.options
    return DiffOptions(
        min_age=timedelta(seconds=o.get("min_age_seconds", 3600)),
        stuck_after=timedelta(seconds=o.get("stuck_after_seconds", 86400)),
        tenant=o.get("tenant"),
        status=o.get("status"),
        now=report.generated_at,
        storage_as_of=pd.Timestamp(o["storage_as_of"]).to_pydatetime()
        if o.get("storage_as_of")
        else None,
    )


def _check_parts(parts: Sequence[ShardReport]) -> ShardPlan:
    if not parts:
        raise UsageError("no shard reports to merge")
    plan = parts[0].plan
    fingerprints = {p.plan.fingerprint for p in parts}
    if len(fingerprints) > 1:
        raise UsageError(
            "the shard reports come from different shard plans: materialize every shard again "
            "after the plan"
        )
    seen = sorted(p.shard for p in parts)
    if seen != list(range(plan.shards)):
        missing = sorted(set(range(plan.shards)) - set(seen))
        raise UsageError(
            f"the plan has {plan.shards} shards but the reports are of shards {seen}"
            + (f" (missing {missing})" if missing else "")
            + ": materialize every shard of the plan"
        )
    return plan


def merge_shard_reports(
    parts: Sequence[ShardReport],
    db: DatabaseInventory,
    spec: ReconciliationSpec,
    lookup: KeyLookup,
    detail: MergeDetail | None = None,
) -> ReconciliationReport:
    """The K shard reports as one run's report: concatenated, re-judged where a unit's keys span
    shards (see the module's docstring), and sorted as the report sorts."""
    plan = _check_parts(parts)
    parts = sorted(parts, key=lambda p: p.shard)
    detail = detail if detail is not None else MergeDetail()
    first = parts[0].report
    findings = pd.concat([p.report.findings for p in parts], ignore_index=True)
    findings = _rejudge(findings, parts, plan, db, spec, lookup, detail)
    merged = ReconciliationReport(
        findings=sort_findings(findings),
        complete=all(p.report.complete for p in parts),
        reasons=sorted({r for p in parts for r in p.report.reasons}),
        bucket=first.bucket,
        scope=first.scope,
        objects_checked=sum(p.report.objects_checked for p in parts),
        rows_checked=first.rows_checked,
        generated_at=max(p.report.generated_at for p in parts),
        options=first.options,
        timings={
            "list_seconds": sum(p.report.timings.get("list_seconds", 0.0) for p in parts),
            "read_seconds": first.timings.get("read_seconds", 0.0),
            "slowest_shard_seconds": max(p.report.timings.get("total_seconds", 0.0) for p in parts),
        },
        table_rows=first.table_rows,
        storage_source=first.storage_source,
        storage_as_of=min(
            (p.report.storage_as_of for p in parts if p.report.storage_as_of is not None),
            default=None,
        ),
    )
    return merged


def _spanning_classes(
    refs: pd.DataFrame, variants: pd.DataFrame, plan: ShardPlan
) -> tuple[set[str], pd.DataFrame]:
    """The normal forms whose members span shards, closed over the references linking two
    forms; and the references (with their forms and shards) to re-judge."""
    refs = refs.loc[refs["ours"] & refs["present"] & refs["key"].notna()].copy()
    refs["key_shard"] = plan.shard_of(refs["key"])
    refs["alt_shard"] = np.where(
        refs["alternative"].notna(), plan.shard_of(refs["alternative"]), -1
    )
    refs["key_form"] = normalized_array(refs["key"]).to_numpy(zero_copy_only=False)
    alt_form = normalized_array(refs["alternative"]).to_numpy(zero_copy_only=False)
    refs["alt_form"] = pd.Series(alt_form, index=refs.index, dtype="object").where(
        refs["alternative"].notna(), None
    )
    members = pd.concat(
        [
            pd.DataFrame({"form": refs["key_form"], "shard": refs["key_shard"]}),
            pd.DataFrame({"form": refs["alt_form"], "shard": refs["alt_shard"]}).loc[
                refs["alternative"].notna()
            ],
            pd.DataFrame({"form": variants["form"], "shard": variants["shard"]}),
        ],
        ignore_index=True,
    )
    spread = members.groupby("form")["shard"].nunique()
    forms = set(spread.index[spread > 1])
    crossing = refs["alternative"].notna() & (refs["alt_shard"] != refs["key_shard"])
    forms |= set(refs.loc[crossing, "key_form"]) | set(refs.loc[crossing, "alt_form"])
    while True:
        touched = refs["key_form"].isin(forms) | refs["alt_form"].isin(forms)
        grown = (
            forms | set(refs.loc[touched, "key_form"]) | set(refs.loc[touched, "alt_form"].dropna())
        )
        if grown == forms:
            return forms, refs.loc[touched]
        forms = grown


def _rejudge(
    findings: pd.DataFrame,
    parts: Sequence[ShardReport],
    plan: ShardPlan,
    db: DatabaseInventory,
    spec: ReconciliationSpec,
    lookup: KeyLookup,
    detail: MergeDetail,
) -> pd.DataFrame:
    first = parts[0]
    variants = pd.concat([p.variants.assign(shard=p.shard) for p in parts], ignore_index=True)
    variants["form"] = normalized_array(variants["key"]).to_numpy(zero_copy_only=False)
    refs = _references(db, spec, first.report.bucket, first.backend)
    forms, affected = _spanning_classes(refs, variants, plan)
    if not forms:
        return findings
    detail.classes = len(forms)

    # The small world of those classes: every listed key of theirs (variants, and the database
    # spellings found in their shard's snapshot) and every row that names one.
    spellings = pd.concat([affected["key"], affected["alternative"]]).dropna().unique()
    wanted = pd.Series(spellings, dtype="object")
    by_shard = plan.shard_of(wanted)
    found = [variants.loc[variants["form"].isin(forms), OBJECT_SCHEMA.names]]
    for shard in sorted(set(by_shard.tolist())):
        keys = wanted[by_shard == shard].tolist()
        detail.lookups[int(shard)] = len(keys)
        found.append(lookup(int(shard), keys))
    objects = (
        pd.concat([f for f in found if not f.empty], ignore_index=True)
        if any(not f.empty for f in found)
        else OBJECT_SCHEMA.empty_table().to_pandas()
    )
    objects = objects.drop_duplicates("key").sort_values("key", kind="stable")
    objects = pa.Table.from_pandas(objects, schema=OBJECT_SCHEMA, preserve_index=False).to_pandas()

    tables: dict[str, pd.DataFrame] = {}
    for name, positions in affected.groupby("name")["position"]:
        tables[name] = db.tables[name].iloc[sorted(set(positions))].reset_index(drop=True)
    jobs = db.tables.get(PROCESSING_JOBS)
    if jobs is not None:
        tables[PROCESSING_JOBS] = jobs.loc[jobs["key"].isin(objects["key"])].reset_index(drop=True)
    mini_db = DatabaseInventory(tables=tables)

    units = set(zip(affected["table"], affected["column"], affected["row_id"].astype(str)))
    object_keys = set(objects["key"])
    uploads = findings["kind"].isin(UPLOAD_KINDS)
    refs_kind = ~uploads & ~findings["kind"].isin(PLAN_KINDS)
    unit_of = list(zip(findings["table"], findings["column"], findings["row_id"].astype(str)))
    drop = (refs_kind & pd.Series([u in units for u in unit_of], index=findings.index)) | (
        uploads & findings["key"].isin(object_keys)
    )
    detail.units = len(units) + int(objects["key"].nunique())

    owners = set(affected["key_shard"].tolist()) | set(plan.shard_of(objects["key"]).tolist())
    replacements = []
    for part in parts:
        if part.shard not in owners:
            continue
        report = part.report
        storage = StorageInventory(
            bucket=report.bucket,
            prefixes=[""],
            objects=objects,
            backend=part.backend,
            source=report.storage_source,
            snapshot_at=report.storage_as_of if report.storage_source != "listing" else None,
        )
        mini = diff_inventories(storage, mini_db, spec, _options_of(report)).findings
        owner = plan.shard_of(mini["key"]) == part.shard
        is_upload = mini["kind"].isin(UPLOAD_KINDS)
        mini_units = list(zip(mini["table"], mini["column"], mini["row_id"].astype(str)))
        is_unit = pd.Series([u in units for u in mini_units], index=mini.index)
        keep = owner & ((is_upload & mini["key"].isin(object_keys)) | (~is_upload & is_unit))
        keep &= ~mini["kind"].isin(PLAN_KINDS)
        replacements.append(mini.loc[keep])
    detail.replaced = int(drop.sum())
    kept = findings.loc[~drop]
    return pd.concat([kept, *replacements], ignore_index=True)
