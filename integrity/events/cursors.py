"""The event sensors' cursors, kept between ticks as JSON.

`InboxCursor` is the two-phase hand-over of a queue-draining sensor; `WatchCursor` is where the
listing poll is in each watched prefix.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from integrity.events.messages import parse_time


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


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(timezone.utc).isoformat()


def _from_iso(value: object) -> datetime | None:
    return parse_time(value) if value else None


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
