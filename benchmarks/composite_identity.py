#!/usr/bin/env python
"""Composite row identities against single ones: reconcile, apply, a second apply and a rollback
of the same drift, timed on SQLite and PostgreSQL, with every step's effect checked.

    python benchmarks/composite_identity.py                        # 10 tenants x 2,000 rows, SQLite
    python benchmarks/composite_identity.py --postgres-url postgresql+psycopg://postgres@127.0.0.1/bench
    python benchmarks/composite_identity.py --tenants 20 --rows 1000 --json results.json

Two tables hold the same rows: `single_documents` (primary key id, ids unique across tenants,
spec `id: id`) and `tenant_documents` (primary key (tenant_id, id), every tenant numbering its
rows 1..N, spec `id: [tenant_id, id]`). Every row has the same status and updated_at, so a write
that matched on id alone would hit every tenant's row. A tenth of the rows' objects are missing
from a local storage directory.

Per database and table: reconcile (the findings must be exactly the missing rows, by identity),
apply (exactly those rows change, one audit record each), reconcile and apply again (nothing
changes), roll back (the table equals its state before the apply, byte for byte).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa  # noqa: E402

from integrity.diff import DiffOptions  # noqa: E402
from integrity.identity import encode  # noqa: E402
from integrity.reconcile import reconcile  # noqa: E402
from integrity.remediation import (  # noqa: E402
    RemediationOptions,
    ledger,  # noqa: E402
    remediate,
)
from integrity.remediation.rollback import rollback  # noqa: E402
from integrity.spec import parse_spec  # noqa: E402
from integrity.storage import LocalStorage  # noqa: E402

BASE = datetime(2026, 3, 1, 12, 0, 0)
SHAPES = {"single": ("single_documents", "id"), "composite": ("tenant_documents", None)}


def _tables() -> tuple[sa.MetaData, dict[str, sa.Table]]:
    md = sa.MetaData()

    def columns() -> list[sa.Column]:
        return [
            sa.Column("file_key", sa.Text, nullable=False),
            sa.Column("status", sa.Text, nullable=False),
            sa.Column("error", sa.Text),
            sa.Column("updated_at", sa.DateTime, nullable=False),
        ]

    single = sa.Table(
        "single_documents",
        md,
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("tenant_id", sa.Text, nullable=False),
        *columns(),
    )
    composite = sa.Table(
        "tenant_documents",
        md,
        sa.Column("tenant_id", sa.Text, primary_key=True),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        *columns(),
    )
    return md, {"single": single, "composite": composite}


def _spec(shape: str):
    table = SHAPES[shape][0]
    return parse_spec(
        {
            "tables": {
                table: {
                    "table": table,
                    "id": "id" if shape == "single" else ["tenant_id", "id"],
                    "tenant": "tenant_id",
                    "references": [{"column": "file_key"}],
                }
            },
            "uploads": None,
            "jobs": None,
            "plans": None,
        }
    )


def _dump(engine: sa.Engine, table: sa.Table) -> list[tuple[Any, ...]]:
    order = [table.c.tenant_id, table.c.id]
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.select(table).order_by(*order))]


def run(engine: sa.Engine, store: LocalStorage, shape: str, tenants: int, rows: int) -> dict:
    md, tables = _tables()
    table = tables[shape]
    ledger.metadata.drop_all(engine)
    md.drop_all(engine)
    md.create_all(engine)
    missing: set[str] = set()
    values = []
    for t in range(tenants):
        tenant = f"org-{t:03d}"
        for n in range(1, rows + 1):
            key = f"files/{tenant}/{n}.pdf"
            row_id = f"{tenant}-{n}" if shape == "single" else n
            identity = encode([row_id]) if shape == "single" else encode([tenant, n])
            if n % 10 == 0:
                missing.add(identity)
            values.append(
                {
                    "id": row_id,
                    "tenant_id": tenant,
                    "file_key": key,
                    "status": "complete",
                    "updated_at": BASE,
                }
            )
    with engine.begin() as conn:
        conn.execute(table.insert(), values)
    spec = _spec(shape)
    before = _dump(engine, table)
    figures: dict[str, Any] = {"shape": shape, "rows": len(values), "missing": len(missing)}

    started = time.perf_counter()
    report = reconcile(store, engine, spec, DiffOptions(now=BASE + timedelta(hours=2)))
    figures["reconcile_s"] = round(time.perf_counter() - started, 3)
    found = set(report.findings["row_id"])
    assert found == missing, f"{shape}: findings differ from the missing rows"

    options = RemediationOptions(dry_run=False, max_change_ratio=1.0, batch_size=100)
    started = time.perf_counter()
    result = remediate(report, engine, spec, store, options, allow_writes=True)
    figures["apply_s"] = round(time.perf_counter() - started, 3)
    figures["apply_rows_per_s"] = round(len(missing) / figures["apply_s"])
    assert result.counts["marked_error"] == len(missing) and result.counts["skipped_changed"] == 0
    after = _dump(engine, table)
    changed = [a for b, a in zip(before, after) if a != b]
    assert len(changed) == len(missing) and all(r[-3] == "error" for r in changed)
    with engine.connect() as conn:
        records = conn.execute(sa.select(ledger.audit.c.row_key)).scalars().all()
    assert sorted(records) == sorted(missing), f"{shape}: audit differs from the changed rows"

    started = time.perf_counter()
    again = reconcile(store, engine, spec, DiffOptions(now=BASE + timedelta(hours=3)))
    second = remediate(again, engine, spec, store, options, allow_writes=True)
    stale = remediate(report, engine, spec, store, options, allow_writes=True)
    figures["second_run_s"] = round(time.perf_counter() - started, 3)
    assert second.updated == 0 and stale.updated == 0
    assert stale.counts["skipped_changed"] == len(missing)
    assert _dump(engine, table) == after

    started = time.perf_counter()
    undo = rollback(engine, result.run_id, dry_run=False, allow_writes=True)
    figures["rollback_s"] = round(time.perf_counter() - started, 3)
    assert undo.counts["restored"] == len(missing)
    assert _dump(engine, table) == before, f"{shape}: rollback is not exact"
    figures["checks"] = "findings, apply, second run, stale report, rollback: all exact"
    ledger.metadata.drop_all(engine)
    md.drop_all(engine)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--rows", type=int, default=2000, help="rows per tenant")
    parser.add_argument("--postgres-url", help="also run on this (scratch) PostgreSQL database")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "media"
        store = LocalStorage(root)
        for t in range(args.tenants):
            for n in range(1, args.rows + 1):
                if n % 10:
                    store.put_bytes(f"files/org-{t:03d}/{n}.pdf", b"%PDF-1.4")
        urls = {"sqlite": f"sqlite:///{Path(tmp) / 'bench.sqlite'}"}
        if args.postgres_url:
            urls["postgresql"] = args.postgres_url
        for database, url in urls.items():
            engine = sa.create_engine(url)
            for shape in SHAPES:
                figures = {
                    "database": database,
                    **run(engine, store, shape, args.tenants, args.rows),
                }
                results.append(figures)
                print(json.dumps(figures))
            engine.dispose()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
