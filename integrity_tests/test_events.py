"""The event core: notification formats, filters, run keys, the listing poll and its cursor.

Listings run against real stores (a storage directory whose files' mtimes set LastModified, and
moto's S3 server for StartAfter); the database checks run on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from integrity import schema, settings
from integrity.errors import UsageError
from integrity.events.cursors import InboxCursor, WatchCursor
from integrity.events.filters import KeyFilter, admit
from integrity.events.messages import parse_notification, parse_requeue_message, run_key
from integrity.events.poll import PollLimits, known_upload_keys, poll_new_objects
from integrity.events.settings import event_settings_from
from integrity.events.sqs import InboxMessage
from integrity.remediation import ledger
from integrity.remediation.queue import mark_taken, peek_pending
from integrity.spec import default_spec
from integrity.storage import ListingFailed, LocalStorage, S3Storage

T0 = datetime(2026, 11, 1, 12, 0, 0, tzinfo=timezone.utc)


def s3_message(*records: tuple[str, str, str], bucket: str = "uploads") -> str:
    """An S3 notification body; records are (eventName, url-encoded key, etag)."""
    return json.dumps(
        {
            "Records": [
                {
                    "eventVersion": "2.1",
                    "eventSource": "aws:s3",
                    "eventTime": "2026-11-01T12:00:00.123Z",
                    "eventName": name,
                    "s3": {
                        "bucket": {"name": bucket},
                        "object": {"key": key, "size": 10, "eTag": etag, "sequencer": "0A"},
                    },
                }
                for name, key, etag in records
            ]
        }
    )


def r2_message(key: str, *, action: str = "PutObject", bucket: str = "uploads", **extra) -> str:
    body = {
        "account": "3f4b7e3dcab231cbfdaa90a6a28bd548",
        "bucket": bucket,
        "object": {"key": key, "size": 65536, "eTag": "c846ff7a18f28c2e262116d6e8719ef0"},
        "eventTime": "2026-11-01T12:00:00.379Z",
        **({"action": action} if action else {}),
        **extra,
    }
    return json.dumps(body)


# --------------------------------------------------------------------------- formats


def test_s3_records_decode_keys_and_tell_created_from_other_events() -> None:
    parsed = parse_notification(
        s3_message(
            ("ObjectCreated:Put", "documents/org-1/site+plant%C3%A9+v2.pdf", "abc"),
            ("ObjectCreated:CompleteMultipartUpload", "documents/org-1/100%25.pdf", "def-3"),
            ("ObjectRemoved:Delete", "documents/org-1/old.pdf", ""),
        )
    )
    assert parsed.format == "s3" and not parsed.malformed
    assert [(e.key, e.etag, e.created) for e in parsed.events] == [
        ("documents/org-1/site planté v2.pdf", "abc", True),
        ("documents/org-1/100%.pdf", "def-3", True),
        ("documents/org-1/old.pdf", "", False),
    ]
    first = parsed.events[0]
    assert (first.bucket, first.size, first.event_name) == ("uploads", 10, "ObjectCreated:Put")
    assert first.event_time == datetime(2026, 11, 1, 12, 0, 0, 123000, tzinfo=timezone.utc)


def test_s3_test_event_and_sns_wrapped_notifications() -> None:
    test = parse_notification(
        json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": "uploads"})
    )
    assert test.format == "s3-test" and not test.events and not test.malformed
    wrapped = parse_notification(
        json.dumps(
            {
                "Type": "Notification",
                "TopicArn": "arn:aws:sns:us-east-1:123:uploads",
                "Message": s3_message(("ObjectCreated:Copy", "documents/a/b.pdf", "e1")),
            }
        )
    )
    assert [(e.key, e.created) for e in wrapped.events] == [("documents/a/b.pdf", True)]
    bad_inner = parse_notification(json.dumps({"Type": "Notification", "Message": "{oops"}))
    assert bad_inner.malformed and bad_inner.reason.startswith("SNS message: not JSON")


@pytest.mark.parametrize(
    ("fields", "created"),
    [
        ({"action": "PutObject"}, True),
        ({"action": "CopyObject", "copySource": {"bucket": "uploads", "object": "x"}}, True),
        ({"action": "CompleteMultipartUpload"}, True),
        ({"action": "", "eventType": "object-create"}, True),
        ({"action": "DeleteObject"}, False),
        ({"action": "", "eventType": "object-delete"}, False),
    ],
)
def test_r2_notifications(fields: dict, created: bool) -> None:
    action = fields.pop("action")
    parsed = parse_notification(r2_message("documents/org 1/plan+a.pdf", action=action, **fields))
    assert parsed.format == "r2" and not parsed.malformed
    (event,) = parsed.events
    # R2 sends keys as they are: '+' stays a plus
    assert (event.bucket, event.key, event.size) == ("uploads", "documents/org 1/plan+a.pdf", 65536)
    assert event.etag == "c846ff7a18f28c2e262116d6e8719ef0"
    assert event.created is created


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("not json at all", "not JSON (Expecting value at character 0)"),
        ("[1, 2]", "not a JSON object"),
        ('{"hello": "world"}', "neither an S3 notification (Records) nor an R2 one"),
        ('{"Records": []}', "Records is empty or not a list"),
        ('{"Records": [{"eventName": "ObjectCreated:Put"}]}', "Records[0]: missing s3"),
        (
            s3_message(("ObjectCreated:Put", "", "e")),
            "Records[0]: the object key is empty",
        ),
        (
            s3_message(("ObjectCreated:Put", "documents/%FF%FE.pdf", "e")),
            "does not decode to UTF-8",
        ),
        (
            s3_message(("ObjectCreated:Put", "documents/a%0Ab.pdf", "e")),
            "control characters",
        ),
        (s3_message(("ObjectCreated:Put", "d/" + "x" * 1100, "e")), "1102 bytes long"),
        (r2_message("documents/a.pdf", action=""), "missing action (or eventType)"),
        (json.dumps({"bucket": "uploads", "action": "PutObject"}), "missing object.key"),
        (
            json.dumps({"bucket": "uploads", "action": "PutObject", "object": {"key": 7}}),
            "the object key is not a string",
        ),
        (
            json.dumps(
                {"bucket": "b", "action": "PutObject", "object": {"key": "k", "size": "big"}}
            ),
            "object size is not a non-negative integer",
        ),
    ],
)
def test_malformed_messages_say_why(body: str, reason: str) -> None:
    parsed = parse_notification(body)
    assert parsed.malformed
    assert reason in parsed.reason
    assert not parsed.events


def test_one_bad_record_keeps_the_good_ones() -> None:
    parsed = parse_notification(
        s3_message(("ObjectCreated:Put", "documents/a.pdf", "e1"), ("ObjectCreated:Put", "", "e2"))
    )
    assert [e.key for e in parsed.events] == ["documents/a.pdf"]
    assert parsed.reason == "Records[1]: the object key is empty"


def test_requeue_messages() -> None:
    parsed = parse_requeue_message(
        json.dumps({"bucket": "uploads", "key": "documents/o/a.pdf", "reason": "orphan_object"})
    )
    assert [(e.bucket, e.key, e.event_name) for e in parsed.events] == [
        ("uploads", "documents/o/a.pdf", "requeue:orphan_object")
    ]
    assert parse_requeue_message('{"bucket": "uploads"}').reason == "the object key is not a string"
    assert parse_requeue_message("nope").malformed


def test_run_keys_are_per_key_and_etag_and_bounded() -> None:
    assert run_key("documents/a.pdf", '"abc"') == "documents/a.pdf@abc"
    assert run_key("documents/a.pdf", "abc") == run_key("documents/a.pdf", '"abc"')
    assert run_key("documents/a.pdf", "abd") != run_key("documents/a.pdf", "abc")
    long_key = "documents/" + "é" * 400
    hashed = run_key(long_key, "abc")
    assert hashed.startswith("sha256:") and len(hashed) == 71
    assert hashed != run_key(long_key, "abd")


def test_filters_and_decisions() -> None:
    key_filter = KeyFilter(prefixes=("documents/",), suffixes=(".pdf", ".dzi"))
    assert key_filter.accepts("documents/o/a.PDF")
    assert not key_filter.accepts("documents/o/a.txt")
    assert not key_filter.accepts("images/a.pdf")
    assert not key_filter.accepts("documents/o/")
    assert KeyFilter().accepts("anything")
    messages = [
        InboxMessage("m1", "h1", s3_message(("ObjectCreated:Put", "documents/o/a.pdf", "1"))),
        InboxMessage("m2", "h2", r2_message("documents/o/a.pdf", bucket="elsewhere")),
        InboxMessage("m3", "h3", s3_message(("ObjectCreated:Put", "documents/o/a.txt", "1"))),
        InboxMessage("m4", "h4", s3_message(("ObjectRemoved:Delete", "documents/o/b.pdf", ""))),
        InboxMessage("m5", "h5", json.dumps({"Event": "s3:TestEvent", "Bucket": "uploads"})),
        InboxMessage("m6", "h6", "{"),
    ]
    admissions = admit(messages, bucket="uploads", key_filter=key_filter)
    assert [[e.key for e in d.requests] for d in admissions] == [["documents/o/a.pdf"]] + [[]] * 5
    assert [dict(d.ignored) for d in admissions[1:5]] == [
        {"other_bucket": 1},
        {"filtered": 1},
        {"not_created": 1},
        {"test_event": 1},
    ]
    assert admissions[5].dead_letter and not admissions[0].dead_letter


def test_cursors_round_trip_and_survive_garbage() -> None:
    inbox = InboxCursor(delete=["h1"], taken_ids=[3], taken_message_ids=["m"])
    assert InboxCursor.load(inbox.dump()) == inbox
    assert InboxCursor.load("garbage") == InboxCursor()
    assert WatchCursor.load("{}").prefixes == {}
    assert WatchCursor.load(None).prefixes == {}


def test_settings_from_the_environment() -> None:
    conf = event_settings_from(
        {
            settings.ENV_WATCH_PREFIXES: "documents/, uploads/",
            settings.ENV_WATCH_SECONDS: "5s",
            settings.ENV_WATCH_LOOKBACK: "0",
            settings.ENV_EVENTS_SUFFIXES: ".pdf,.dzi",
        }
    )
    assert conf.watch_prefixes == ("documents/", "uploads/")
    assert conf.watch.seconds == 5 and conf.watch.lookback == timedelta(0)
    assert conf.events_filter == KeyFilter((), (".pdf", ".dzi"))
    assert event_settings_from({}).prefixes_or(default_spec()) == ("documents/",)
    with pytest.raises(UsageError, match="INTEGRITY_WATCH_PAGES: 'many' is not a whole number"):
        event_settings_from({settings.ENV_WATCH_PAGES: "many"})
    with pytest.raises(UsageError, match="INTEGRITY_WATCH_SECONDS: must be above 0"):
        event_settings_from({settings.ENV_WATCH_SECONDS: "2m"})
    with pytest.raises(UsageError, match="INTEGRITY_EVENTS_VISIBILITY_TIMEOUT: 5 is out of range"):
        event_settings_from({settings.ENV_EVENTS_VISIBILITY_TIMEOUT: "5"})


# --------------------------------------------------------------------------- listing poll


class Bucket:
    """A storage directory whose objects get the LastModified a test says."""

    def __init__(self, root: Path, page_size: int = 2) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.store = LocalStorage(root, page_size=page_size)

    def put(self, key: str, at: datetime, data: bytes = b"%PDF") -> None:
        self.store.put_bytes(key, data)
        stamp = at.timestamp()
        os.utime(self.store._path(key), (stamp, stamp))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def keys_of(result) -> list[str]:
    return [o.key for o in result.found]


def test_local_listing_is_in_key_order_and_resumes_after_a_key(tmp_path: Path) -> None:
    bucket = Bucket(tmp_path / "b", page_size=1000)
    for key in ["a/b", "a-c", "a/a/z", "b", "a.x"]:
        bucket.put(key, T0)
    listed = [k for page in bucket.store.list_pages("") for k in page.keys]
    assert listed == sorted(listed) == ["a-c", "a.x", "a/a/z", "a/b", "b"]
    after = [k for page in bucket.store.list_pages("", start_after="a.x") for k in page.keys]
    assert after == ["a/a/z", "a/b", "b"]


def test_s3_listing_resumes_after_a_key(s3_client, bucket: str) -> None:
    for key in ["documents/a", "documents/b", "documents/c", "other/x"]:
        s3_client.put_object(Bucket=bucket, Key=key, Body=b"x")
    store = S3Storage(s3_client, bucket, page_size=1)
    pages = list(store.list_pages("documents/", start_after="documents/a"))
    assert [p.keys for p in pages if p.keys] == [["documents/b"], ["documents/c"]]


def test_a_large_prefix_is_continued_across_ticks(tmp_path: Path) -> None:
    bucket = Bucket(tmp_path / "b")
    keys = [f"documents/o/{i:02d}.pdf" for i in range(7)]
    for key in keys:
        bucket.put(key, T0)
    limits = PollLimits(pages=2, seconds=60, lookback=timedelta(0))
    cursor = WatchCursor()
    seen: list[str] = []
    ticks = 0
    while True:
        ticks += 1
        result = poll_new_objects(
            bucket.store, ["documents/"], cursor, limits, now=T0 + timedelta(minutes=ticks)
        )
        cursor = WatchCursor.load(result.cursor.dump())  # through JSON, as Dagster keeps it
        seen += keys_of(result)
        assert result.pages <= 2
        if result.completed:
            break
    assert seen == keys  # each exactly once, in order
    assert ticks == 2  # 7 keys, 2 a page, 2 pages a tick: 4 pages in two ticks, no extra
    assert cursor.prefixes["documents/"].since == T0 + timedelta(minutes=1)


def test_the_time_budget_stops_a_tick_and_the_next_continues(tmp_path: Path) -> None:
    bucket = Bucket(tmp_path / "b")
    for i in range(6):
        bucket.put(f"documents/o/{i}.pdf", T0)
    # the clock advances one second per look: the budget is spent after the first page, which
    # every tick lists however slow the machine (a pass always advances)
    limits = PollLimits(pages=100, seconds=0.5, lookback=timedelta(0))
    result = poll_new_objects(
        bucket.store, ["documents/"], WatchCursor(), limits, now=T0, clock=Clock()
    )
    assert result.stopped_by == "time budget"
    assert keys_of(result) == ["documents/o/0.pdf", "documents/o/1.pdf"]
    assert result.cursor.prefixes["documents/"].after == "documents/o/1.pdf"
    again = poll_new_objects(bucket.store, ["documents/"], result.cursor, limits, now=T0)
    assert keys_of(again)[0] == "documents/o/2.pdf"


def test_the_run_limit_cuts_inside_a_page_without_losing_objects(tmp_path: Path) -> None:
    bucket = Bucket(tmp_path / "b", page_size=5)
    keys = [f"documents/o/{i}.pdf" for i in range(5)]
    for key in keys:
        bucket.put(key, T0)
    limits = PollLimits(pages=10, seconds=60, max_found=2, lookback=timedelta(0))
    cursor, seen = WatchCursor(), []
    for _ in range(3):
        result = poll_new_objects(bucket.store, ["documents/"], cursor, limits, now=T0)
        assert len(result.found) <= 2
        seen += keys_of(result)
        cursor = result.cursor
    assert seen == keys


def test_later_passes_find_new_objects_only_including_ones_sorting_before_the_cursor(
    tmp_path: Path,
) -> None:
    bucket = Bucket(tmp_path / "b")
    for i in range(4):
        bucket.put(f"documents/o/{i}5.pdf", T0)
    limits = PollLimits(pages=1, seconds=60, lookback=timedelta(0))
    tick = T0 + timedelta(minutes=10)
    first = poll_new_objects(bucket.store, ["documents/"], WatchCursor(), limits, now=tick)
    assert keys_of(first) == ["documents/o/05.pdf", "documents/o/15.pdf"]
    # written during the pass, before the continuation point: the next pass must find it
    bucket.put("documents/o/00.pdf", tick + timedelta(seconds=5))
    cursor = first.cursor
    found: list[str] = []
    for minute in range(11, 20):
        result = poll_new_objects(
            bucket.store, ["documents/"], cursor, limits, now=T0 + timedelta(minutes=minute)
        )
        found += keys_of(result)
        cursor = result.cursor
    # the old ones once (first pass), the late one once (second pass), nothing again after
    assert found == ["documents/o/25.pdf", "documents/o/35.pdf", "documents/o/00.pdf"]
    # a re-upload (new content, new etag and time) is new again, with a new run key
    bucket.put("documents/o/15.pdf", T0 + timedelta(minutes=20), data=b"%PDF changed")
    later = []
    for minute in range(21, 26):
        result = poll_new_objects(
            bucket.store, ["documents/"], cursor, limits, now=T0 + timedelta(minutes=minute)
        )
        later += result.found
        cursor = result.cursor
    assert [o.key for o in later] == ["documents/o/15.pdf"]
    assert later[0].run_key != first.found[1].run_key


def test_the_look_back_covers_objects_stamped_before_the_pass_began(tmp_path: Path) -> None:
    bucket = Bucket(tmp_path / "b", page_size=10)
    limits = PollLimits(pages=5, seconds=60, lookback=timedelta(minutes=5))
    first = poll_new_objects(bucket.store, ["documents/"], WatchCursor(), limits, now=T0)
    assert first.completed == ["documents/"]
    # a slow upload: stamped 2 minutes before the first pass began, listed only afterwards
    bucket.put("documents/o/slow.pdf", T0 - timedelta(minutes=2))
    bucket.put("documents/o/old.pdf", T0 - timedelta(hours=2))
    second = poll_new_objects(
        bucket.store, ["documents/"], first.cursor, limits, now=T0 + timedelta(minutes=1)
    )
    assert keys_of(second) == ["documents/o/slow.pdf"]


def test_the_first_pass_skips_what_the_database_knows(tmp_path: Path) -> None:
    bucket = Bucket(tmp_path / "b")
    for i in range(5):
        bucket.put(f"documents/o/{i}.pdf", T0)
    asked: list[list[str]] = []

    def known(keys: list[str]) -> set[str]:
        asked.append(keys)
        return {"documents/o/1.pdf", "documents/o/3.pdf"}

    limits = PollLimits(pages=10, seconds=60, lookback=timedelta(0))
    tick = T0 + timedelta(minutes=1)
    first = poll_new_objects(
        bucket.store, ["documents/"], WatchCursor(), limits, now=tick, known_keys=known
    )
    assert keys_of(first) == ["documents/o/0.pdf", "documents/o/2.pdf", "documents/o/4.pdf"]
    assert first.known == 2
    assert len(asked) == 3  # one question per listing page (2 + 2 + 1 keys)
    bucket.put("documents/o/9.pdf", tick + timedelta(seconds=30))
    second = poll_new_objects(
        bucket.store,
        ["documents/"],
        first.cursor,
        limits,
        now=T0 + timedelta(minutes=2),
        known_keys=known,
    )
    assert keys_of(second) == ["documents/o/9.pdf"] and len(asked) == 3


def test_prefixes_take_turns_so_a_large_one_does_not_starve_the_others(tmp_path: Path) -> None:
    bucket = Bucket(tmp_path / "b", page_size=1)
    for i in range(6):
        bucket.put(f"a/{i}", T0)
    bucket.put("b/0", T0)
    limits = PollLimits(pages=2, seconds=60, lookback=timedelta(0))
    first = poll_new_objects(bucket.store, ["a/", "b/", "a/x/"], WatchCursor(), limits, now=T0)
    assert keys_of(first) == ["a/0", "a/1"]  # 'a/x/' is covered by 'a/' and not listed twice
    second = poll_new_objects(bucket.store, ["a/", "b/"], first.cursor, limits, now=T0)
    assert keys_of(second) == ["b/0", "a/2"]


class FailingPages(LocalStorage):
    def __init__(self, root: Path, fail_after: int) -> None:
        super().__init__(root, page_size=1)
        self.fail_after = fail_after

    def list_pages(self, prefix="", delimiter=None, *, start_after=None):
        for n, page in enumerate(super().list_pages(prefix, delimiter, start_after=start_after)):
            if n == self.fail_after:
                raise ListingFailed(
                    "listing documents/ failed after 5 attempts: SlowDown (HTTP 503)"
                )
            yield page


def test_a_failed_listing_keeps_the_place_reached(tmp_path: Path) -> None:
    bucket = Bucket(tmp_path / "b")
    for i in range(3):
        bucket.put(f"documents/{i}", T0)
    store = FailingPages(tmp_path / "b", fail_after=1)
    limits = PollLimits(pages=10, seconds=60, lookback=timedelta(0))
    result = poll_new_objects(store, ["documents/"], WatchCursor(), limits, now=T0)
    assert keys_of(result) == ["documents/0"]
    assert "SlowDown" in (result.error or "")
    assert result.cursor.prefixes["documents/"].after == "documents/0"


# --------------------------------------------------------------------------- the database


def test_known_upload_keys_in_one_statement(engine: sa.Engine) -> None:
    now = datetime(2026, 11, 1, 12, 0)
    with engine.begin() as conn:
        conn.execute(
            schema.documents.insert(),
            [
                {
                    "id": "d1",
                    "organization_id": "o",
                    "r2_key": "documents/o/done.pdf",
                    "status": "complete",
                    "created_at": now,
                    "updated_at": now,
                }
            ],
        )
        conn.execute(
            schema.processing_jobs.insert(),
            [
                {"object_key": f"documents/o/{status}.pdf", "status": status, "updated_at": now}
                for status in ("processing", "failed", "not_started", "complete")
            ],
        )
    keys = [
        f"documents/o/{name}.pdf"
        for name in ("done", "processing", "failed", "not_started", "complete", "new")
    ]
    statements: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    with engine.connect() as conn:
        known = known_upload_keys(conn, default_spec(), keys)
    assert known == {
        "documents/o/done.pdf",
        "documents/o/processing.pdf",
        "documents/o/failed.pdf",
        "documents/o/complete.pdf",
    }
    assert len(statements) == 1


def test_peek_and_mark_taken(engine: sa.Engine) -> None:
    ledger.create_ledger(engine)
    now = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)
    with engine.begin() as conn:
        conn.execute(
            ledger.queue.insert(),
            [
                {
                    "object_key": "documents/o/a.pdf",
                    "bucket": "b",
                    "reason": "orphan_object",
                    "run_id": "r",
                    "backend": "table",
                    "state": "pending",
                    "enqueued_at": now,
                    "message_id": None,
                },
                {
                    "object_key": "documents/o/b.pdf",
                    "bucket": "other",
                    "reason": "orphan_object",
                    "run_id": "r",
                    "backend": "table",
                    "state": "pending",
                    "enqueued_at": now,
                    "message_id": None,
                },
                {
                    "object_key": "documents/o/c.pdf",
                    "bucket": "b",
                    "reason": "stuck_job",
                    "run_id": "r",
                    "backend": "table",
                    "state": "pending",
                    "enqueued_at": now,
                    "message_id": None,
                },
                {
                    "object_key": "documents/o/d.pdf",
                    "bucket": "b",
                    "reason": "orphan_object",
                    "run_id": "r",
                    "backend": "sqs",
                    "state": "sent",
                    "enqueued_at": now,
                    "message_id": "m-1",
                },
            ],
        )
    pending = peek_pending(engine, bucket="b")
    assert [p["object_key"] for p in pending] == ["documents/o/a.pdf", "documents/o/c.pdf"]
    assert peek_pending(engine, bucket="b") == pending  # peeking claims nothing
    assert mark_taken(engine, [pending[0]["id"]], ["m-1"]) == 2
    assert mark_taken(engine, [pending[0]["id"]], ["m-1"]) == 0  # only once
    assert [p["object_key"] for p in peek_pending(engine, bucket="b")] == ["documents/o/c.pdf"]
    with engine.connect() as conn:
        states = dict(
            conn.execute(sa.select(ledger.queue.c.object_key, ledger.queue.c.state)).all()
        )
    assert states["documents/o/d.pdf"] == "taken" and states["documents/o/b.pdf"] == "pending"


def test_objects_requested_inside_the_look_back_are_not_requested_again(tmp_path: Path) -> None:
    bucket = Bucket(tmp_path / "b", page_size=10)
    bucket.put("documents/o/a.pdf", T0)
    bucket.put("documents/o/b.pdf", T0)
    limits = PollLimits(pages=5, seconds=60, lookback=timedelta(minutes=15))
    first = poll_new_objects(
        bucket.store, ["documents/"], WatchCursor(), limits, now=T0 + timedelta(minutes=1)
    )
    assert keys_of(first) == ["documents/o/a.pdf", "documents/o/b.pdf"]
    bucket.put("documents/o/c.pdf", T0 + timedelta(minutes=2))
    bucket.put("documents/o/a.pdf", T0 + timedelta(minutes=2), data=b"%PDF v2")
    cursor = WatchCursor.load(first.cursor.dump())
    second = poll_new_objects(
        bucket.store, ["documents/"], cursor, limits, now=T0 + timedelta(minutes=3)
    )
    # inside the look-back all four versions are candidates; b was requested already
    assert keys_of(second) == ["documents/o/a.pdf", "documents/o/c.pdf"]
    assert second.repeated == 1
    assert len(second.cursor.recent) == 4
    cursor = second.cursor
    for minute in (30, 60, 90):  # passes long after: nothing new, and the memory empties
        later = poll_new_objects(
            bucket.store, ["documents/"], cursor, limits, now=T0 + timedelta(minutes=minute)
        )
        assert later.found == []
        cursor = later.cursor
    assert cursor.recent == {}
    small = PollLimits(pages=5, seconds=60, lookback=timedelta(minutes=15), remember=1)
    capped = poll_new_objects(bucket.store, ["documents/"], WatchCursor(), small, now=T0)
    assert len(capped.found) == 3 and len(capped.cursor.recent) == 1


def test_an_sqs_client_takes_its_region_from_an_aws_queue_url(monkeypatch) -> None:
    from integrity.remediation.queue import make_queue, sqs_client

    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    url = "https://sqs.eu-west-1.amazonaws.com/123456789012/uploads"
    assert sqs_client(queue_url=url).meta.region_name == "eu-west-1"
    # remediation's queue makes its client the same way
    assert make_queue(url).client.meta.region_name == "eu-west-1"
