"""How often the sensors look: each sensor's own interval, or one for all of them.

INTEGRITY_SENSOR_INTERVAL_SECONDS, when set, is every sensor's minimum interval (whole seconds,
at least 1). It is read when the definitions load, like INTEGRITY_RECONCILE_CRON, so the UI and
the daemon agree on it; a value that is not a whole number of seconds stops the load with one
line naming the variable. A short interval makes an instance react within seconds (a test
instance, a demo); in production each sensor's own interval is the one to keep. A leaf module:
it imports nothing from the Dagster layer.
"""

from __future__ import annotations

from integrity import settings
from integrity.errors import UsageError
from integrity.settings import Settings


def sensor_interval(default: int) -> int:
    """The minimum interval of a sensor whose own is `default` seconds."""
    raw = (Settings.from_env().sensor_interval or "").strip()
    if not raw:
        return default
    try:
        seconds = int(raw)
    except ValueError:
        seconds = 0
    if seconds < 1:
        raise UsageError(
            f"{settings.ENV_SENSOR_INTERVAL}={raw!r} is not a sensor interval: use a whole "
            f"number of seconds, at least 1, e.g. '30' (unset, each sensor keeps its own)"
        )
    return seconds
