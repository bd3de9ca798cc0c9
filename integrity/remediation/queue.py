"""The re-queue that remediation fills: a table in the same database, or an SQS queue.

Either way every entry is first a row of `integrity_queue`, written in the transaction that
resets the object's job, so a status change and its queue entry commit together. With the
table backend that row *is* the queue. With SQS the row is an outbox entry: after the
transaction commits, pending rows are sent (10 a request) and marked sent; a crash between
commit and send leaves them pending, and the next run sends them. An object already waiting
(pending, or sent and still within the queue's retention) is never queued twice.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol
from urllib.parse import urlsplit

import sqlalchemy as sa

from integrity.clock import utcnow
from integrity.errors import QueueError, shown, without_userinfo
from integrity.remediation.ledger import WAITING_STATES, ledger_exists, queue

SQS_BATCH = 10
_IN_CHUNK = 500


@dataclass(frozen=True)
class QueueEntry:
    """One object to process again, and why."""

    key: str
    reason: str


class WorkQueue(Protocol):
    backend: str

    @property
    def description(self) -> str:
        """Where the queue is, safe to print."""

    def check_access(self) -> None:
        """Raise QueueError with one line if the queue cannot be used."""

    def waiting(self, conn: sa.Connection, keys: Iterable[str]) -> set[str]:
        """The keys among these that are already waiting in the queue."""

    def add(
        self,
        conn: sa.Connection,
        entries: Sequence[QueueEntry],
        *,
        bucket: str,
        run_id: str,
        now: datetime,
    ) -> int:
        """Record entries in the caller's transaction; returns how many were added."""

    def flush(self, engine: sa.Engine) -> int:
        """Deliver what committed entries need delivering; returns how many were sent."""


def _chunks(values: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


class TableQueue:
    """The embedded default: `integrity_queue` itself is the queue (state `pending`)."""

    backend = "table"

    def __init__(self, description: str = "table integrity_queue") -> None:
        self._description = description

    @property
    def description(self) -> str:
        return self._description

    def check_access(self) -> None:
        return None

    def _waiting_clause(self) -> sa.ColumnElement[bool]:
        return queue.c.state.in_(WAITING_STATES)

    def waiting(self, conn: sa.Connection, keys: Iterable[str]) -> set[str]:
        keys = sorted(set(keys))
        if not keys or not ledger_exists(conn):
            return set()
        found: set[str] = set()
        for chunk in _chunks(keys, _IN_CHUNK):
            rows = conn.execute(
                sa.select(queue.c.object_key).where(
                    queue.c.object_key.in_(chunk), self._waiting_clause()
                )
            )
            found.update(r[0] for r in rows)
        return found

    def add(
        self,
        conn: sa.Connection,
        entries: Sequence[QueueEntry],
        *,
        bucket: str,
        run_id: str,
        now: datetime,
    ) -> int:
        if not entries:
            return 0
        conn.execute(
            queue.insert(),
            [
                {
                    "object_key": e.key,
                    "bucket": bucket,
                    "reason": e.reason,
                    "run_id": run_id,
                    "backend": self.backend,
                    "state": "pending",
                    "enqueued_at": now,
                }
                for e in entries
            ],
        )
        return len(entries)

    def flush(self, engine: sa.Engine) -> int:
        return 0


def take_pending(engine: sa.Engine, limit: int = 100) -> list[dict[str, Any]]:
    """Claim up to `limit` waiting table-queue entries for processing (oldest first)."""
    with engine.begin() as conn:
        if not ledger_exists(conn):
            return []
        rows = (
            conn.execute(
                sa.select(queue.c.id, queue.c.object_key, queue.c.bucket, queue.c.reason)
                .where(queue.c.backend == TableQueue.backend, queue.c.state == "pending")
                .order_by(queue.c.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
            .mappings()
            .all()
        )
        if rows:
            conn.execute(
                queue.update()
                .where(queue.c.id.in_([r["id"] for r in rows]), queue.c.state == "pending")
                .values(state="taken", taken_at=utcnow())
            )
    return [dict(r) for r in rows]


def peek_pending(engine: sa.Engine, *, bucket: str, limit: int = 100) -> list[dict[str, Any]]:
    """Waiting table-queue entries of a bucket, oldest first, without claiming them.

    For a consumer that marks entries taken only after their work is recorded (`mark_taken`):
    an entry read twice before that is harmless when the consumer's work is keyed by its id.
    """
    with engine.connect() as conn:
        if not ledger_exists(conn):
            return []
        rows = conn.execute(
            sa.select(queue.c.id, queue.c.object_key, queue.c.bucket, queue.c.reason)
            .where(
                queue.c.backend == TableQueue.backend,
                queue.c.state == "pending",
                queue.c.bucket == bucket,
            )
            .order_by(queue.c.id)
            .limit(limit)
        ).mappings()
        return [dict(r) for r in rows]


def mark_taken(engine: sa.Engine, ids: Sequence[int] = (), message_ids: Sequence[str] = ()) -> int:
    """Mark entries taken by id (table backend, pending) or SQS message id (sent); returns how many.

    Entries no longer waiting (taken already, or cancelled by a rollback) are left as they are.
    """
    if not ids and not message_ids:
        return 0
    now = utcnow()
    changed = 0
    with engine.begin() as conn:
        if not ledger_exists(conn):
            return 0
        for chunk in _chunks(list(ids), _IN_CHUNK):
            changed += conn.execute(
                queue.update()
                .where(queue.c.id.in_(chunk), queue.c.state == "pending")
                .values(state="taken", taken_at=now)
            ).rowcount
        for chunk in _chunks(list(message_ids), _IN_CHUNK):
            changed += conn.execute(
                queue.update()
                .where(queue.c.message_id.in_(chunk), queue.c.state == "sent")
                .values(state="taken", taken_at=now)
            ).rowcount
    return changed


class SqsQueue(TableQueue):
    """Production option: entries are sent to an SQS queue after their transaction commits."""

    backend = "sqs"

    def __init__(self, client: Any, queue_url: str) -> None:
        super().__init__(f"SQS queue {queue_url.rsplit('/', 1)[-1]}")
        self.client = client
        self.queue_url = queue_url
        self._retention: timedelta | None = None

    def _error(self, action: str, exc: Exception) -> QueueError:
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "error")
            return QueueError(f"{action} {self.description} failed: {code}")
        return QueueError(f"{action} {self.description} failed: {type(exc).__name__}")

    def check_access(self) -> None:
        """Read the queue's retention once: it bounds how long a sent entry counts as waiting."""
        try:
            attributes = self.client.get_queue_attributes(
                QueueUrl=self.queue_url, AttributeNames=["MessageRetentionPeriod"]
            )["Attributes"]
        except Exception as exc:
            raise self._error("reading", exc) from None
        self._retention = timedelta(seconds=int(attributes.get("MessageRetentionPeriod", 345600)))

    def _waiting_clause(self) -> sa.ColumnElement[bool]:
        if self._retention is None:
            self.check_access()
        assert self._retention is not None
        fresh = sa.or_(queue.c.sent_at.is_(None), queue.c.sent_at > utcnow() - self._retention)
        return sa.and_(queue.c.state.in_(WAITING_STATES), fresh)

    def flush(self, engine: sa.Engine) -> int:
        """Send every pending SQS entry (this run's and any a crashed run left), 10 a request."""
        with engine.connect() as conn:
            if not ledger_exists(conn):
                return 0
            pending = conn.execute(
                sa.select(
                    queue.c.id, queue.c.object_key, queue.c.bucket, queue.c.reason, queue.c.run_id
                )
                .where(queue.c.backend == self.backend, queue.c.state == "pending")
                .order_by(queue.c.id)
            ).all()
        sent = 0
        failed: list[str] = []
        for chunk in _chunks(pending, SQS_BATCH):
            body = [
                {
                    "Id": str(row.id),
                    "MessageBody": json.dumps(
                        {
                            "bucket": row.bucket,
                            "key": row.object_key,
                            "reason": row.reason,
                            "run_id": row.run_id,
                        },
                        ensure_ascii=False,
                    ),
                }
                for row in chunk
            ]
            try:
                response = self.client.send_message_batch(QueueUrl=self.queue_url, Entries=body)
            except Exception as exc:
                raise self._error("sending to", exc) from None
            ok = {int(s["Id"]): s.get("MessageId") for s in response.get("Successful", [])}
            failed += [f.get("Code", "error") for f in response.get("Failed", [])]
            if ok:
                now = utcnow()
                with engine.begin() as conn:
                    conn.execute(
                        queue.update()
                        .where(queue.c.id == sa.bindparam("row_id"), queue.c.state == "pending")
                        .values(state="sent", sent_at=now, message_id=sa.bindparam("sent_id")),
                        [{"row_id": i, "sent_id": m} for i, m in ok.items()],
                    )
                sent += len(ok)
        if failed:
            raise QueueError(
                f"{len(failed)} of {len(pending)} messages could not be sent to {self.description} "
                f"({', '.join(sorted(set(failed)))}); they stay pending in integrity_queue and the "
                "next run sends them"
            )
        return sent


QUEUE_URL_FORM = "https://sqs.REGION.amazonaws.com/ACCOUNT/NAME"
_AWS_QUEUE_HOST = re.compile(r"sqs\.([a-z0-9-]+)\.amazonaws\.com(?:\.cn)?")


def queue_location(queue_url: str) -> tuple[str, str | None]:
    """The endpoint a queue URL names (scheme, host and port) and, for AWS, its region.

    An AWS queue URL (https://sqs.<region>.amazonaws.com/<account>/<name>) gives its region;
    another one (moto, ElasticMQ, LocalStack) gives its server and no region. Raises QueueError
    (one line) for anything that is not a queue URL.
    """
    try:
        parts = urlsplit(queue_url)
        host = parts.hostname
        valid_port = parts.port is None or 1 <= parts.port <= 65535
    except ValueError:  # a port that is not a number, an unclosed '[' of an IPv6 address
        parts, host, valid_port = urlsplit(""), None, False
    if (
        parts.scheme not in ("http", "https")
        or not host
        or not valid_port
        or parts.path.strip("/").count("/") != 1
    ):
        raise QueueError(
            f"{shown(without_userinfo(queue_url))} is not an SQS queue URL ({QUEUE_URL_FORM})"
        )
    aws = _AWS_QUEUE_HOST.fullmatch(host)
    server = parts.netloc.rsplit("@", 1)[-1]  # never a user or password
    return f"{parts.scheme}://{server}", aws.group(1) if aws else None


def sqs_client(
    endpoint_url: str | None = None,
    region: str | None = None,
    queue_url: str | None = None,
    *,
    default_region: str | None = None,
    fallback_region: str = "us-east-1",
) -> Any:
    """A queue client; integrity.connections.sqs_client gives it the environment's values.

    The endpoint is `endpoint_url` when given (AWS_ENDPOINT_URL_SQS), else `sqs` in the AWS
    config file's `services` section, else the queue URL's own server. The global
    AWS_ENDPOINT_URL and a storage endpoint (R2, MinIO) are the bucket's and never apply here.
    The region is `region` when given, else the one an AWS queue URL names, else
    `default_region` (AWS_REGION / AWS_DEFAULT_REGION), else the profile's, else
    `fallback_region` (what an SQS-compatible server accepts). Credentials come from the standard
    AWS chain. Raises QueueError (one line); sends nothing.
    """
    from integrity import aws

    try:
        server, url_region = queue_location(queue_url) if queue_url else (None, None)
        core = aws.botocore_session()
        endpoint = aws.service_endpoint("sqs", endpoint_url, core) or server
        region = (
            region or url_region or default_region or aws.profile_region(core) or fallback_region
        )
        return aws.client("sqs", core, endpoint_url=endpoint, region_name=region)
    except QueueError:
        raise
    except Exception as exc:
        raise QueueError(
            f"cannot make an SQS client ({type(exc).__name__}): check AWS_REGION, "
            "AWS_ENDPOINT_URL_SQS and the queue URL"
        ) from None


def make_queue(
    queue_url: str | None, *, endpoint_url: str | None = None, region: str | None = None
) -> WorkQueue:
    """SQS when a queue URL is given (credentials from the standard AWS chain), else the table."""
    if not queue_url:
        return TableQueue()
    return SqsQueue(sqs_client(endpoint_url, region, queue_url), queue_url)
