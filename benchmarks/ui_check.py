"""Does the Dagster UI show the demo's planted drift with no clicks? Checked in headless Chromium.

    .venv/bin/integrity demo
    .venv/bin/python benchmarks/ui_check.py [--home .integrity] [--out /tmp/integrity-ui]

Starts `dagster-webserver` (the UI half of `dagster dev`) on a free port with
DAGSTER_HOME=<home>/dagster from the project root, opens the reconciliation_report asset page
and its checks tab in headless Chromium (playwright driving the system's chromium when
playwright's own browser is absent), and asserts what a newcomer should see at once: the asset
materialised, the whole-bucket partition `__all__` on the overview, its per-tenant table, the
detail column of the examples, and failed checks. Screenshots go to --out, never into the
repository. Exit 0 when every assertion holds, 1 otherwise (each failure printed on a line).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"dagster-webserver exited with {process.returncode} before serving")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"dagster-webserver did not serve {url} within {timeout:.0f} s")


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def page_text(page: object, url: str, wait_for_text: str, shot: Path) -> str:
    page.goto(url)  # type: ignore[attr-defined]
    # A missing text is not fatal here: the assertions below say what is missing.
    with contextlib.suppress(Exception):
        page.get_by_text(wait_for_text).first.wait_for(timeout=60_000)  # type: ignore[attr-defined]
    page.wait_for_timeout(1_500)  # type: ignore[attr-defined]  # late panels (checks, tables)
    page.screenshot(path=str(shot), full_page=True)  # type: ignore[attr-defined]
    return str(page.inner_text("body"))  # type: ignore[attr-defined]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", default=str(REPO_ROOT / ".integrity"))
    parser.add_argument("--out", default="/tmp/integrity-ui")
    args = parser.parse_args()
    home = Path(args.home).absolute()
    out = Path(args.out).absolute()
    if out == REPO_ROOT or REPO_ROOT in out.parents:
        raise SystemExit("--out: screenshots stay out of the repository")
    out.mkdir(parents=True, exist_ok=True)
    dagster_home = home / "dagster"
    if not (dagster_home / "dagster.yaml").is_file():
        raise SystemExit(f"{dagster_home} holds no instance: run `integrity demo` first")

    from playwright.sync_api import sync_playwright

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTEGRITY_")}
    env.update(DAGSTER_HOME=str(dagster_home), INTEGRITY_HOME=str(home))
    log = (out / "webserver.log").open("wb")
    started = time.perf_counter()
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "dagster-webserver"),
            "-w",
            str(REPO_ROOT / "workspace.yaml"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    failures: list[str] = []
    try:
        wait_for(f"{base}/server_info", process, START_TIMEOUT)
        served = time.perf_counter() - started
        with sync_playwright() as p:
            browser = p.chromium.launch(headless=True, executable_path=chromium_path())
            page = browser.new_page(viewport={"width": 1600, "height": 1200})
            overview = page_text(
                page,
                f"{base}/assets/reconciliation_report",
                "findings/total",
                out / "reconciliation_report-overview.png",
            )
            checks = page_text(
                page,
                f"{base}/assets/reconciliation_report?view=checks",
                "foreign_reference",
                out / "reconciliation_report-checks.png",
            )
            catalog = page_text(page, f"{base}/assets", "reconciliation_report", out / "assets.png")
            browser.close()
        expect = {
            "overview: materialised (not 'Never materialized')": "Never materialized"
            not in overview,
            "overview: metadata findings/total": "findings/total" in overview,
            "overview: the whole bucket __all__": "__all__" in overview,
            "overview: the per-tenant table (tenants)": "tenants" in overview,
            "overview: the examples' detail column": "detail" in overview,
            "checks: a failed check": "Failed" in checks,
            "checks: foreign_reference listed": "foreign_reference" in checks,
            "catalog: reconciliation_report listed": "reconciliation_report" in catalog,
        }
        failures = [name for name, ok in expect.items() if not ok]
        print(
            json.dumps(
                {
                    "served_after_seconds": round(served, 1),
                    "checks": {name: ok for name, ok in expect.items()},
                    "screenshots": sorted(str(p) for p in out.glob("*.png")),
                },
                indent=2,
            )
        )
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(process.pid, signal.SIGKILL)
        log.close()
    for name in failures:
        print(f"FAILED: {name}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
