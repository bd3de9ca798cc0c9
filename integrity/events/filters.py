"""Which notified objects the event-driven path requests runs for, one admission per message."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from integrity.events.messages import ObjectEvent, ParsedMessage, parse_notification
from integrity.events.sqs import InboxMessage


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


@dataclass
class Admission:
    """What to do with one message: request runs, dead-letter it, or just delete it."""

    message: InboxMessage
    requests: list[ObjectEvent] = field(default_factory=list)
    dead_letter: str | None = None  # the reason, when the message (or a record) is malformed
    ignored: Counter[str] = field(default_factory=Counter)


IGNORED_REASONS = ("test_event", "other_bucket", "filtered", "not_created")


def admit(
    messages: Iterable[InboxMessage],
    *,
    bucket: str,
    key_filter: KeyFilter,
    parse: Callable[[object], ParsedMessage] = parse_notification,
) -> list[Admission]:
    """One admission per message; the valid records of a partly malformed message are kept."""
    admissions = []
    for message in messages:
        parsed = parse(message.body)
        admission = Admission(message, dead_letter=parsed.reason or None)
        if parsed.format == "s3-test":
            admission.ignored["test_event"] += 1
        for event in parsed.events:
            if event.bucket != bucket:
                admission.ignored["other_bucket"] += 1
            elif not event.created:
                admission.ignored["not_created"] += 1
            elif not key_filter.accepts(event.key):
                admission.ignored["filtered"] += 1
            else:
                admission.requests.append(event)
        admissions.append(admission)
    return admissions


def unique_by_run_key(events: Iterable[ObjectEvent]) -> list[ObjectEvent]:
    """First event per run key, in order: repeats within one tick collapse here already."""
    seen: dict[str, ObjectEvent] = {}
    for event in events:
        seen.setdefault(event.run_key, event)
    return list(seen.values())
