"""The event-driven path's settings, read from an environment mapping in one place."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from integrity import settings
from integrity.durations import parse_duration
from integrity.errors import UsageError
from integrity.events.filters import KeyFilter, split_list
from integrity.events.poll import PollLimits
from integrity.spec import ReconciliationSpec


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
    """The event-driven path's settings; `event_settings_from` reads them at each tick."""

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

    def prefixes_or(self, spec: ReconciliationSpec) -> tuple[str, ...]:
        """The watched prefixes: the setting, else the head of the spec's uploads prefix."""
        if self.watch_prefixes:
            return self.watch_prefixes
        if spec.uploads is None:
            return ()
        return (spec.uploads.prefix.split("{", 1)[0],)


def event_settings_from(environ: Mapping[str, str]) -> EventSettings:
    """The event-driven path's settings from an environment mapping (callers pass `os.environ`).

    Raise UsageError naming the variable when a value cannot be used.
    """
    seconds = _duration_setting(environ, settings.ENV_WATCH_SECONDS, timedelta(seconds=20))
    if not timedelta(seconds=0) < seconds <= timedelta(seconds=50):
        raise UsageError(
            f"{settings.ENV_WATCH_SECONDS}: must be above 0 and at most 50 seconds "
            "(a sensor tick may take 60)"
        )
    return EventSettings(
        watch_prefixes=split_list(environ.get(settings.ENV_WATCH_PREFIXES)),
        watch=PollLimits(
            pages=_int_setting(environ, settings.ENV_WATCH_PAGES, 20, 1, 1000),
            seconds=seconds.total_seconds(),
            max_found=_int_setting(environ, settings.ENV_WATCH_MAX_RUNS, 500, 1, 10000),
            lookback=_duration_setting(environ, settings.ENV_WATCH_LOOKBACK, timedelta(minutes=15)),
        ),
        page_size=_int_setting(environ, settings.ENV_WATCH_PAGE_SIZE, 1000, 1, 1000),
        events_queue_url=environ.get(settings.ENV_EVENTS_QUEUE_URL) or None,
        events_dlq_url=environ.get(settings.ENV_EVENTS_DLQ_URL) or None,
        events_filter=KeyFilter(
            split_list(environ.get(settings.ENV_EVENTS_PREFIXES)),
            split_list(environ.get(settings.ENV_EVENTS_SUFFIXES)),
        ),
        receives=_int_setting(environ, settings.ENV_EVENTS_RECEIVES, 10, 1, 100),
        visibility_timeout=_int_setting(
            environ, settings.ENV_EVENTS_VISIBILITY_TIMEOUT, 600, 60, 43200
        ),
        wait_seconds=_int_setting(environ, settings.ENV_EVENTS_WAIT_SECONDS, 1, 0, 20),
        tick_seconds=seconds.total_seconds(),
    )
