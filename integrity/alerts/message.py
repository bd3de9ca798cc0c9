"""What an alert says: one message model, rendered as JSON, chat text and an email.

The same message goes to every destination, so a person sees the same check, counts, examples
and run link whether it reaches them by webhook, Slack or email.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

CHECK_FAILED = "check_failed"
CHECK_RECOVERED = "check_recovered"
RUN_FAILED = "run_failed"
AlertEvent = Literal["check_failed", "check_recovered", "run_failed"]

MAX_EXAMPLES = 5
DEFAULT_UI_BASE_URL = "http://localhost:3000"
_EXAMPLE_LIMIT = 200
_TEXT_LIMIT = 500


def run_url(base_url: str | None, run_id: str | None) -> str | None:
    """The run's page in the Dagster UI (`{base}/runs/{run_id}`)."""
    if not run_id:
        return None
    return f"{(base_url or DEFAULT_UI_BASE_URL).rstrip('/')}/runs/{run_id}"


def _clip(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def first_line(text: str | None) -> str:
    """The first non-empty line of an error, for a message that fits a chat line."""
    for line in (text or "").splitlines():
        if line.strip():
            return _clip(line.strip(), _TEXT_LIMIT)
    return ""


@dataclass(frozen=True)
class AlertMessage:
    """One alert: a check that failed or recovered, or a run that failed."""

    event: AlertEvent
    check: str | None = None
    asset: str | None = None
    partition: str | None = None
    severity: str | None = None
    previous_severity: str | None = None
    counts: dict[str, int | float] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)
    description: str | None = None
    run_id: str | None = None
    run_url: str | None = None
    job: str | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        # Capped here so no destination can send an unbounded list.
        clipped = [_clip(example, _EXAMPLE_LIMIT) for example in self.examples[:MAX_EXAMPLES]]
        object.__setattr__(self, "examples", clipped)
        if self.error is not None:
            object.__setattr__(self, "error", first_line(self.error))

    @property
    def subject(self) -> str:
        """One line: what happened and where."""
        where = f" [{self.partition}]" if self.partition else ""
        if self.event == RUN_FAILED:
            return f"integrity: run of {self.job} failed{where}"
        if self.event == CHECK_RECOVERED:
            return f"integrity: {self.check} on {self.asset} recovered{where}"
        if self.previous_severity:
            return (
                f"integrity: {self.check} on {self.asset} escalated "
                f"{self.previous_severity} -> {self.severity}{where}"
            )
        return f"integrity: {self.check} on {self.asset} failed ({self.severity}){where}"

    @property
    def text(self) -> str:
        """Plain text for chat and email: subject, counts, examples and the run link."""
        lines = [self.subject]
        if self.event == RUN_FAILED:
            lines.append(f"job: {self.job}")
            if self.partition:
                lines.append(f"partition: {self.partition}")
            if self.error:
                lines.append(f"error: {self.error}")
        else:
            lines.append(f"check: {self.check} on asset {self.asset}")
            if self.partition:
                lines.append(f"partition: {self.partition}")
            if self.event == CHECK_FAILED:
                lines.append(f"severity: {self.severity}")
            if self.description:
                lines.append(_clip(self.description, _TEXT_LIMIT))
        if self.counts:
            lines.append("counts: " + ", ".join(f"{k}={v}" for k, v in self.counts.items()))
        if self.examples:
            lines.append(f"examples (up to {MAX_EXAMPLES}):")
            lines.extend(f"  - {example}" for example in self.examples)
        if self.run_url:
            lines.append(f"run: {self.run_url}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        """The webhook body: every field, plus the rendered text."""
        return {
            "event": self.event,
            "check": self.check,
            "asset": self.asset,
            "partition": self.partition,
            "severity": self.severity,
            "previous_severity": self.previous_severity,
            "counts": dict(self.counts),
            "examples": list(self.examples),
            "description": self.description,
            "run_id": self.run_id,
            "run_url": self.run_url,
            "job": self.job,
            "error": self.error,
            "text": self.text,
        }
