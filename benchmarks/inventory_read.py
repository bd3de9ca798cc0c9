"""Write an S3 Inventory report of N keys in AWS's layout (vectorised) and read it back.

    python benchmarks/inventory_read.py --keys 1000000 --formats CSV Parquet --out results.json

Measures, per format: the time to write the report (integrity_tests.inventory_reports), the
time to resolve it and stream its record batches (verified MD5s included) and the reader's
keys/s, plus the process's peak RSS. The batches are counted, not collected: this is the
reader alone, as the out-of-core engine consumes it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from integrity.inventory.reports import open_report  # noqa: E402
from integrity_tests.inventory_reports import (  # noqa: E402
    DirectoryDestination,
    objects_table,
    write_report,
)


def keys(n: int) -> pa.Array:
    """Keys like documents/org-17/0001234567 report v2.pdf (a space and a '+' to decode)."""
    numbers = pa.array(np.arange(n, dtype=np.int64)).cast(pa.string())
    orgs = pa.array(np.arange(n, dtype=np.int64) % 100).cast(pa.string())
    return pc.binary_join_element_wise(
        "documents/org-", orgs, "/", pc.utf8_lpad(numbers, 10, "0"), " report+v2.pdf", ""
    )


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--formats", nargs="+", default=["CSV", "Parquet", "ORC"])
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = {"keys": args.keys, "files": args.files, "load": os.getloadavg(), "runs": []}
    table = objects_table(keys(args.keys), source_bucket="bench")
    for fmt in args.formats:
        root = Path(tempfile.mkdtemp(prefix="inventory-bench-"))
        try:
            started = time.perf_counter()
            written = write_report(
                DirectoryDestination(root),
                table,
                source_bucket="bench",
                created_at=datetime.now(timezone.utc),
                fmt=fmt,
                files=args.files,
            )
            write_seconds = time.perf_counter() - started
            size = sum(Path(root, *k.split("/")).stat().st_size for k in written.data_keys)
            started = time.perf_counter()
            report = open_report(written.destination)
            rows = sum(b.num_rows for b in report.batches())
            read_seconds = time.perf_counter() - started
            assert rows == args.keys, rows
            run = {
                "format": fmt,
                "write_seconds": round(write_seconds, 2),
                "data_bytes": size,
                "read_seconds": round(read_seconds, 2),
                "keys_per_second": round(rows / read_seconds),
                "peak_rss_mb": round(peak_rss_mb()),
                "load_after": os.getloadavg(),
            }
            results["runs"].append(run)
            print(json.dumps(run), flush=True)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
