"""Where things are when nothing is configured: the embedded defaults, and the environment names.

With no environment at all, `integrity demo`, `integrity reconcile` and `dagster dev` (all run
from the project root) agree on one SQLite file and one storage directory under `.integrity/`.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_HOME = "INTEGRITY_HOME"
ENV_DB_URL = "INTEGRITY_DB_URL"
ENV_BUCKET = "INTEGRITY_BUCKET"
ENV_ENDPOINT_URL = "AWS_ENDPOINT_URL"
ENV_STORAGE_DIR = "INTEGRITY_STORAGE_DIR"
ENV_SPEC = "INTEGRITY_SPEC"
ENV_QUEUE_URL = "INTEGRITY_QUEUE_URL"
# An S3 Inventory report as the storage side (a manifest.json or a destination's config-id
# folder) and the oldest one that may drive writes (a duration, default 48h).
ENV_INVENTORY = "INTEGRITY_INVENTORY"
ENV_INVENTORY_MAX_AGE = "INTEGRITY_INVENTORY_MAX_AGE"
ENV_ALLOW_WRITES = "INTEGRITY_ALLOW_WRITES"
# How long a remediation or rollback run stays `running` in the ledger without a sign of life
# (seconds, default 180); a run whose lease runs out was interrupted.
ENV_RUN_LEASE = "INTEGRITY_RUN_LEASE_SECONDS"

# The out-of-core diff: the engine's memory limit ("2GB", "512MiB", "50%"; default a quarter of
# the machine's memory) and the directory its spill directories go in (default: system temp).
ENV_MEMORY_LIMIT = "INTEGRITY_MEMORY_LIMIT"
ENV_SPILL_DIR = "INTEGRITY_SPILL_DIR"
ENV_DIFF_IN_MEMORY_BELOW = "INTEGRITY_DIFF_IN_MEMORY_BELOW"  # objects + rows diffed in memory

# The Dagster instance: when the daily reconciliation runs (a 5-field cron, UTC).
ENV_RECONCILE_CRON = "INTEGRITY_RECONCILE_CRON"
# Every sensor's minimum interval in seconds (default: each sensor's own; see defs/intervals.py).
ENV_SENSOR_INTERVAL = "INTEGRITY_SENSOR_INTERVAL_SECONDS"

# The event-driven path (new_object_sensor, bucket_notification_sensor, requeue_sensor);
# read at each tick by integrity.events.EventSettings.from_env.
ENV_WATCH_PREFIXES = "INTEGRITY_WATCH_PREFIXES"  # comma list; default: the uploads prefix head
ENV_WATCH_PAGES = "INTEGRITY_WATCH_PAGES"  # listing pages per tick (default 20)
ENV_WATCH_SECONDS = "INTEGRITY_WATCH_SECONDS"  # time budget per tick (default 20s)
ENV_WATCH_PAGE_SIZE = "INTEGRITY_WATCH_PAGE_SIZE"  # keys per listing page (default 1000)
ENV_WATCH_MAX_RUNS = "INTEGRITY_WATCH_MAX_RUNS"  # run requests per tick (default 500)
ENV_WATCH_LOOKBACK = "INTEGRITY_WATCH_LOOKBACK"  # clock skew and slow uploads (default 15m)
ENV_EVENTS_QUEUE_URL = "INTEGRITY_EVENTS_QUEUE_URL"  # SQS queue of bucket notifications
ENV_EVENTS_DLQ_URL = "INTEGRITY_EVENTS_DLQ_URL"  # where malformed notifications go
ENV_EVENTS_PREFIXES = "INTEGRITY_EVENTS_PREFIXES"  # comma list of key prefixes to process
ENV_EVENTS_SUFFIXES = "INTEGRITY_EVENTS_SUFFIXES"  # comma list of key suffixes, e.g. .pdf
ENV_EVENTS_RECEIVES = "INTEGRITY_EVENTS_RECEIVES"  # receives of 10 messages per tick (default 10)
ENV_EVENTS_VISIBILITY_TIMEOUT = "INTEGRITY_EVENTS_VISIBILITY_TIMEOUT"  # seconds (default 600)
ENV_EVENTS_WAIT_SECONDS = "INTEGRITY_EVENTS_WAIT_SECONDS"  # long poll of a tick's first receive

# The auto-remediation policy (auto_remediation_sensor): kinds applied without a person,
# a comma list or "none"; overrides the spec's policy.auto_remediate when set.
ENV_AUTO_REMEDIATE = "INTEGRITY_AUTO_REMEDIATE"

DEMO_BUCKET = "integrity-demo"


def home() -> Path:
    """The directory for the embedded defaults and snapshots ($INTEGRITY_HOME or ./.integrity)."""
    return Path(os.environ.get(ENV_HOME) or Path.cwd() / ".integrity").expanduser().absolute()


def default_db_url() -> str:
    return os.environ.get(ENV_DB_URL) or f"sqlite:///{home() / 'demo.sqlite'}"


def default_storage_dir() -> Path:
    return (
        Path(os.environ.get(ENV_STORAGE_DIR) or home() / "storage" / DEMO_BUCKET)
        .expanduser()
        .absolute()
    )


def snapshot_dir() -> Path:
    """Where the assets keep their Parquet snapshots."""
    return home() / "snapshots"


# Alerts: where check transitions and failed runs are sent, and the UI their links point at.
ENV_ALERT_WEBHOOK_URL = "INTEGRITY_ALERT_WEBHOOK_URL"
ENV_SLACK_TOKEN = "INTEGRITY_SLACK_TOKEN"
ENV_SLACK_CHANNEL = "INTEGRITY_SLACK_CHANNEL"
ENV_SMTP_HOST = "INTEGRITY_SMTP_HOST"
ENV_SMTP_PORT = "INTEGRITY_SMTP_PORT"
ENV_SMTP_USER = "INTEGRITY_SMTP_USER"
ENV_SMTP_PASSWORD = "INTEGRITY_SMTP_PASSWORD"
ENV_SMTP_STARTTLS = "INTEGRITY_SMTP_STARTTLS"
ENV_ALERT_EMAIL_FROM = "INTEGRITY_ALERT_EMAIL_FROM"
ENV_ALERT_EMAIL_TO = "INTEGRITY_ALERT_EMAIL_TO"
ENV_UI_BASE_URL = "INTEGRITY_UI_BASE_URL"
DEFAULT_UI_BASE_URL = "http://localhost:3000"
