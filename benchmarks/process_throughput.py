#!/usr/bin/env python
"""Processor throughput: pages/s and tiles/s for a multi-page PDF, local storage and moto's S3.

    python benchmarks/process_throughput.py [--pages 12] [--dpi 150] [--concurrency 1 8 16]

Makes a PDF of US-letter pages with drawn content (pdfium, offline), then times:
  - render+tile alone (pdfium render and pyvips dzsave to a temp dir, no storage, no database),
  - process_object end to end on a local storage directory and on moto's S3 server over HTTP
    (a fresh SQLite database and bucket each run), for each upload concurrency,
  - the no-op rerun on moto (state read only).
Every run is checked: all sheets complete and the documents row written.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
    "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
}
LETTER = (612.0, 792.0)


def _world(tmp: Path, name: str):
    import sqlalchemy as sa

    from integrity.schema import create_reference_schema

    engine = sa.create_engine(f"sqlite:///{tmp / (name + '.sqlite')}")
    create_reference_schema(engine)
    return engine


def _check(engine, pages: int) -> None:
    import sqlalchemy as sa

    with engine.connect() as conn:
        plan = conn.execute(sa.text("SELECT completed_pages, status FROM plans")).one()
        docs = conn.execute(sa.text("SELECT count(*) FROM documents")).scalar()
    assert tuple(plan) == (pages, "complete") and docs == 1, (plan, docs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=12)
    parser.add_argument("--dpi", type=float, default=150)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--json", type=Path, help="write the figures here as JSON")
    args = parser.parse_args()
    os.environ.update(ENV)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto logs every request
    logging.getLogger("urllib3").setLevel(logging.ERROR)

    from dagster_aws.s3 import S3Resource
    from moto.server import ThreadedMotoServer

    from integrity.processing import ProcessOptions, process_object
    from integrity.processing.render import deep_zoom, open_pdf
    from integrity.spec import default_spec
    from integrity.storage import LocalStorage, S3Storage
    from integrity_tests.pdfs import make_pdf

    spec = default_spec()
    data = make_pdf([LETTER] * args.pages)
    key = "documents/org-bench/plans/bench.pdf"
    figures: dict[str, object] = {"pages": args.pages, "dpi": args.dpi, "pdf_bytes": len(data)}
    print(f"{args.pages} letter pages at {args.dpi:g} dpi ({len(data):,} bytes of PDF)")

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        started = time.perf_counter()
        document = open_pdf(data, dpi=args.dpi, max_pixels=10**9, max_pages=10**6)
        tiles = 0
        for index in range(document.pages):
            sheet_dir = tmp / "alone" / str(index)
            sheet_dir.mkdir(parents=True)
            tiles += len(deep_zoom(document.render(index), "s", sheet_dir)) - 1
        document.close()
        seconds = time.perf_counter() - started
        figures["render_tile_alone"] = {"seconds": seconds, "tiles": tiles}
        print(
            f"render+tile alone:           {seconds:6.2f} s  {args.pages / seconds:6.1f} pages/s  "
            f"{tiles / seconds:7.0f} tiles/s  ({tiles} tiles)"
        )

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        runs = []
        try:
            for backend in ("local", "moto"):
                for concurrency in args.concurrency:
                    name = f"{backend}-{concurrency}-{uuid.uuid4().hex[:6]}"
                    engine = _world(tmp, name)
                    if backend == "local":
                        store = LocalStorage(tmp / name, bucket="bench")
                        (tmp / name).mkdir()
                    else:
                        client = S3Resource(
                            endpoint_url=f"http://{host}:{port}",
                            region_name="us-east-1",
                            max_pool_connections=max(10, concurrency),
                        ).get_client()
                        client.create_bucket(Bucket=name)
                        store = S3Storage(client, name)
                    store.put_bytes(key, data)
                    options = ProcessOptions(dpi=args.dpi, upload_concurrency=concurrency)
                    started = time.perf_counter()
                    result = process_object(
                        key, store=store, engine=engine, spec=spec, options=options
                    )
                    seconds = time.perf_counter() - started
                    _check(engine, args.pages)
                    run = {
                        "backend": backend,
                        "concurrency": concurrency,
                        "seconds": seconds,
                        "pages_per_s": args.pages / seconds,
                        "tiles_per_s": result.tiles_written / seconds,
                        "tiles": result.tiles_written,
                    }
                    if backend == "moto":
                        started = time.perf_counter()
                        again = process_object(
                            key, store=store, engine=engine, spec=spec, options=options
                        )
                        run["noop_seconds"] = time.perf_counter() - started
                        assert again.outcome == "already_processed" and again.objects_written == 0
                    runs.append(run)
                    noop = (
                        f"  no-op rerun {run['noop_seconds']:.3f} s"
                        if "noop_seconds" in run
                        else ""
                    )
                    print(
                        f"{backend:>5} concurrency {concurrency:>2}: {seconds:6.2f} s  "
                        f"{run['pages_per_s']:6.1f} pages/s  {run['tiles_per_s']:7.0f} tiles/s{noop}"
                    )
                    engine.dispose()
        finally:
            server.stop()
        figures["runs"] = runs
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
