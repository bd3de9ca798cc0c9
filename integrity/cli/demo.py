"""`integrity demo`: build the local demo, reconcile it, and say what to run next."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from integrity import connections, settings
from integrity.cli.output import _completed, _emit
from integrity.cli.reconcile import preview, run_reconciliation
from integrity.errors import UsageError
from integrity.settings import Settings


def cmd_demo(args: argparse.Namespace, conf: Settings) -> int:
    """Build (or keep) the demo, reconcile it, and point at `dagster dev` and remediation."""
    from integrity import demo
    from integrity.diff import DiffOptions
    from integrity.inventory import safe_url
    from integrity.remediation.plan import RemediationOptions
    from integrity.spec import default_spec
    from integrity.storage.local import LocalStorage

    home = Path(args.home).expanduser().absolute() if args.home else conf.home
    if home.exists() and not home.is_dir():
        option = "--home" if args.home else settings.ENV_HOME if conf.home_set else "home"
        raise UsageError(f"{option}: {home} is not a directory")
    started = time.perf_counter()
    env = demo.build_demo(home, reset=not args.no_reset)
    built = time.perf_counter() - started
    engine = connections.make_engine(env.db_url, conf=conf)
    try:
        report = run_reconciliation(
            LocalStorage(env.storage_dir, bucket=settings.DEMO_BUCKET),
            engine,
            default_spec(),
            DiffOptions(),
            progress=sys.stderr.isatty() and not args.json,
            limits=connections.engine_limits(conf),
        )
    finally:
        engine.dispose()
    remediation = preview(report, RemediationOptions())
    out = sys.stderr if args.json else sys.stdout
    verb = "built" if env.built else "kept (--no-reset)"
    print(
        f"demo {verb} in {built:.1f} s: {env.objects:,} objects in {env.storage_dir}, "
        f"{env.rows:,} rows in {env.db_path}",
        file=out,
    )
    if not args.json:
        print()
    code = _emit(
        report,
        args,
        source=f"directory {env.storage_dir}",
        database=safe_url(env.db_url),
        remediation=remediation,
    )
    print(file=out)
    print(_dagster_hint(home, conf), file=out, flush=True)
    _completed(report, remediation)
    return code


def _program(name: str) -> str:
    """How to call one of this environment's programs from a fresh shell: its path (relative
    to the working directory when inside it) unless the shell already finds this very one."""
    path = Path(sys.executable).parent / name
    if not path.exists() or shutil.which(name) == str(path):
        return name
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _dagster_hint(home: Path, conf: Settings) -> str:
    """How to see the same demo in the UI and heal it, naming any environment that would point
    elsewhere."""
    dagster, integrity = _program("dagster"), _program("integrity")
    lines = [
        f"Now run `{dagster} dev` from the project root: the UI shows the same demo.",
        f"Heal it: review `{integrity} reconcile`, then `{settings.ENV_ALLOW_WRITES}=1 "
        f"{integrity} reconcile --apply` (docs/remediation.md).",
    ]
    if home != (Path.cwd() / ".integrity").absolute() and not (conf.home_set and conf.home == home):
        lines.append(
            f"  (set {settings.ENV_HOME}={home} first, since the demo is not in ./.integrity)"
        )
    overriding = [
        n
        for n in (settings.ENV_DB_URL, settings.ENV_STORAGE_DIR, settings.ENV_BUCKET)
        if conf.is_set(n)
    ]
    if overriding:
        lines.append(
            f"  (unset {', '.join(overriding)}: they point dagster dev away from the demo)"
        )
    return "\n".join(lines)
