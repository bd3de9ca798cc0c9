"""Resources: where the bucket, the database and the spec are, chosen by the environment.

With no environment the embedded defaults apply (the demo's SQLite file and storage directory
under `.integrity/`); INTEGRITY_BUCKET switches storage to an S3-compatible bucket,
INTEGRITY_DB_URL picks another database, INTEGRITY_SPEC another spec and INTEGRITY_QUEUE_URL
an SQS queue for remediation's re-queues (else a table in the database); INTEGRITY_INVENTORY
reads storage from an S3 Inventory report instead of a listing, and INTEGRITY_INVENTORY_MAX_AGE
is the oldest such report remediation may write from. Nothing here touches
the network when the definitions load: stores and engines are made when a step or tick asks.

The engine, the store and the queue clients are built by integrity.connections from
integrity.settings.Settings, the same builders and the same messages as the CLI's: endpoints and
regions follow boto3's convention there (AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL for the bucket,
AWS_ENDPOINT_URL_SQS or else the queue URL's own server for the queue), with one region fallback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import sqlalchemy as sa
from pydantic import Field

from integrity import connections, settings
from integrity.defs.alerts.resources import alerts_resource_from_env, env_var_when_set
from integrity.durations import parse_duration
from integrity.inventory import safe_url
from integrity.inventory.reports import InventoryReport, open_report
from integrity.remediation.queue import WorkQueue
from integrity.settings import Settings
from integrity.spec import ReconciliationSpec, load_spec
from integrity.storage.base import ObjectStore

# How the resources' fields are named in the messages the shared builders raise.
STORAGE_NAMES = {
    "bucket": "storage.bucket",
    "storage_dir": "storage.storage_dir",
    "endpoint_url": "storage.endpoint_url",
    "region": "storage.region_name",
}


class StorageResource(dg.ConfigurableResource):
    """The bucket to reconcile: S3-compatible when `bucket` is set, else a local directory.

    Credentials are never fields here: boto3 finds them in the standard AWS environment or
    config files, so they stay out of run config, logs and metadata.
    """

    bucket: str | None = Field(
        default=None, description="S3 bucket name; unset means the local storage directory."
    )
    endpoint_url: str | None = Field(
        default=None,
        description="S3-compatible endpoint (MinIO, R2); unset means AWS_ENDPOINT_URL_S3, "
        "else AWS_ENDPOINT_URL, else AWS S3. Never used for a queue.",
    )
    region_name: str | None = Field(
        default=None,
        description="Region ('auto' for R2); unset means AWS_REGION, else the AWS default chain.",
    )
    max_attempts: int = Field(default=5, description="boto3 attempts per request.")
    listing_attempts: int = Field(
        default=5,
        ge=1,
        description="Attempts per listing page (with backoff) before the inventory is marked incomplete.",
    )
    storage_dir: str | None = Field(
        default=None,
        description="Local directory standing in for a bucket; unset means the embedded default.",
    )
    inventory: str | None = Field(
        default=None,
        description="An S3 Inventory report to read storage from instead of listing it: a "
        "manifest.json or a destination s3://dest/prefix/source-bucket/config-id/ (its newest "
        "complete report); unset means the spec's inventory_report.source, else a listing.",
    )
    inventory_max_age: str | None = Field(
        default=None,
        description="The oldest inventory report remediation may write from (a duration: 48h, "
        "2d); unset means the spec's inventory_report.max_age (default 48h).",
    )

    def get_store(self) -> ObjectStore:
        # This resource's fields decide bucket or directory; the environment's AWS settings
        # (endpoints, region, checksums) apply as they do for the CLI.
        conf = connections.without_location(Settings.from_env())
        return connections.make_store(
            conf,
            bucket=self.bucket,
            storage_dir=Path(self.storage_dir) if self.storage_dir else None,
            endpoint_url=self.endpoint_url,
            region=self.region_name,
            max_attempts=self.max_attempts,
            listing_attempts=self.listing_attempts,
            names=STORAGE_NAMES,
            check_directory=False,  # the listing says so, with the step's own message
        )

    def _client(self) -> Any:
        return connections.s3_client(
            Settings.from_env(), self.endpoint_url, self.region_name, max_attempts=self.max_attempts
        )

    def inventory_report(
        self, spec: ReconciliationSpec, store: ObjectStore
    ) -> InventoryReport | None:
        """The inventory report storage is read from (this resource's `inventory`, else the
        spec's inventory_report.source), checked against the bucket; None means a listing."""
        source, option = self.inventory, settings.ENV_INVENTORY
        if not source:
            source, option = spec.inventory_report.source, "inventory_report.source"
        if not source:
            return None
        report = open_report(
            source,
            client=getattr(store, "client", None) if store.backend == "s3" else None,
            client_factory=self._client,
            option=option,
        )
        report.check_bucket(store.bucket)
        return report

    def max_inventory_age(self, spec: ReconciliationSpec) -> timedelta:
        if self.inventory_max_age:
            return parse_duration(self.inventory_max_age, option=settings.ENV_INVENTORY_MAX_AGE)
        return spec.inventory_report.max_age_delta


class DatabaseResource(dg.ConfigurableResource):
    """The SQL database whose rows reference objects (a SQLAlchemy URL)."""

    url: str | None = Field(
        default=None, description="SQLAlchemy URL; unset means the embedded demo SQLite file."
    )

    @property
    def resolved_url(self) -> str:
        return self.url or Settings.from_env().database_url

    @property
    def description(self) -> str:
        """The URL with its password hidden."""
        return safe_url(self.resolved_url)

    @contextmanager
    def engine(self) -> Iterator[sa.Engine]:
        """An engine for one step or tick, disposed afterwards (integrity.connections.make_engine:
        a missing SQLite file or a bad URL is the same one-line error as the CLI's)."""
        conf = Settings.from_env()
        option = settings.ENV_DB_URL if self.url and self.url == conf.db_url else "database.url"
        engine = connections.make_engine(self.resolved_url, option=option, conf=conf)
        try:
            yield engine
        finally:
            engine.dispose()


class SpecResource(dg.ConfigurableResource):
    """The reconciliation spec: a YAML/JSON file, or the reference schema's spec."""

    path: str | None = Field(
        default=None, description="Spec file; unset means the reference schema's spec."
    )

    def load(self) -> ReconciliationSpec:
        return load_spec(self.path)


class QueueResource(dg.ConfigurableResource):
    """Where remediation re-queues objects: an SQS queue when `queue_url` is set, else the
    `integrity_queue` table in the database, written in the same transaction as the job reset.

    Credentials are never fields here: boto3 finds them in the standard AWS environment.
    """

    queue_url: str | None = Field(
        default=None, description="SQS queue URL; unset means the integrity_queue table."
    )
    endpoint_url: str | None = Field(
        default=None,
        description="SQS-compatible endpoint; unset means AWS_ENDPOINT_URL_SQS, else the queue "
        "URL's own server (AWS_ENDPOINT_URL is the bucket's and never applies).",
    )
    region: str | None = Field(
        default=None,
        description="Region; unset means the one an AWS queue URL names, else AWS_REGION.",
    )

    def sqs_client(self, queue_url: str | None = None) -> Any:
        """The SQS client for a queue URL (default: `queue_url`), as every Dagster path makes it:
        remediation's outbox, requeue_sensor and bucket_notification_sensor. Sends nothing."""
        return connections.sqs_client(
            Settings.from_env(),
            queue_url or self.queue_url,
            endpoint_url=self.endpoint_url,
            region=self.region,
        )

    def get_queue(self) -> WorkQueue:
        """The queue; builds a client but sends nothing (remediation checks access itself)."""
        return connections.make_queue(
            Settings.from_env(), self.queue_url, endpoint_url=self.endpoint_url, region=self.region
        )


def resources_from_env(conf: Settings | None = None) -> dict[str, dg.ConfigurableResource]:
    """The resources as the environment describes them; no I/O happens here."""
    conf = conf or Settings.from_env()

    def _from_env(name: str) -> dg.EnvVar | None:
        return env_var_when_set(conf, name)

    # Endpoints and regions are left to the client builders, which the CLI shares: an explicit
    # endpoint here would hide AWS_ENDPOINT_URL_S3, and the bucket's would reach the queue.
    return {
        "storage": StorageResource(
            bucket=_from_env(settings.ENV_BUCKET),
            storage_dir=_from_env(settings.ENV_STORAGE_DIR),
            inventory=_from_env(settings.ENV_INVENTORY),
            inventory_max_age=_from_env(settings.ENV_INVENTORY_MAX_AGE),
        ),
        "database": DatabaseResource(url=_from_env(settings.ENV_DB_URL)),
        "spec": SpecResource(path=_from_env(settings.ENV_SPEC)),
        "queue": QueueResource(queue_url=_from_env(settings.ENV_QUEUE_URL)),
        "alerts": alerts_resource_from_env(conf),
    }
