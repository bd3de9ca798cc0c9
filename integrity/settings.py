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
ENV_ALLOW_WRITES = "INTEGRITY_ALLOW_WRITES"

# The Dagster instance: when the daily reconciliation runs (a 5-field cron, UTC).
ENV_RECONCILE_CRON = "INTEGRITY_RECONCILE_CRON"

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
