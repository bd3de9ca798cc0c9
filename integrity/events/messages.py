"""Notification bodies as object events: the S3 format (optionally wrapped by SNS), the
Cloudflare R2 format (EventBridge-style), and remediation's re-queue messages.

Each body parses into one `ParsedMessage`: its valid records, and why the rest could not be read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import unquote_plus

MAX_KEY_BYTES = 1024
RUN_KEY_LIMIT = 200

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


def parse_time(value: object) -> datetime | None:
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
        event_time=parse_time(record.get("eventTime")),
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
        event_time=parse_time(data.get("eventTime")),
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
