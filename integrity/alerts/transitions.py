"""When to speak: a check's state changes, not its every evaluation.

The state is a map from (asset, check, partition) to the severity of an open failure; a key
that is absent is passing or has never been evaluated. So:

- passing (or unknown) -> failing: one `check_failed` message;
- failing -> failing: silent, however many days it stays red;
- WARN -> ERROR: one more `check_failed` message (an escalation); ERROR -> WARN is silent and the
  failure stays recorded as ERROR, so a check flapping between the two cannot page twice a day;
- failing -> passing: one `check_recovered` message;
- a first-ever evaluation that passes says nothing.

A tick looks at the newest evaluation of each key since the previous tick: a check that failed
and recovered between two ticks is not reported. A transition whose message reached no
destination is not recorded, and the cursor stays before it, so the next tick tries again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from integrity.alerts.message import CHECK_FAILED, CHECK_RECOVERED, AlertMessage, run_url

SEVERITY_RANK = {"WARN": 1, "ERROR": 2}
_SEP = "|"


def state_key(asset: str, check: str, partition: str | None) -> str:
    """The cursor key of one (asset, check, partition); the partition comes last so it may hold anything."""
    return _SEP.join((asset, check, partition or ""))


@dataclass(frozen=True)
class CheckOutcome:
    """One resolved evaluation of a check, as the alerting needs it."""

    asset: str
    check: str
    partition: str | None
    passed: bool
    severity: str
    record_id: int
    run_id: str | None = None
    counts: dict[str, int | float] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    description: str | None = None

    @property
    def key(self) -> str:
        return state_key(self.asset, self.check, self.partition)


@dataclass(frozen=True)
class Transition:
    """A change of state worth a message; `previous_severity` is the recorded failure's."""

    event: str
    outcome: CheckOutcome
    previous_severity: str | None = None

    def message(self, ui_base_url: str | None) -> AlertMessage:
        """A recovery carries the severity the failure had, so it can be routed like the failure."""
        outcome = self.outcome
        recovered = self.event == CHECK_RECOVERED
        return AlertMessage(
            event=self.event,  # type: ignore[arg-type]
            check=outcome.check,
            asset=outcome.asset,
            partition=outcome.partition,
            severity=self.previous_severity if recovered else outcome.severity,
            previous_severity=None if recovered else self.previous_severity,
            counts=dict(outcome.counts),
            examples=list(outcome.examples),
            description=outcome.description,
            run_id=outcome.run_id,
            run_url=run_url(ui_base_url, outcome.run_id),
        )


def _rank(severity: str | None) -> int:
    return SEVERITY_RANK.get((severity or "").upper(), SEVERITY_RANK["ERROR"])


def evaluate(failing: str | None, outcome: CheckOutcome) -> tuple[Transition | None, str | None]:
    """The message (if any) and the new state for one outcome, given the recorded failure severity."""
    if outcome.passed:
        if failing is None:
            return None, None
        return Transition(CHECK_RECOVERED, outcome, previous_severity=failing), None
    if failing is None:
        return Transition(CHECK_FAILED, outcome), outcome.severity
    if _rank(outcome.severity) > _rank(failing):
        return Transition(CHECK_FAILED, outcome, previous_severity=failing), outcome.severity
    return None, failing


@dataclass
class AlertCursor:
    """The sensor's memory: where each check's history was read up to, and what is failing."""

    after: dict[str, int] = field(default_factory=dict)
    failing: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, text: str | None) -> AlertCursor:
        """A cursor from its JSON; an empty or unreadable one starts afresh."""
        if not text:
            return cls()
        try:
            data = json.loads(text)
            return cls(
                after={str(k): int(v) for k, v in data.get("after", {}).items()},
                failing={str(k): str(v) for k, v in data.get("failing", {}).items()},
            )
        except (ValueError, TypeError, AttributeError):
            return cls()

    def to_json(self) -> str:
        return json.dumps(
            {
                "after": dict(sorted(self.after.items())),
                "failing": dict(sorted(self.failing.items())),
            },
            separators=(",", ":"),
        )


@dataclass(frozen=True)
class CheckBatch:
    """What one tick read of one check's history since the cursor.

    `outcomes` are the resolved evaluations in any order; `newest_id` is the highest record id
    read; `hold_before` is the lowest id of an evaluation still running, which the cursor must not
    pass (its result will land under that id later).
    """

    check_id: str
    outcomes: Sequence[CheckOutcome]
    newest_id: int | None
    hold_before: int | None = None


@dataclass
class TickSummary:
    sent: list[Transition] = field(default_factory=list)
    undelivered: list[Transition] = field(default_factory=list)
    deferred: int = 0


def latest_per_key(outcomes: Iterable[CheckOutcome]) -> list[CheckOutcome]:
    """The newest outcome of each key, oldest first."""
    latest: dict[str, CheckOutcome] = {}
    for outcome in outcomes:
        current = latest.get(outcome.key)
        if current is None or outcome.record_id > current.record_id:
            latest[outcome.key] = outcome
    return sorted(latest.values(), key=lambda o: o.record_id)


def run_tick(
    cursor: AlertCursor,
    batches: Sequence[CheckBatch],
    send: Callable[[AlertMessage], bool],
    ui_base_url: str | None,
    max_messages: int,
    max_seconds: float | None = None,
) -> TickSummary:
    """Apply one tick's outcomes to the cursor, sending a message per transition.

    `send` returns whether at least one destination took the message. A transition that was not
    delivered (every destination failed, or the tick's message budget is spent) stops that
    check's batch: its cursor stays before the outcome so the next tick sees it again, and after
    one failed delivery nothing more is attempted this tick. No send starts after `max_seconds`,
    so a slow destination cannot push the tick past the sensor's time limit.
    """
    started = time.monotonic()
    summary = TickSummary()
    delivery_broken = False
    for batch in batches:
        stop_at: int | None = None
        for outcome in latest_per_key(batch.outcomes):
            transition, new_state = evaluate(cursor.failing.get(outcome.key), outcome)
            if transition is not None:
                out_of_time = max_seconds is not None and time.monotonic() - started > max_seconds
                if delivery_broken or out_of_time or len(summary.sent) >= max_messages:
                    summary.deferred += 1
                    stop_at = outcome.record_id
                    break
                if not send(transition.message(ui_base_url)):
                    summary.undelivered.append(transition)
                    delivery_broken = True
                    stop_at = outcome.record_id
                    break
                summary.sent.append(transition)
            if new_state is None:
                cursor.failing.pop(outcome.key, None)
            else:
                cursor.failing[outcome.key] = new_state
        limits = [i - 1 for i in (stop_at, batch.hold_before) if i is not None]
        if batch.newest_id is not None:
            limits.append(batch.newest_id)
        if limits:
            after = min(limits)
            previous = cursor.after.get(batch.check_id)
            cursor.after[batch.check_id] = after if previous is None else max(previous, after)
    return summary
