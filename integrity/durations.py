"""Durations as people type them on a command line: 3600, 90s, 15m, 1h, 3d, 1h30m."""

from __future__ import annotations

import math
import re
from datetime import timedelta

from integrity.errors import UsageError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
# The longest duration accepted: far beyond any age or wait that makes sense, and well inside
# what timedelta, pandas' Timedelta (about 292 years) and time.sleep can hold.
MAX_DAYS = 36500
MAX_DURATION = timedelta(days=MAX_DAYS)


def parse_duration(text: str, *, option: str = "duration") -> timedelta:
    """Seconds (a plain number) or number-unit pairs; raise UsageError naming the option."""
    value = text.strip().lower()
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        seconds = float(value)
    else:
        parts = _PART.findall(value)
        if not value or "".join(n + u for n, u in parts) != value:
            raise UsageError(
                f"{option}: {text!r} is not a duration (use seconds or a number with a unit: 90s, 15m, 1h, 3d)"
            )
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds > MAX_DURATION.total_seconds():
        raise UsageError(f"{option}: {_clip(text)!r} is too long (at most {MAX_DAYS}d)")
    return timedelta(seconds=seconds)


def _clip(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def format_duration(delta: timedelta) -> str:
    """The shortest exact spelling, for messages: 3600 s -> '1h', 5400 s -> '1h30m'."""
    seconds = int(delta.total_seconds())
    if seconds == 0:
        return "0s"
    out = ""
    for unit in ("d", "h", "m", "s"):
        count, seconds = divmod(seconds, _UNITS[unit])
        if count:
            out += f"{count}{unit}"
    return out
