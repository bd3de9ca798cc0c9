#!/usr/bin/env python
"""Storage faults between integrity and moto's S3 server: what a reconciliation and an apply do
when 10% or 100% of the store's answers are 503s, resets, cut streams or short bodies.

    python benchmarks/reliability_faults.py                        # ~5,000 objects, ~1,150 findings
    python benchmarks/reliability_faults.py --rows 2000 --json faults.json

The world is remediate_throughput.py's (missing originals and staged copies, orphan uploads,
stuck jobs, plans behind their descriptors, controls), written into moto's backend in this
process; every read goes over HTTP through integrity_tests.flaky_proxy.FlakyProxy. The rows
live in a SQLite file; each apply runs on a fresh copy of it.

Per fault (503, reset, cut, short) and rate (10%, 100%):

  reconcile   integrity.reconcile.reconcile through the proxy, with the fault on listings and
              object HEADs (at 10% on the bucket HEAD too; at 100% the bucket HEAD is left
              alone, or the run stops at its preflight and there is no report to look at).
              Its findings are compared with a reconciliation without faults.
  apply       remediate(dry_run=False, force=True) of that report, through the proxy.
  re-check    the report without faults applied through the proxy: every re-check HEAD meets
              the fault. Its writes are compared with an apply without faults.

Writes are the audit records and queue entries an apply leaves, and the reference rows that
differ from the seeded ones. Retries: integrity's own (S3Storage, 5 attempts) with the backoff
shortened (--base-delay, 10 ms) so that the 100% rows end in seconds; boto3's own retries are
off, so every fault reaches integrity's retry. A real client also has boto3's retries, which
only makes a 10% fault rarer still.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import remediate_throughput as world_of  # noqa: E402 - the world the remediation benchmark uses

RATES = (0.10, 1.0)


def _store(endpoint: str, args: argparse.Namespace) -> Any:
    from dagster_aws.s3 import S3Resource

    from integrity.storage import S3Storage

    client = S3Resource(endpoint_url=endpoint, region_name="us-east-1", max_attempts=1).get_client()
    return S3Storage(
        client,
        world_of.BUCKET,
        page_size=args.page_size,
        attempts=args.attempts,
        base_delay=args.base_delay,
    )


def _sorted_findings(report: Any) -> Any:
    return report.findings.sort_values(["kind", "table", "row_id", "key"]).reset_index(drop=True)


def _written(engine: Any) -> dict[str, list[tuple]]:
    """Audit records and queue entries, without run ids and times."""
    import sqlalchemy as sa

    from integrity.remediation.ledger import audit, ledger_exists, queue

    with engine.connect() as conn:
        if not ledger_exists(conn):
            return {"audit": [], "queue": []}
        records = conn.execute(
            sa.select(audit.c.action, audit.c.table_name, audit.c.row_key, audit.c.object_key)
        )
        entries = conn.execute(sa.select(queue.c.object_key, queue.c.reason, queue.c.state))
        return {"audit": sorted(map(tuple, records)), "queue": sorted(map(tuple, entries))}


class Databases:
    """The seeded SQLite file, and a fresh copy of it for every apply."""

    def __init__(self, workdir: Path, world: dict[str, Any]) -> None:
        import sqlalchemy as sa

        from integrity.schema import create_reference_schema

        self.workdir = workdir
        self.seeded = workdir / "seeded.sqlite"
        engine = sa.create_engine(f"sqlite:///{self.seeded}")
        create_reference_schema(engine)
        world_of.seed_database(engine, world)
        self.before = world_of.dump(engine)
        engine.dispose()
        self.copies = 0

    def fresh(self) -> Any:
        import sqlalchemy as sa

        self.copies += 1
        path = self.workdir / f"copy-{self.copies}.sqlite"
        shutil.copyfile(self.seeded, path)
        return sa.create_engine(f"sqlite:///{path}")


def _apply(report: Any, db: Databases, store: Any, concurrency: int) -> dict[str, Any]:
    """Apply with writes on, to a fresh copy; what happened and what was written."""
    from integrity.remediation import RemediationOptions, remediate
    from integrity.spec import default_spec

    options = RemediationOptions(dry_run=False, force=True, concurrency=concurrency)
    engine = db.fresh()
    started = time.perf_counter()
    out: dict[str, Any] = {}
    try:
        result = remediate(
            report,
            engine,
            default_spec(),
            store,
            options,
            allow_writes=True,
        )
        out["outcome"] = "completed"
        out["updated"] = result.updated
        out["unverified"] = result.counts["skipped_unverified"]
        out["counts"] = {k: v for k, v in result.counts.items() if v}
    except Exception as exc:  # noqa: BLE001 - the outcome is what is measured
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        out["outcome"] = f"{type(exc).__name__}: {first_line}"[:160]
    out["seconds"] = round(time.perf_counter() - started, 2)
    written = _written(engine)
    out["audit"] = len(written["audit"])
    out["queue"] = len(written["queue"])
    out["rows_changed"] = sum(world_of.dump_difference(world_of.dump(engine), db.before).values())
    out["_written"] = written
    engine.dispose()
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    for name, value in world_of.AWS_ENV.items():
        os.environ[name] = value
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's server logs each request
    from moto.server import ThreadedMotoServer

    from integrity.diff import DiffOptions
    from integrity.reconcile import reconcile
    from integrity.spec import default_spec
    from integrity_tests.flaky_proxy import FAULTS, FlakyProxy

    base = datetime.now(timezone.utc)
    world = world_of.build_world(args.rows, args.healthy, args.seed, base)
    sizes = world_of.world_sizes(world)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    workdir = Path(tempfile.mkdtemp(prefix="reliability-faults-"))
    try:
        direct = _store(endpoint, args)
        direct.client.create_bucket(Bucket=world_of.BUCKET)
        world_of.seed_moto(world, world_of.BUCKET, base)
        db = Databases(workdir, world)
        spec = default_spec()

        def reconcile_with(store: Any) -> tuple[Any, float]:
            engine = db.fresh()
            started = time.perf_counter()
            report = reconcile(store, engine, spec, DiffOptions(now=base + world_of.LATER))
            engine.dispose()
            return report, time.perf_counter() - started

        expected, seconds = reconcile_with(direct)
        findings = _sorted_findings(expected)
        baseline_apply = _apply(expected, db, direct, args.concurrency)
        baseline = {
            "complete": expected.complete,
            "findings": len(expected.findings),
            "by_kind": {k: v for k, v in expected.counts().items() if v},
            "as_planted": expected.counts() == world["expected_findings"],
            "reconcile_seconds": round(seconds, 2),
            "apply": {k: v for k, v in baseline_apply.items() if k != "_written"},
        }
        rows = []
        for fault in args.faults or FAULTS:
            for rate in RATES:
                on = ("list", "head", "bucket") if rate < 1 else ("list", "head")
                row: dict[str, Any] = {"fault": fault, "rate": rate}
                with FlakyProxy(endpoint) as proxy:
                    proxy.inject(fault, rate, on=on, seed=args.seed)
                    faulty = _store(proxy.endpoint, args)
                    report, seconds = reconcile_with(faulty)
                    row["reconcile"] = {
                        "complete": report.complete,
                        "reasons": len(report.reasons),
                        "first_reason": report.reasons[0][:120] if report.reasons else None,
                        "findings": len(report.findings),
                        "identical": report.complete and _sorted_findings(report).equals(findings),
                        "seconds": round(seconds, 2),
                        "requests": dict(proxy.requests),
                        "faulted": dict(proxy.faulted),
                    }
                    proxy.requests.clear()
                    proxy.faulted.clear()
                    applied = _apply(report, db, faulty, args.concurrency)
                    applied["same_writes"] = applied.pop("_written") == baseline_apply["_written"]
                    row["apply"] = applied
                    proxy.requests.clear()
                    proxy.faulted.clear()
                    rechecked = _apply(expected, db, faulty, args.concurrency)
                    rechecked["same_writes"] = (
                        rechecked.pop("_written") == baseline_apply["_written"]
                    )
                    rechecked["requests"] = dict(proxy.requests)
                    rechecked["faulted"] = dict(proxy.faulted)
                    row["recheck"] = rechecked
                rows.append(row)
                print_row(row, flush=True)
        return {
            "world": sizes,
            "findings_planted": world["expected_findings"],
            "attempts": args.attempts,
            "page_size": args.page_size,
            "base_delay": args.base_delay,
            "concurrency": args.concurrency,
            "baseline": baseline,
            "rows": rows,
        }
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


HEADER = (
    f"{'fault':<6} {'rate':>5} | {'report':<10} {'findings':>8} {'same':>4} {'faulted':>11}"
    f" {'s':>5} | {'apply it':<20} {'writes':>6} | {'re-check':<26} {'faulted':>11}"
    f" {'writes':>6} {'same':>4} {'s':>5}"
)


def _writes(applied: dict[str, Any]) -> int:
    return applied["audit"] + applied["queue"]


def _outcome(applied: dict[str, Any]) -> str:
    outcome = applied["outcome"]
    if outcome == "completed":
        return f"completed, {applied['unverified']} unverified"
    if outcome.startswith("RemediationRefused") and "incomplete" in outcome:
        return "refused: incomplete"
    return outcome


def _share(faulted: dict[str, int], requests: dict[str, int], kinds: tuple[str, ...]) -> str:
    return f"{sum(faulted.get(k, 0) for k in kinds)}/{sum(requests.get(k, 0) for k in kinds)}"


def print_row(row: dict[str, Any], flush: bool = False) -> None:
    rec, app, chk = row["reconcile"], row["apply"], row["recheck"]
    print(
        f"{row['fault']:<6} {row['rate']:>5.0%} | "
        f"{'complete' if rec['complete'] else 'incomplete':<10} {rec['findings']:>8} "
        f"{'yes' if rec['identical'] else 'no':>4} "
        f"{_share(rec['faulted'], rec['requests'], ('list', 'head', 'bucket')):>11} "
        f"{rec['seconds']:>5.1f} | "
        f"{_outcome(app)[:20]:<20} {_writes(app):>6} | "
        f"{_outcome(chk)[:26]:<26} {_share(chk['faulted'], chk['requests'], ('head',)):>11} "
        f"{_writes(chk):>6} {'yes' if chk['same_writes'] else 'no':>4} {chk['seconds']:>5.1f}",
        flush=flush,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000, help="rows with drift (N)")
    parser.add_argument("--healthy", type=int, default=3000, help="rows without drift")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--faults", type=lambda v: v.split(","), default=None)
    parser.add_argument("--attempts", type=int, default=5, help="S3Storage attempts per request")
    parser.add_argument("--base-delay", type=float, default=0.01, help="backoff base, seconds")
    parser.add_argument(
        "--page-size", type=int, default=100, help="keys per listing page (S3's most is 1,000)"
    )
    parser.add_argument("--concurrency", type=int, default=5, help="re-check HEADs in flight")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    print(HEADER, flush=True)
    results = run(args)
    base = results["baseline"]
    print(
        f"\nworld: {results['world']}; without faults: {base['findings']} findings "
        f"({'as planted' if base['as_planted'] else 'NOT as planted'}), reconcile "
        f"{base['reconcile_seconds']} s; apply {base['apply']['outcome']}, "
        f"{base['apply']['updated']} rows updated, {base['apply']['audit']} audit records, "
        f"{base['apply']['queue']} queue entries, {base['apply']['seconds']} s"
    )
    print(
        "report: the reconciliation through the faults (same: its findings equal those "
        "without faults; faulted: requests faulted / sent, retries included); apply it: that "
        "report applied; re-check: the report without faults applied through the faults "
        "(faulted: re-check HEADs faulted / sent); writes: audit records + queue entries "
        "(same: equal to the apply without faults)"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
