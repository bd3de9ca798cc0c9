"""Worlds of millions of objects and rows, built vectorised and written straight to Parquet.

    from scale_world import build_world
    world = build_world(10_000_000, directory)   # objects.parquet + database/ in directory

The files are exactly the two inventory snapshots: `objects.parquet` is a StorageInventory
snapshot (OBJECT_SCHEMA with the inventory's metadata) and `database/` a DatabaseInventory
directory (`<name>.parquet` per table with canonical columns, plus inventory.json), so
`StorageInventory.load` and `DatabaseInventory.load` read them, and so does the Parquet diff.
End-to-end benchmarks reuse the builder to seed a database or an S3 Inventory report.

The layout follows the reference schema (default_spec): about 40% of the objects are document
uploads (one documents row and one job row each), 40% image originals and staged derivatives
(one images row per pair), 20% plan sheets (.dzi descriptors and their tiles; one plans row per
plan). About one row or object in 1,000 carries a planted fault of each kind, and `expected`
counts the findings the drift must produce. No Python object is made per key: keys are
assembled from Arrow arrays.
"""

from __future__ import annotations

import json
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

BUCKET = "scale-bucket"
HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
TS = pa.timestamp("us", tz="UTC")
FAULT_EVERY = 1_000


def hex_ids(rng: np.random.Generator, n: int, digits: int = 16) -> pa.Array:
    """n random hex strings of `digits` characters, without a Python string per value."""
    words = rng.integers(0, 2**63, size=n, dtype=np.int64).astype(np.uint64)
    shifts = np.arange(digits - 1, -1, -1, dtype=np.uint64) * np.uint64(4)
    nibbles = ((words[:, None] >> shifts[None, :]) & np.uint64(0xF)).astype(np.uint8)
    raw = HEX[nibbles].reshape(-1).tobytes()
    offsets = np.arange(0, (n + 1) * digits, digits, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets.tobytes()), pa.py_buffer(raw))


def numbered(prefix: str, values: np.ndarray, width: int) -> pa.Array:
    """prefix + zero-padded number, for each value."""
    digits = pc.utf8_lpad(pc.cast(pa.array(values), pa.string()), width=width, padding="0")
    return pc.binary_join_element_wise(prefix, digits, "")


def join(*parts: pa.Array | str) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


def timestamps(rng: np.random.Generator, now: datetime, n: int, days: tuple[int, int]) -> pa.Array:
    """n moments between days[1] and days[0] days before now."""
    now_us = int(now.timestamp() * 1_000_000)
    ago = rng.integers(days[0] * 86_400_000_000, days[1] * 86_400_000_000, size=n)
    return pa.array(now_us - ago, pa.int64()).cast(TS)


def write(path: Path, table: pa.Table, meta: dict | None = None) -> None:
    if meta is not None:
        table = table.replace_schema_metadata({b"integrity": json.dumps(meta)})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=256 * 1024)


@dataclass
class ScaleWorld:
    directory: Path
    objects: int
    rows: dict[str, int]
    expected: dict[str, int]
    now: datetime
    seconds: float
    tables: list[str] = field(default_factory=list)

    @property
    def storage_path(self) -> Path:
        return self.directory / "objects.parquet"

    @property
    def database_dir(self) -> Path:
        return self.directory / "database"

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


def _faults(n: int, rng: np.random.Generator) -> np.ndarray:
    """A fault class per item: 0 none, else 1..k, each in about one item of FAULT_EVERY."""
    codes = np.zeros(n, dtype=np.int8)
    picked = rng.random(n)
    for code in range(1, 9):
        lo = (code - 1) / FAULT_EVERY
        codes[(picked >= lo) & (picked < lo + 1 / FAULT_EVERY)] = code
    return codes


def build_world(
    n_objects: int,
    directory: str | Path,
    *,
    seed: int = 7,
    now: datetime | None = None,
    bucket: str = BUCKET,
) -> ScaleWorld:
    """Write a world of about n_objects objects and as many rows into directory (the rows'
    virtual-hosted URLs name `bucket`)."""
    started = time.perf_counter()
    directory = Path(directory)
    rng = np.random.default_rng(seed)
    now = now or datetime.now(timezone.utc).replace(microsecond=0)
    expected = dict.fromkeys(
        (
            "orphan_object",
            "stuck_job",
            "missing_original",
            "missing_staged",
            "progress_behind",
            "foreign_reference",
            "normalization_mismatch",
            "invalid_reference",
        ),
        0,
    )
    n_orgs = max(2, n_objects // 2_000)
    object_parts: list[pa.Table] = []

    def add_objects(keys: pa.Array) -> None:
        n = len(keys)
        object_parts.append(
            pa.table(
                {
                    "key": keys,
                    "size": pa.array(rng.integers(1_000, 5_000_000, size=n), pa.int64()),
                    "etag": hex_ids(rng, n, 32),
                    "last_modified": timestamps(rng, now, n, (2, 400)),
                }
            )
        )

    # -- uploads: documents/{org}/{yyyy}/{hex}.pdf, a documents row and a job row each
    n_docs = int(n_objects * 0.40)
    org = numbered("org-", rng.integers(0, n_orgs, size=n_docs), 6)
    keys = join("documents/", org, "/2025/", hex_ids(rng, n_docs), ".pdf")
    fault = _faults(n_docs, rng)
    # 1 orphan, no job; 2 orphan, job failed; 3 orphan, job not_started; 4 stuck job (no row);
    # 5 missing original (row, no object); 6 reference as a virtual-hosted URL (found);
    # 7 stored NFD, recorded NFC (normalisation mismatch); 8 another bucket's reference.
    nfd = fault == 7
    if nfd.any():
        # The key gains an accented name whose NFD and NFC spellings differ.
        accented = pc.binary_join_element_wise(
            pc.filter(keys, pa.array(nfd)), unicodedata.normalize("NFD", "-résumé"), ""
        )
        nfc = pc.utf8_normalize(accented, form="NFC")
        keys_list = keys.to_numpy(zero_copy_only=False)
        stored = keys_list.copy()
        recorded = keys_list.copy()
        stored[nfd] = accented.to_numpy(zero_copy_only=False)
        recorded[nfd] = nfc.to_numpy(zero_copy_only=False)
        stored_keys, recorded_keys = pa.array(stored, pa.string()), pa.array(recorded, pa.string())
    else:
        stored_keys = recorded_keys = keys
    listed = fault != 5
    add_objects(pc.filter(stored_keys, pa.array(listed)))
    has_row = ~np.isin(fault, (1, 2, 3, 4))
    reference = recorded_keys
    url = fault == 6
    reference = pc.if_else(
        pa.array(url), join(f"https://{bucket}.s3.amazonaws.com/", recorded_keys), reference
    )
    reference = pc.if_else(pa.array(fault == 8), join("s3://other-bucket/", keys), reference)
    created = timestamps(rng, now, n_docs, (3, 400))
    doc_rows = pa.table(
        {
            "row_id": numbered("doc-", np.arange(n_docs), 10),
            "tenant": org,
            "status": pa.array(np.full(n_docs, "complete", dtype=object), pa.string()),
            "updated_at": created,
            "r2_key": reference,
        }
    ).filter(pa.array(has_row))
    job_status = np.full(n_docs, "complete", dtype=object)
    job_status[fault == 2] = "failed"
    job_status[fault == 3] = "not_started"
    job_status[fault == 4] = "processing"
    has_job = fault != 1
    jobs = pa.table(
        {
            "key": stored_keys,
            "status": pa.array(job_status, pa.string()),
            "started_at": created,
            "updated_at": created,
        }
    ).filter(pa.array(has_job))
    expected["orphan_object"] += int(np.isin(fault, (1, 2, 3)).sum())
    expected["stuck_job"] += int((fault == 4).sum())
    expected["missing_original"] += int((fault == 5).sum())
    expected["normalization_mismatch"] += int(nfd.sum())
    expected["foreign_reference"] += int((fault == 8).sum())

    # -- images: images/{project}/{hex}.jpg and staged/{project}/{hex}.webp, a row per pair
    n_images = int(n_objects * 0.20)
    project = numbered("prj-", rng.integers(0, max(2, n_objects // 1_000), size=n_images), 6)
    name = hex_ids(rng, n_images)
    original = join("images/", project, "/", name, ".jpg")
    staged = join("staged/", project, "/", name, ".webp")
    fault = _faults(n_images, rng)
    # 1 original missing; 2 staged missing while ready; 3 staged missing while processing
    # (not judged: staged is required only when ready); 4 an unparseable reference.
    add_objects(pc.filter(original, pa.array(fault != 1)))
    add_objects(pc.filter(staged, pa.array(~np.isin(fault, (2, 3)))))
    status = np.full(n_images, "ready", dtype=object)
    status[fault == 3] = "processing"
    original_ref = pc.if_else(pa.array(fault == 4), pa.scalar("https://[bad/x.jpg"), original)
    images = pa.table(
        {
            "row_id": numbered("img-", np.arange(n_images), 10),
            "tenant": project,
            "status": pa.array(status, pa.string()),
            "updated_at": timestamps(rng, now, n_images, (3, 400)),
            "original_url": original_ref,
            "staged_url": staged,
        }
    )
    expected["missing_original"] += int((fault == 1).sum())
    expected["missing_staged"] += int((fault == 2).sum())
    expected["invalid_reference"] += int((fault == 4).sum())

    # -- plan sheets: organizations/{org}/projects/{project}/plans/{plan}/sheets/{n}.dzi + tiles
    n_sheet_objects = n_objects - sum(len(t) for t in object_parts)
    per_plan = 20  # 10 sheets, each a .dzi and one tile
    n_plans = max(1, n_sheet_objects // per_plan)
    plan_ids = numbered("plan-", np.arange(n_plans), 9)
    plan_org = numbered("org-", rng.integers(0, n_orgs, size=n_plans), 6)
    plan_project = numbered("prj-", rng.integers(0, max(2, n_objects // 1_000), size=n_plans), 6)
    sheet = np.tile(np.arange(per_plan // 2), n_plans)
    which = np.repeat(np.arange(n_plans), per_plan // 2)
    base = join(
        "organizations/",
        pc.take(plan_org, which),
        "/projects/",
        pc.take(plan_project, which),
        "/plans/",
        pc.take(plan_ids, which),
        "/sheets/",
        numbered("s", sheet, 3),
    )
    add_objects(pa.concat_arrays([join(base, ".dzi"), join(base, "_files/0/0_0.jpg")]))
    completed = np.full(n_plans, per_plan // 2, dtype=np.int64)
    behind = rng.random(n_plans) < 0.01
    completed[behind] = 3
    plans = pa.table(
        {
            "row_id": plan_ids,
            "tenant": plan_org,
            "status": pa.array(np.full(n_plans, "processing", dtype=object), pa.string()),
            "completed": pa.array(completed, pa.int64()),
            "total": pa.array(np.full(n_plans, per_plan // 2, dtype=np.int64), pa.int64()),
            "updated_at": timestamps(rng, now, n_plans, (3, 400)),
            "project": plan_project,
        }
    )
    expected["progress_behind"] += int(behind.sum())

    objects = pa.concat_tables(object_parts)
    storage_meta = {
        "bucket": bucket,
        "backend": "s3",
        "prefixes": [""],
        "complete": True,
        "errors": [],
        "requests": 0,
        "seconds": 0.0,
        "listed_at": now.isoformat(),
        "source": "listing",
        "snapshot_at": None,
    }
    write(directory / "objects.parquet", objects, storage_meta)
    tables = {"documents": doc_rows, "images": images, "__jobs__": jobs, "__plans__": plans}
    for table_name, table in tables.items():
        write(directory / "database" / f"{table_name}.parquet", table, {})
    (directory / "database" / "inventory.json").write_text(
        json.dumps(
            {
                "tables": sorted(tables),
                "complete": True,
                "errors": [],
                "seconds": 0.0,
                "read_at": now.isoformat(),
            }
        )
    )
    return ScaleWorld(
        directory=directory,
        objects=len(objects),
        rows={name: len(t) for name, t in tables.items()},
        expected=expected,
        now=now,
        seconds=time.perf_counter() - started,
        tables=sorted(tables),
    )


REFERENCE_TABLES = {
    # world table -> (reference schema table, {world column: schema column})
    "documents": ("documents", {"row_id": "id", "tenant": "organization_id"}),
    "images": ("images", {"row_id": "id", "tenant": "project_id"}),
    "__jobs__": ("processing_jobs", {"key": "object_key"}),
    "__plans__": (
        "plans",
        {
            "row_id": "plan_id",
            "tenant": "organization_id",
            "project": "project_id",
            "completed": "completed_pages",
            "total": "total_pages",
        },
    ),
}


def reference_tables(directory: str | Path) -> Iterator[tuple[str, pa.Table]]:
    """The world's rows as the reference schema's tables (integrity/schema.py): its column
    names, the columns the world leaves out, INTEGER page counts and naive UTC timestamps."""
    for name, (table, names) in REFERENCE_TABLES.items():
        data = pq.read_table(Path(directory) / "database" / f"{name}.parquet")
        data = data.rename_columns([names.get(c, c) for c in data.column_names])
        if table == "documents":
            data = data.append_column("created_at", data.column("updated_at"))
        if table == "processing_jobs":
            data = data.append_column("attempts", pa.array([0] * data.num_rows, pa.int32()))
        if table == "plans" and "project_id" not in data.column_names:
            data = data.append_column("project_id", data.column("organization_id"))
        for column in data.column_names:
            index = data.column_names.index(column)
            if column in ("completed_pages", "total_pages"):  # INTEGER columns
                data = data.set_column(index, column, data.column(column).cast(pa.int32()))
            if pa.types.is_timestamp(data.schema.field(column).type):
                # the reference schema's columns are naive UTC timestamps
                data = data.set_column(index, column, data.column(column).cast(pa.timestamp("us")))
        yield table, data


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    world = build_world(args.objects, args.out, seed=args.seed)
    print(
        json.dumps(
            {
                "objects": world.objects,
                "rows": world.rows,
                "expected": world.expected,
                "seconds": round(world.seconds, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
