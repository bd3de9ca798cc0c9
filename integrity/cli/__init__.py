"""The `integrity` command: reconciliation from a terminal (a dry run unless --apply), rollback
of a remediation run, and the demo.

Every failure a user can cause (a bad flag, a bad duration, an unreachable database, a missing
bucket, a spec error, a refused remediation) ends with one line on stderr and a non-zero exit,
never a traceback. Exit codes: 0 complete report, 3 incomplete report (with --apply: refused,
nothing changed), 4 --apply stopped because the storage re-checks ran out of their time budget
(the batches before stay applied), 2 usage error (a bad flag, environment value or spec), 1 any
other error (remediation refused by the missing opt-in or the circuit breaker, among others). A
run that finishes ends with one structured JSON log line on stderr ("msg": "reconcile: completed" or "rollback: completed")
carrying its counts.
Heavy imports (pandas, SQLAlchemy, boto3) happen inside the commands so `--help` is fast.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from integrity.cli.common import (
    EXIT_ERROR,
    EXIT_INCOMPLETE,
    EXIT_OK,
    EXIT_STOPPED,
    EXIT_USAGE,
    PROG,
    _error,
)
from integrity.cli.parser import build_parser
from integrity.errors import IntegrityError, SpecError, UsageError
from integrity.settings import Settings

__all__ = [
    "EXIT_ERROR",
    "EXIT_INCOMPLETE",
    "EXIT_OK",
    "EXIT_STOPPED",
    "EXIT_USAGE",
    "build_parser",
    "main",
]

# Each command's module, imported only when that command runs (so `--help` stays fast).
COMMANDS = {
    "reconcile": "integrity.cli.reconcile:cmd_reconcile",
    "demo": "integrity.cli.demo:cmd_demo",
    "rollback": "integrity.cli.rollback:cmd_rollback",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run, and turn every expected failure into one line and an exit code."""
    args = build_parser().parse_args(argv)
    conf = Settings.from_env()  # the one read of the environment for this command
    module, _, name = COMMANDS[args.command].partition(":")
    try:
        handler = getattr(importlib.import_module(module), name)
        return handler(args, conf)
    except (UsageError, SpecError) as exc:
        return _error(str(exc), EXIT_USAGE)
    except IntegrityError as exc:
        return _error(str(exc), EXIT_ERROR)
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_ERROR
    except Exception as exc:  # one line, never a traceback; INTEGRITY_DEBUG=1 shows it
        if conf.debug:
            raise
        return _error(_describe(exc), EXIT_ERROR)


def _describe(exc: Exception) -> str:
    """One readable line for errors that escaped the core's own messages."""
    import sqlalchemy as sa
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        return (
            "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or a profile"
        )
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return f"S3 request failed: {err.get('Code', 'error')} {err.get('Message', '')}".strip()
    if isinstance(exc, BotoCoreError):
        return f"S3 request failed: {exc}"
    if isinstance(exc, sa.exc.SQLAlchemyError):
        from integrity.inventory import db_error_reason

        reason = db_error_reason(exc)
        return f"database error: {reason}"
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    first = (str(exc).strip().splitlines() or [""])[0][:200]
    return f"unexpected {type(exc).__name__}" + (f": {first}" if first else "")


if __name__ == "__main__":
    sys.exit(main())
