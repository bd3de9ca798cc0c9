"""What every `integrity` command shares: the program name, exit codes, limits, one-line errors."""

from __future__ import annotations

import sys

from integrity.kinds import KINDS

PROG = "integrity"


EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INCOMPLETE = 0, 1, 2, 3


EXIT_STOPPED = 4  # --apply stopped: the re-check budget ran out; the applied batches stay


REPORT_SUFFIXES = (".csv", ".jsonl")


LIST_CONCURRENCY, RECHECK_CONCURRENCY = 8, 5


# Upper bounds of the count flags: a batch is one transaction and one statement's parameters
# (PostgreSQL takes at most 65,535), and a listing of runs is read at once.
MAX_BATCH_SIZE, MAX_LAST = 10_000, 100_000


# The finding kinds remediation acts on, from integrity.kinds (no pandas import for `--help`).
_ACTION_KINDS = KINDS.action_kinds


_MIN_AGE, _STUCK_AFTER = KINDS.age("min_age"), KINDS.age("stuck_after")


def _error(message: str, code: int) -> int:
    print(f"{PROG}: error: {_one_line(message)}", file=sys.stderr)
    return code


def _one_line(text: str) -> str:
    """A message as one line whatever values it quotes: newlines, tabs and terminal control
    characters (from a key, a path, a spec) are shown escaped."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def _count(n: int, noun: str) -> str:
    """ "1 finding", "2 findings"."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"
