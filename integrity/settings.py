"""The configuration: every environment variable the project reads, read once into `Settings`.

`Settings.from_env()` is the one place the environment is read (integrity.events keeps its own
event-path variables for now). The CLI reads it once per command and the Dagster resources when
the definitions load or a step runs; the core takes the values as arguments and reads no
environment. With no environment at all, `integrity demo`, `integrity reconcile` and
`dagster dev` (all run from the project root) agree on one SQLite file and one storage directory
under `.integrity/`.

Values that need parsing (durations, numbers, kind lists) are kept as written and parsed by the
accessor that needs them, which raises one UsageError or SpecError naming the variable: a bad
value fails the command that uses it, not every command. Secrets are never stored: AWS
credentials follow the standard AWS chain inside boto3, and the alert secrets (webhook URL, Slack
token, SMTP password) reach the alerts resource as `EnvVar`s, so `Settings` only records that
they are set.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
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
# read at each tick by integrity.events.settings.event_settings_from.
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

ALERT_VARIABLES = (
    ENV_ALERT_WEBHOOK_URL,
    ENV_SLACK_TOKEN,
    ENV_SLACK_CHANNEL,
    ENV_SMTP_HOST,
    ENV_SMTP_PORT,
    ENV_SMTP_USER,
    ENV_SMTP_PASSWORD,
    ENV_SMTP_STARTTLS,
    ENV_ALERT_EMAIL_FROM,
    ENV_ALERT_EMAIL_TO,
    ENV_UI_BASE_URL,
)

# AWS: where the clients point (credentials are boto3's standard chain and never read here).
ENV_REGION = "AWS_REGION"
ENV_DEFAULT_REGION = "AWS_DEFAULT_REGION"
ENV_ENDPOINT_URL_S3 = f"{ENV_ENDPOINT_URL}_S3"
ENV_ENDPOINT_URL_SQS = f"{ENV_ENDPOINT_URL}_SQS"
ENV_IGNORE_ENDPOINTS = "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"
ENV_REQUEST_CHECKSUM = "AWS_REQUEST_CHECKSUM_CALCULATION"
ENV_RESPONSE_CHECKSUM = "AWS_RESPONSE_CHECKSUM_VALIDATION"
# Arrow's allocator: set, it overrides the system allocator integrity.inventory.snapshots picks.
ENV_ARROW_MEMORY_POOL = "ARROW_DEFAULT_MEMORY_POOL"
ENV_DEBUG = "INTEGRITY_DEBUG"  # the CLI shows a traceback for an unexpected error

DEFAULT_LEASE_SECONDS = 180.0
MAX_LEASE_SECONDS = 86_400.0


def _get(environ: Mapping[str, str], name: str) -> str | None:
    """A variable's value, None when unset or blank (blank never means 'this value')."""
    value = environ.get(name)
    return value if value is not None and value.strip() else None


def _path(value: str | None) -> Path | None:
    return Path(value).expanduser().absolute() if value else None


@dataclass(frozen=True)
class Settings:
    """Every INTEGRITY_* and AWS value the project uses, as the environment gave them."""

    home: Path
    home_set: bool = False  # INTEGRITY_HOME gave it (else ./.integrity)
    db_url: str | None = field(default=None, repr=False)  # may carry a password
    bucket: str | None = None
    storage_dir: Path | None = None
    spec: str | None = None
    queue_url: str | None = field(default=None, repr=False)  # may carry a user and password
    inventory: str | None = None
    inventory_max_age: str | None = None
    allow_writes: bool = False
    run_lease: str | None = None
    memory_limit: str | None = None
    spill_dir: Path | None = None
    diff_in_memory_below: str | None = None
    auto_remediate: str | None = None
    reconcile_cron: str | None = None
    sensor_interval: str | None = None
    watch_prefixes: str | None = None  # set: new_object_sensor runs by default
    events_queue_url: str | None = field(default=None, repr=False)  # set: the event sensor runs
    region: str | None = None
    region_variable: str | None = None  # AWS_REGION or AWS_DEFAULT_REGION, whichever gave it
    endpoint_url: str | None = None  # AWS_ENDPOINT_URL: the bucket's (never the queue's)
    ignore_configured_endpoints: bool = False  # AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true
    s3_endpoint_url: str | None = None
    sqs_endpoint_url: str | None = None
    request_checksum_calculation: str | None = None
    response_checksum_validation: str | None = None
    arrow_memory_pool: str | None = None
    debug: bool = False
    alerts_set: frozenset[str] = frozenset()
    """The alert variables that are set; their values (secrets among them) are not kept."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Settings:
        """Read the environment once; nothing is parsed that could fail here (see the module)."""
        home = Path(_get(environ, ENV_HOME) or Path.cwd() / ".integrity").expanduser().absolute()
        region_variable = next(
            (n for n in (ENV_REGION, ENV_DEFAULT_REGION) if _get(environ, n)), None
        )
        return cls(
            home=home,
            home_set=_get(environ, ENV_HOME) is not None,
            db_url=_get(environ, ENV_DB_URL),
            bucket=_get(environ, ENV_BUCKET),
            storage_dir=_path(_get(environ, ENV_STORAGE_DIR)),
            spec=_get(environ, ENV_SPEC),
            queue_url=_get(environ, ENV_QUEUE_URL),
            inventory=_get(environ, ENV_INVENTORY),
            inventory_max_age=_get(environ, ENV_INVENTORY_MAX_AGE),
            allow_writes=environ.get(ENV_ALLOW_WRITES) == "1",
            run_lease=_get(environ, ENV_RUN_LEASE),
            memory_limit=_get(environ, ENV_MEMORY_LIMIT),
            spill_dir=_path(_get(environ, ENV_SPILL_DIR)),
            diff_in_memory_below=_get(environ, ENV_DIFF_IN_MEMORY_BELOW),
            auto_remediate=environ.get(ENV_AUTO_REMEDIATE),  # "" means no kinds, as before
            reconcile_cron=_get(environ, ENV_RECONCILE_CRON),
            sensor_interval=_get(environ, ENV_SENSOR_INTERVAL),
            watch_prefixes=_get(environ, ENV_WATCH_PREFIXES),
            events_queue_url=_get(environ, ENV_EVENTS_QUEUE_URL),
            region=_get(environ, region_variable) if region_variable else None,
            region_variable=region_variable,
            endpoint_url=_get(environ, ENV_ENDPOINT_URL),
            ignore_configured_endpoints=(environ.get(ENV_IGNORE_ENDPOINTS) or "").strip().lower()
            == "true",
            s3_endpoint_url=_get(environ, ENV_ENDPOINT_URL_S3),
            sqs_endpoint_url=_get(environ, ENV_ENDPOINT_URL_SQS),
            request_checksum_calculation=_get(environ, ENV_REQUEST_CHECKSUM),
            response_checksum_validation=_get(environ, ENV_RESPONSE_CHECKSUM),
            arrow_memory_pool=_get(environ, ENV_ARROW_MEMORY_POOL),
            debug=bool(_get(environ, ENV_DEBUG)),
            alerts_set=frozenset(n for n in ALERT_VARIABLES if _get(environ, n)),
        )

    def is_set(self, name: str) -> bool:
        """Whether a variable the resources read at run time (as an EnvVar) is set."""
        if name in self.alerts_set:
            return True
        field_name = _RESOURCE_FIELDS.get(name)
        return field_name is not None and getattr(self, field_name) is not None

    # ------------------------------------------------------------------ resolved values

    @property
    def database_url(self) -> str:
        """INTEGRITY_DB_URL, else the demo SQLite file under the home."""
        return self.db_url or demo_db_url(self.home)

    @property
    def storage_directory(self) -> Path:
        """INTEGRITY_STORAGE_DIR, else the demo storage directory under the home."""
        return self.storage_dir or self.home / "storage" / DEMO_BUCKET

    @property
    def snapshot_dir(self) -> Path:
        """Where the assets keep their Parquet snapshots."""
        return self.home / "snapshots"

    @property
    def s3_endpoint(self) -> tuple[str | None, str | None]:
        """The bucket's endpoint and the variable it came from: AWS_ENDPOINT_URL_S3, else
        AWS_ENDPOINT_URL (boto3's order); (None, None) leaves it to the AWS config file, and so
        does AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true (which botocore applies to that too)."""
        if self.ignore_configured_endpoints:
            return None, None
        if self.s3_endpoint_url:
            return self.s3_endpoint_url, ENV_ENDPOINT_URL_S3
        if self.endpoint_url:
            return self.endpoint_url, ENV_ENDPOINT_URL
        return None, None

    @property
    def checksums(self) -> dict[str, str]:
        """The checksum settings the environment gives (botocore's config names)."""
        given = {
            "request_checksum_calculation": self.request_checksum_calculation,
            "response_checksum_validation": self.response_checksum_validation,
        }
        return {name: value for name, value in given.items() if value}

    def inventory_max_age_delta(self) -> timedelta | None:
        """INTEGRITY_INVENTORY_MAX_AGE as a duration; None when unset."""
        if not self.inventory_max_age:
            return None
        from integrity.durations import parse_duration

        return parse_duration(self.inventory_max_age, option=ENV_INVENTORY_MAX_AGE)

    def lease_seconds(self) -> float:
        """INTEGRITY_RUN_LEASE_SECONDS, else DEFAULT_LEASE_SECONDS; SpecError naming it."""
        return parse_lease(self.run_lease)


# The variables the Dagster resources take as EnvVars, and the Settings field of each.
_RESOURCE_FIELDS = {
    ENV_DB_URL: "db_url",
    ENV_BUCKET: "bucket",
    ENV_STORAGE_DIR: "storage_dir",
    ENV_SPEC: "spec",
    ENV_QUEUE_URL: "queue_url",
    ENV_INVENTORY: "inventory",
    ENV_INVENTORY_MAX_AGE: "inventory_max_age",
}


def parse_lease(raw: str | None) -> float:
    """A run lease in seconds (above 0, at most a day); SpecError naming the variable."""
    if raw is None or not raw.strip():
        return DEFAULT_LEASE_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (0 < value <= MAX_LEASE_SECONDS):
        from integrity.errors import SpecError

        raise SpecError(
            f"{ENV_RUN_LEASE}: must be a number of seconds above 0 and at most "
            f"{MAX_LEASE_SECONDS:,.0f}, not {raw!r}"
        )
    return value


def demo_db_url(home: Path) -> str:
    return f"sqlite:///{home / 'demo.sqlite'}"


def home() -> Path:
    """The directory for the embedded defaults and snapshots ($INTEGRITY_HOME or ./.integrity)."""
    return Settings.from_env().home


def default_db_url() -> str:
    return Settings.from_env().database_url


def default_storage_dir() -> Path:
    return Settings.from_env().storage_directory


def snapshot_dir() -> Path:
    """Where the assets keep their Parquet snapshots."""
    return Settings.from_env().snapshot_dir


def arrow_pool_chosen(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ARROW_DEFAULT_MEMORY_POOL names Arrow's allocator (else the system's is used)."""
    return Settings.from_env(environ).arrow_memory_pool is not None
