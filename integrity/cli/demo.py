"""`integrity demo`: build the local demo, reconcile it, and say what to run next."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from integrity import connections, settings
from integrity.cli import reconcile
from integrity.cli.output import _completed, _emit
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
        # Through the module, so the one reconciliation step is the same object everywhere
        # (a name bound at import would keep whatever it was when this module first loaded).
        report = reconcile.run_reconciliation(
            LocalStorage(env.storage_dir, bucket=settings.DEMO_BUCKET),
            engine,
            default_spec(),
            DiffOptions(),
            progress=sys.stderr.isatty() and not args.json,
            limits=connections.engine_limits(conf),
        )
    finally:
        engine.dispose()
    remediation = reconcile.preview(report, RemediationOptions())
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
    from integrity.defs.demo_instance import closing_hints, materialise_demo

    overriding = [
        n
        for n in (settings.ENV_DB_URL, settings.ENV_STORAGE_DIR, settings.ENV_BUCKET)
        if conf.is_set(n)
    ]
    ui = materialise_demo(home, reset=env.built)
    print(closing_hints(home, ui, overriding=overriding), file=out, flush=True)
    _completed(report, remediation)
    return code
