"""The bounded poll of the bucket listing, for when notifications are not set up or get lost.

Each tick lists the watched prefixes from where the cursor left them, within page, time and
run budgets, and asks the database which keys of a first pass it already knows.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from integrity.database import table_clause
from integrity.errors import IntegrityError
from integrity.events.cursors import PrefixPass, WatchCursor
from integrity.events.messages import run_key
from integrity.inventory import minimal_prefixes
from integrity.spec import ReconciliationSpec
from integrity.storage.base import ListingFailed, ObjectStore

_IN_CHUNK = 1000


@dataclass(frozen=True)
class PollLimits:
    """Bounds of one tick: listing pages, seconds, objects requested; and the look-back."""

    pages: int = 20
    seconds: float = 20.0
    max_found: int = 500
    lookback: timedelta = timedelta(minutes=15)
    remember: int = 1_000  # run keys kept in the cursor (about 30 bytes each) for later passes


@dataclass(frozen=True)
class FoundObject:
    key: str
    etag: str
    size: int
    last_modified: datetime

    @property
    def run_key(self) -> str:
        return run_key(self.key, self.etag)

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.run_key.encode("utf-8", "surrogatepass")).hexdigest()[:16]


@dataclass
class PollResult:
    found: list[FoundObject]
    cursor: WatchCursor
    pages: int = 0
    listed: int = 0
    known: int = 0  # first-pass objects the database already had: not requested
    repeated: int = 0  # objects requested by an earlier tick, still inside the look-back
    completed: list[str] = field(default_factory=list)  # prefixes whose pass ended this tick
    stopped_by: str | None = None  # page budget | time budget | run limit
    error: str | None = None  # a listing that failed after its retries

    @property
    def in_progress(self) -> dict[str, PrefixPass]:
        return {p: s for p, s in self.cursor.prefixes.items() if s.started is not None}


KnownKeys = Callable[[list[str]], set[str]]


def _whole_second(value: datetime) -> datetime:
    return value.replace(microsecond=0)


def poll_new_objects(
    store: ObjectStore,
    prefixes: Sequence[str],
    cursor: WatchCursor,
    limits: PollLimits,
    *,
    now: datetime,
    known_keys: KnownKeys | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> PollResult:
    """List the watched prefixes from where the cursor left them, within the tick's limits.

    New objects are those of a first pass that `known_keys` (one call per listing page) does
    not know, and afterwards those modified since the previous pass began. The cursor returned
    continues a pass that ran out of budget; prefixes take turns going first.
    """
    watched = minimal_prefixes(prefixes)
    state = {p: replace(cursor.prefixes.get(p) or PrefixPass()) for p in watched}  # a copy
    recent = dict(cursor.recent)
    result = PollResult(found=[], cursor=WatchCursor(state, cursor.turn, recent))
    if not watched:
        return result
    deadline = clock() + limits.seconds
    first = cursor.turn % len(watched)
    order = watched[first:] + watched[:first]
    next_turn = (first + 1) % len(watched)

    def exhausted() -> str | None:
        if result.pages >= limits.pages:
            return "page budget"
        if clock() >= deadline:
            return "time budget"
        if len(result.found) >= limits.max_found:
            return "run limit"
        return None

    for position, prefix in enumerate(order):
        # every tick lists at least one page, however slow the machine: a pass always advances
        result.stopped_by = exhausted() if position else None
        if result.stopped_by:
            next_turn = (first + position) % len(watched)
            break
        progress = state[prefix]
        if progress.started is None:
            progress.started, progress.after, progress.pages = now, None, 0
        cutoff = None if progress.since is None else _whole_second(progress.since - limits.lookback)
        pages: Iterator[Any] = iter(store.list_pages(prefix, start_after=progress.after))
        finished = False
        try:
            while True:
                try:
                    page = next(pages)
                except StopIteration:
                    finished = True
                    break
                result.pages += 1
                progress.pages += 1
                result.listed += len(page)
                candidates = [
                    FoundObject(k, e.strip('"'), s, lm)
                    for k, e, s, lm in zip(page.keys, page.etags, page.sizes, page.last_modified)
                    if not k.endswith("/") and (cutoff is None or lm >= cutoff)
                ]
                if recent and candidates:
                    fresh = [c for c in candidates if c.digest not in recent]
                    result.repeated += len(candidates) - len(fresh)
                    candidates = fresh
                if progress.since is None and candidates and known_keys is not None:
                    known = known_keys([c.key for c in candidates])
                    for c in candidates:
                        if c.key in known:  # seen: the next pass need not ask again
                            recent[c.digest] = int(c.last_modified.timestamp())
                            result.known += 1
                    candidates = [c for c in candidates if c.key not in known]
                room = limits.max_found - len(result.found)
                if len(candidates) > room:
                    result.found.extend(candidates[:room])
                    progress.after = candidates[room - 1].key if room else progress.after
                    result.stopped_by = "run limit"
                    break
                result.found.extend(candidates)
                if page.keys:
                    progress.after = page.keys[-1]
                if page.truncated is False or (page.truncated is None and not page.keys):
                    finished = True  # the last page: no request needed to learn that
                    break
                result.stopped_by = exhausted()
                if result.stopped_by:
                    break
        except (ListingFailed, IntegrityError, OSError) as exc:
            result.error = str(exc)
            result.stopped_by = "listing failed"
        finally:
            close = getattr(pages, "close", None)
            if close is not None:
                close()
        if finished:
            progress.since, progress.started, progress.after, progress.pages = (
                progress.started,
                None,
                None,
                0,
            )
            result.completed.append(prefix)
        if result.stopped_by:
            next_turn = (first + position + 1) % len(watched)  # the others go first next tick
            break
    result.cursor.turn = next_turn
    _remember(result, limits)
    return result


def _remember(result: PollResult, limits: PollLimits) -> None:
    """Add this tick's requests to the cursor's memory; forget what can no longer come up."""
    recent = result.cursor.recent
    for found in result.found:
        recent[found.digest] = int(found.last_modified.timestamp())
    # an object is a candidate again only if modified after (its prefix's pass start, or the
    # previous one's) less the look-back: anything older can be forgotten
    starts = [p.since or p.started for p in result.cursor.prefixes.values()]
    starts = [s for s in starts if s is not None]
    if starts:
        threshold = int((min(starts) - limits.lookback).timestamp()) - 1
        for digest in [d for d, modified in recent.items() if modified < threshold]:
            del recent[digest]
    if len(recent) > limits.remember:
        keep = sorted(recent.items(), key=lambda item: item[1])[-limits.remember :]
        result.cursor.recent = dict(keep)


def known_upload_keys(
    conn: sa.Connection, spec: ReconciliationSpec, keys: Sequence[str]
) -> set[str]:
    """The keys the database already knows: a processed-table row names them, or their job has
    left the not-started state (processing, complete or failed; the nightly reconciliation looks
    after stuck and failed ones). One statement per call, for a listing page of keys."""
    keys = list(dict.fromkeys(keys))
    if not keys:
        return set()
    selects = []
    if spec.uploads is not None:
        table = spec.tables[spec.uploads.processed_table]
        column = spec.uploads.processed_column
        t = table_clause(table.table, [column])
        selects.append(
            sa.select(t.c[column].label("k")).where(
                t.c[column].in_(sa.bindparam("a", expanding=True))
            )
        )
    if spec.jobs is not None:
        jobs = spec.jobs
        j = table_clause(jobs.table, [jobs.key, jobs.status])
        selects.append(
            sa.select(j.c[jobs.key].label("k")).where(
                j.c[jobs.key].in_(sa.bindparam("b", expanding=True)),
                j.c[jobs.status] != jobs.not_started_status,
            )
        )
    if not selects:
        return set()
    statement = selects[0] if len(selects) == 1 else sa.union_all(*selects)
    found: set[str] = set()
    for start in range(0, len(keys), _IN_CHUNK):
        chunk = keys[start : start + _IN_CHUNK]
        params = {"a": chunk, "b": chunk}
        found.update(row[0] for row in conn.execute(statement, params))
    return found
