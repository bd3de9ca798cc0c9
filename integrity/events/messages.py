"""Object-created events, wherever they come from, as one record.

Three sources feed the event-driven path: bucket notifications on an SQS queue (the S3 format,
optionally wrapped by SNS, and the Cloudflare R2 format), remediation's re-queue (the
`integrity_queue` table and its SQS outbox), and a bounded poll of the bucket listing for when
notifications are not set up or get lost. This module parses and filters them, keeps the poll's
place between ticks, and wraps the few SQS calls the sensors make. The Dagster sensors in
`integrity.defs.event_sensors` only wire it in; nothing here imports Dagster.

Every trigger is an alarm clock, not an order: the processor looks at the state and decides,
so a duplicated, late or out-of-order event costs at most a run that does nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import unquote_plus

import sqlalchemy as sa

from integrity import settings
from integrity.database import table_clause
from integrity.durations import parse_duration
from integrity.errors import IntegrityError, QueueError, UsageError
from integrity.inventory import minimal_prefixes
from integrity.spec import ReconciliationSpec
from integrity.storage.base import ListingFailed, ObjectStore

MAX_KEY_BYTES = 1024
RUN_KEY_LIMIT = 200
SQS_BATCH = 10
_IN_CHUNK = 1000

S3_CREATED = "ObjectCreated:"
R2_CREATE_ACTIONS = frozenset({"PutObject", "CopyObject", "CompleteMultipartUpload"})
R2_CREATE_EVENT_TYPE = "object-create"


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class ObjectEvent:
    """One object event: which object, which version (etag), when and what happened."""

    bucket: str
    key: str
    size: int | None
    etag: str | None
    event_time: datetime | None
    event_name: str
    created: bool = True

    @property
    def run_key(self) -> str:
        return run_key(self.key, self.etag)


@dataclass(frozen=True)
class ParsedMessage:
    """What one queue message holds: its valid records, and why the rest could not be read."""

    format: str  # s3 | r2 | s3-test | requeue | "" (unreadable)
    events: tuple[ObjectEvent, ...] = ()
    errors: tuple[str, ...] = ()

    @property
    def malformed(self) -> bool:
        return bool(self.errors)

    @property
    def reason(self) -> str:
        return "; ".join(self.errors)


def run_key(key: str, etag: str | None) -> str:
    """`key@etag` (quotes stripped), hashed when long: one run per object version and trigger."""
    value = f"{key}@{(etag or '').strip(chr(34))}"
    if len(value) <= RUN_KEY_LIMIT:
        return value
    return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def key_problem(key: object) -> str | None:
    """Why a key cannot name an object we process, or None when it is fine."""
    if not isinstance(key, str):
        return "the object key is not a string"
    if not key:
        return "the object key is empty"
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        return "the object key is not valid UTF-8"
    if size > MAX_KEY_BYTES:
        return f"the object key is {size} bytes long (at most {MAX_KEY_BYTES})"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        return "the object key contains control characters"
    return None


def _parse_time(value: object) -> datetime | None:
    """An ISO 8601 event time (with Z or an offset); None when absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:  # Python 3.10 reads 3 or 6 fraction digits only
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[:digits][:6].ljust(6, '0')}{rest[digits:]}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _size(value: object) -> int | None | str:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return "object size is not a non-negative integer"
    return value


def _etag(value: object) -> str | None:
    if value is None:
        return None
    return value.strip('"') if isinstance(value, str) else ""


def _s3_record(record: object, where: str) -> ObjectEvent | str:
    if not isinstance(record, dict):
        return f"{where}: not a JSON object"
    name = record.get("eventName")
    if not isinstance(name, str) or not name:
        return f"{where}: missing eventName"
    s3 = record.get("s3")
    if not isinstance(s3, dict):
        return f"{where}: missing s3"
    bucket = (s3.get("bucket") or {}).get("name") if isinstance(s3.get("bucket"), dict) else None
    if not isinstance(bucket, str) or not bucket:
        return f"{where}: missing s3.bucket.name"
    obj = s3.get("object")
    if not isinstance(obj, dict) or "key" not in obj:
        return f"{where}: missing s3.object.key"
    raw = obj["key"]
    if not isinstance(raw, str):
        return f"{where}: s3.object.key is not a string"
    try:  # S3 URL-encodes keys in notifications, with '+' for a space
        key = unquote_plus(raw, errors="strict")
    except UnicodeDecodeError:
        return f"{where}: s3.object.key {raw[:80]!r} does not decode to UTF-8"
    problem = key_problem(key)
    if problem:
        return f"{where}: {problem}"
    size = _size(obj.get("size"))
    if isinstance(size, str):
        return f"{where}: s3.{size}"
    name = name.removeprefix("s3:")
    return ObjectEvent(
        bucket=bucket,
        key=key,
        size=size,
        etag=_etag(obj.get("eTag", obj.get("etag"))),
        event_time=_parse_time(record.get("eventTime")),
        event_name=name,
        created=name.startswith(S3_CREATED),
    )


def _r2_event(data: dict[str, Any]) -> ObjectEvent | str:
    bucket = data.get("bucket")
    if not isinstance(bucket, str) or not bucket:
        return "missing bucket"
    obj = data.get("object")
    if not isinstance(obj, dict) or "key" not in obj:
        return "missing object.key"
    key = obj["key"]  # R2 sends the key as it is, not URL-encoded
    problem = key_problem(key)
    if problem:
        return problem
    size = _size(obj.get("size"))
    if isinstance(size, str):
        return size
    action = data.get("action")
    event_type = data.get("eventType")
    name = action if isinstance(action, str) and action else event_type
    if not isinstance(name, str) or not name:
        return "missing action (or eventType)"
    return ObjectEvent(
        bucket=bucket,
        key=key,
        size=size,
        etag=_etag(obj.get("eTag", obj.get("etag"))),
        event_time=_parse_time(data.get("eventTime")),
        event_name=name,
        created=name in R2_CREATE_ACTIONS or name == R2_CREATE_EVENT_TYPE,
    )


def _load_json(body: object) -> tuple[Any, str | None]:
    if not isinstance(body, str):
        return None, "the message body is not text"
    try:
        return json.loads(body), None
    except json.JSONDecodeError as exc:
        return None, f"not JSON ({exc.msg} at character {exc.pos})"
    except (ValueError, RecursionError):
        return None, "not JSON"


def parse_notification(body: object, *, _unwrapped: bool = False) -> ParsedMessage:
    """Read a bucket notification: S3 (Records[]), its s3:TestEvent, SNS-wrapped S3, or R2.

    Never raises: what cannot be read is named in `errors`, one reason per bad record.
    """
    data, error = _load_json(body)
    if error:
        return ParsedMessage("", errors=(error,))
    if not isinstance(data, dict):
        return ParsedMessage("", errors=("not a JSON object",))
    if data.get("Type") == "Notification" and "Message" in data and not _unwrapped:
        inner = parse_notification(data["Message"], _unwrapped=True)
        return ParsedMessage(
            inner.format, inner.events, tuple(f"SNS message: {e}" for e in inner.errors)
        )
    if data.get("Event") == "s3:TestEvent":
        return ParsedMessage("s3-test")
    if "Records" in data:
        records = data["Records"]
        if not isinstance(records, list) or not records:
            return ParsedMessage("s3", errors=("Records is empty or not a list",))
        events: list[ObjectEvent] = []
        errors: list[str] = []
        for i, record in enumerate(records):
            parsed = _s3_record(record, f"Records[{i}]")
            (errors if isinstance(parsed, str) else events).append(parsed)  # type: ignore[arg-type]
        return ParsedMessage("s3", tuple(events), tuple(errors))
    if "object" in data or "action" in data or "eventType" in data:
        parsed = _r2_event(data)
        if isinstance(parsed, str):
            return ParsedMessage("r2", errors=(parsed,))
        return ParsedMessage("r2", (parsed,))
    return ParsedMessage(
        "",
        errors=(
            "neither an S3 notification (Records) nor an R2 one (bucket, object, action): "
            f"keys {', '.join(sorted(map(str, data))[:8]) or 'none'}",
        ),
    )


def parse_requeue_message(body: object) -> ParsedMessage:
    """Read a message of remediation's SQS outbox: {"bucket", "key", "reason", "run_id"}."""
    data, error = _load_json(body)
    if error:
        return ParsedMessage("", errors=(error,))
    if not isinstance(data, dict):
        return ParsedMessage("", errors=("not a JSON object",))
    bucket = data.get("bucket")
    if not isinstance(bucket, str) or not bucket:
        return ParsedMessage("requeue", errors=("missing bucket",))
    problem = key_problem(data.get("key"))
    if problem:
        return ParsedMessage("requeue", errors=(problem,))
    reason = data.get("reason")
    return ParsedMessage(
        "requeue",
        (
            ObjectEvent(
                bucket=bucket,
                key=data["key"],
                size=None,
                etag=None,
                event_time=None,
                event_name=f"requeue:{reason}" if isinstance(reason, str) else "requeue",
            ),
        ),
    )


# --------------------------------------------------------------------------- filters


def split_list(value: str | None) -> tuple[str, ...]:
    """A comma-separated setting as a tuple, blanks dropped."""
    return tuple(part.strip() for part in (value or "").split(",") if part.strip())


@dataclass(frozen=True)
class KeyFilter:
    """Which keys the event-driven path processes: prefixes, and suffixes (case-insensitive).

    An empty tuple means no restriction; folder markers (keys ending in '/') never pass.
    """

    prefixes: tuple[str, ...] = ()
    suffixes: tuple[str, ...] = ()

    def accepts(self, key: str) -> bool:
        if key.endswith("/"):
            return False
        if self.prefixes and not key.startswith(self.prefixes):
            return False
        return not self.suffixes or key.lower().endswith(tuple(s.lower() for s in self.suffixes))


@dataclass(frozen=True)
class InboxMessage:
    """One received SQS message."""

    message_id: str
    receipt_handle: str
    body: str
    receive_count: int = 1


@dataclass
class Decision:
    """What to do with one message: request runs, dead-letter it, or just delete it."""

    message: InboxMessage
    requests: list[ObjectEvent] = field(default_factory=list)
    dead_letter: str | None = None  # the reason, when the message (or a record) is malformed
    ignored: Counter[str] = field(default_factory=Counter)


IGNORED_REASONS = ("test_event", "other_bucket", "filtered", "not_created")


def decide(
    messages: Iterable[InboxMessage],
    *,
    bucket: str,
    key_filter: KeyFilter,
    parse: Callable[[object], ParsedMessage] = parse_notification,
) -> list[Decision]:
    """One decision per message; the valid records of a partly malformed message are kept."""
    decisions = []
    for message in messages:
        parsed = parse(message.body)
        decision = Decision(message, dead_letter=parsed.reason or None)
        if parsed.format == "s3-test":
            decision.ignored["test_event"] += 1
        for event in parsed.events:
            if event.bucket != bucket:
                decision.ignored["other_bucket"] += 1
            elif not event.created:
                decision.ignored["not_created"] += 1
            elif not key_filter.accepts(event.key):
                decision.ignored["filtered"] += 1
            else:
                decision.requests.append(event)
        decisions.append(decision)
    return decisions


def unique_by_run_key(events: Iterable[ObjectEvent]) -> list[ObjectEvent]:
    """First event per run key, in order: repeats within one tick collapse here already."""
    seen: dict[str, ObjectEvent] = {}
    for event in events:
        seen.setdefault(event.run_key, event)
    return list(seen.values())


# --------------------------------------------------------------------------- SQS


def queue_name(url: str) -> str:
    """The queue's name, safe to print."""
    return url.rstrip("/").rsplit("/", 1)[-1]


def _client_error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", "error"))
    return type(exc).__name__


@dataclass
class DeleteOutcome:
    deleted: int = 0
    gone: int = 0  # receipt handles SQS no longer accepts: the message will be received again
    retry: list[str] = field(default_factory=list)  # handles to try again next tick
    errors: list[str] = field(default_factory=list)


class SqsInbox:
    """The few SQS calls a sensor makes on one queue, with readable errors."""

    def __init__(self, client: Any, queue_url: str, *, visibility_timeout: int = 600) -> None:
        self.client = client
        self.queue_url = queue_url
        self.visibility_timeout = visibility_timeout

    @property
    def name(self) -> str:
        return queue_name(self.queue_url)

    def receive(
        self, *, batches: int, deadline: float, wait_seconds: int = 0
    ) -> list[InboxMessage]:
        """Up to `batches` receives of 10 messages, stopping early on an empty answer or the deadline.

        Each message stays invisible to other receivers for the visibility timeout, which must
        cover the time until the next tick deletes it; when it expires first, the message comes
        back and is requested again under the same run key (harmless).
        """
        out: list[InboxMessage] = []
        seen: set[str] = set()
        for number in range(batches):
            if number and time.monotonic() >= deadline:
                break
            try:
                response = self.client.receive_message(
                    QueueUrl=self.queue_url,
                    MaxNumberOfMessages=SQS_BATCH,
                    VisibilityTimeout=self.visibility_timeout,
                    WaitTimeSeconds=wait_seconds if number == 0 else 0,
                    MessageSystemAttributeNames=["ApproximateReceiveCount"],
                )
            except Exception as exc:
                if out:
                    break  # keep what was received; the next tick continues
                raise QueueError(
                    f"receiving from SQS queue {self.name} failed: {_client_error_code(exc)}"
                ) from None
            messages = response.get("Messages", [])
            for m in messages:
                if m["MessageId"] in seen:
                    continue
                seen.add(m["MessageId"])
                count = m.get("Attributes", {}).get("ApproximateReceiveCount", "1")
                out.append(
                    InboxMessage(
                        m["MessageId"],
                        m["ReceiptHandle"],
                        m.get("Body", ""),
                        int(count) if str(count).isdigit() else 1,
                    )
                )
            if not messages:
                break
        return out

    def delete(self, handles: Sequence[str]) -> DeleteOutcome:
        """Delete by receipt handle, 10 a request. Handles SQS rejects are counted as gone."""
        outcome = DeleteOutcome()
        handles = list(dict.fromkeys(handles))
        for start in range(0, len(handles), SQS_BATCH):
            chunk = handles[start : start + SQS_BATCH]
            entries = [{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(chunk)]
            try:
                response = self.client.delete_message_batch(
                    QueueUrl=self.queue_url, Entries=entries
                )
            except Exception as exc:
                outcome.retry.extend(chunk)
                outcome.errors.append(_client_error_code(exc))
                continue
            outcome.deleted += len(response.get("Successful", []))
            for failed in response.get("Failed", []):
                handle = chunk[int(failed["Id"])]
                if failed.get("SenderFault", True):
                    outcome.gone += 1
                else:
                    outcome.retry.append(handle)
                outcome.errors.append(failed.get("Code", "error"))
        return outcome

    def send(self, body: str, *, reason: str, source_id: str) -> None:
        """Send a copy of a message (to a dead-letter queue) with the reason as an attribute."""
        kwargs: dict[str, Any] = {
            "QueueUrl": self.queue_url,
            "MessageBody": body if body else "(empty)",
            "MessageAttributes": {
                "integrity.reason": {"DataType": "String", "StringValue": reason[:1000]},
                "integrity.source_message_id": {"DataType": "String", "StringValue": source_id},
            },
        }
        if self.queue_url.endswith(".fifo"):
            kwargs.update(MessageGroupId="integrity-dead-letters", MessageDeduplicationId=source_id)
        try:
            self.client.send_message(**kwargs)
        except Exception as exc:
            raise QueueError(
                f"sending to SQS queue {self.name} failed: {_client_error_code(exc)}"
            ) from None


# --------------------------------------------------------------------------- two-phase cursor


@dataclass
class InboxCursor:
    """What a queue-draining sensor owes the next tick: the messages (and queue rows) whose run
    requests this tick emitted. They are deleted (marked taken) only when the next tick runs,
    because by then Dagster has recorded the requests together with this cursor."""

    delete: list[str] = field(default_factory=list)  # SQS receipt handles
    taken_ids: list[int] = field(default_factory=list)  # integrity_queue ids
    taken_message_ids: list[str] = field(default_factory=list)  # integrity_queue.message_id

    @classmethod
    def load(cls, text: str | None) -> InboxCursor:
        if not text:
            return cls()
        try:
            data = json.loads(text)
            return cls(
                delete=[str(h) for h in data.get("delete", [])],
                taken_ids=[int(i) for i in data.get("taken_ids", [])],
                taken_message_ids=[str(m) for m in data.get("taken_message_ids", [])],
            )
        except (ValueError, TypeError, AttributeError):
            return cls()  # an unreadable cursor: messages come back after their timeout

    def dump(self) -> str:
        return json.dumps(
            {
                "v": 1,
                "delete": self.delete,
                "taken_ids": self.taken_ids,
                "taken_message_ids": self.taken_message_ids,
            },
            separators=(",", ":"),
        )


# --------------------------------------------------------------------------- listing poll


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(timezone.utc).isoformat()


def _from_iso(value: object) -> datetime | None:
    return _parse_time(value) if value else None


@dataclass
class PrefixPass:
    """Where the poll of one prefix is.

    A pass lists the prefix in key order from the start; `after` is the last key handled, so a
    pass spans ticks. `since` is when the previous complete pass started: any object written
    after that has been, or will be, listed by the current pass, so it is new iff its
    LastModified is later (less a look-back for clock skew, slow uploads and S3's one-second
    resolution). `since` is None until the first pass completes: that pass asks the database.
    """

    after: str | None = None
    started: datetime | None = None
    since: datetime | None = None
    pages: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "after": self.after,
            "started": _iso(self.started),
            "since": _iso(self.since),
            "pages": self.pages,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PrefixPass:
        return cls(
            after=data.get("after") or None,
            started=_from_iso(data.get("started")),
            since=_from_iso(data.get("since")),
            pages=int(data.get("pages") or 0),
        )


@dataclass
class WatchCursor:
    """Each prefix's pass, whose turn it is, and the object versions requested lately.

    `recent` maps a short digest of each run key requested to its object's LastModified (epoch
    seconds), while it can still come up as new (inside the look-back): a later pass skips it
    instead of requesting it again. Bounded; what falls out is at worst requested twice, and
    the run key collapses that.
    """

    prefixes: dict[str, PrefixPass] = field(default_factory=dict)
    turn: int = 0
    recent: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, text: str | None) -> WatchCursor:
        """The cursor a tick left; an unreadable one starts over (a first pass, checked
        against the database, so processed objects are not requested again)."""
        if not text:
            return cls()
        try:
            data = json.loads(text)
            return cls(
                prefixes={p: PrefixPass.from_json(s) for p, s in data["prefixes"].items()},
                turn=int(data.get("turn", 0)),
                recent={str(k): int(v) for k, v in data.get("recent", {}).items()},
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            return cls()

    def dump(self) -> str:
        return json.dumps(
            {
                "v": 1,
                "turn": self.turn,
                "prefixes": {p: s.to_json() for p, s in self.prefixes.items()},
                "recent": self.recent,
            },
            separators=(",", ":"),
        )


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


# --------------------------------------------------------------------------- settings


def _int_setting(environ: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise UsageError(f"{name}: {raw!r} is not a whole number") from None
    if not low <= value <= high:
        raise UsageError(f"{name}: {value} is out of range ({low} to {high})")
    return value


def _duration_setting(environ: Mapping[str, str], name: str, default: timedelta) -> timedelta:
    raw = environ.get(name)
    if raw is None or not raw.strip():
        return default
    return parse_duration(raw, option=name)


@dataclass(frozen=True)
class EventSettings:
    """The event-driven path's settings, read from the environment at each tick."""

    watch_prefixes: tuple[str, ...] = ()
    watch: PollLimits = PollLimits()
    page_size: int = 1000
    events_queue_url: str | None = None
    events_dlq_url: str | None = None
    events_filter: KeyFilter = KeyFilter()
    receives: int = 10
    visibility_timeout: int = 600
    wait_seconds: int = 1
    tick_seconds: float = 20.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> EventSettings:
        """Raise UsageError naming the variable when a value cannot be used."""
        env = os.environ if environ is None else environ
        seconds = _duration_setting(env, settings.ENV_WATCH_SECONDS, timedelta(seconds=20))
        if not timedelta(seconds=0) < seconds <= timedelta(seconds=50):
            raise UsageError(
                f"{settings.ENV_WATCH_SECONDS}: must be above 0 and at most 50 seconds "
                "(a sensor tick may take 60)"
            )
        return cls(
            watch_prefixes=split_list(env.get(settings.ENV_WATCH_PREFIXES)),
            watch=PollLimits(
                pages=_int_setting(env, settings.ENV_WATCH_PAGES, 20, 1, 1000),
                seconds=seconds.total_seconds(),
                max_found=_int_setting(env, settings.ENV_WATCH_MAX_RUNS, 500, 1, 10000),
                lookback=_duration_setting(env, settings.ENV_WATCH_LOOKBACK, timedelta(minutes=15)),
            ),
            page_size=_int_setting(env, settings.ENV_WATCH_PAGE_SIZE, 1000, 1, 1000),
            events_queue_url=env.get(settings.ENV_EVENTS_QUEUE_URL) or None,
            events_dlq_url=env.get(settings.ENV_EVENTS_DLQ_URL) or None,
            events_filter=KeyFilter(
                split_list(env.get(settings.ENV_EVENTS_PREFIXES)),
                split_list(env.get(settings.ENV_EVENTS_SUFFIXES)),
            ),
            receives=_int_setting(env, settings.ENV_EVENTS_RECEIVES, 10, 1, 100),
            visibility_timeout=_int_setting(
                env, settings.ENV_EVENTS_VISIBILITY_TIMEOUT, 600, 60, 43200
            ),
            wait_seconds=_int_setting(env, settings.ENV_EVENTS_WAIT_SECONDS, 1, 0, 20),
            tick_seconds=seconds.total_seconds(),
        )

    def prefixes_or(self, spec: ReconciliationSpec) -> tuple[str, ...]:
        """The watched prefixes: the setting, else the head of the spec's uploads prefix."""
        if self.watch_prefixes:
            return self.watch_prefixes
        if spec.uploads is None:
            return ()
        return (spec.uploads.prefix.split("{", 1)[0],)
