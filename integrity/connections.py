"""The one place the database engine, the object store and the queue client are built.

The CLI (flags over the environment) and the Dagster resources (resource config over the
environment) both build through here from a `Settings`, so they agree on the endpoint, the
region, the checksum settings and every message. An explicit value (a flag, a resource field) wins
over the environment; `names` says how to call it in a message.

Regions have one fallback for every client: the explicit region, else AWS_REGION, else
AWS_DEFAULT_REGION, else the AWS profile's, else us-east-1 (what AWS's global S3 endpoint and
every S3- or SQS-compatible server accept). A queue URL on AWS names its own region, which wins
over the environment's. Credentials always come from the standard AWS chain inside boto3.

Nothing here sends a request: clients are made, not used. Heavy imports (SQLAlchemy, boto3)
happen inside the builders, so importing this module is cheap.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from integrity import settings as names_
from integrity.errors import DatabaseError, QueueError, UsageError, shown, without_userinfo
from integrity.settings import Settings

if TYPE_CHECKING:
    import sqlalchemy as sa

    from integrity.engine import EngineLimits
    from integrity.remediation.queue import WorkQueue
    from integrity.storage.base import ObjectStore

DEFAULT_REGION = "us-east-1"

# How an explicit value is named in messages: the CLI's flags unless told otherwise.
CLI_NAMES: Mapping[str, str] = {
    "db_url": "--db-url",
    "bucket": "--bucket",
    "storage_dir": "--storage-dir",
    "endpoint_url": "--endpoint-url",
    "region": "--region",
    "queue_url": "--queue-url",
}

# botocore's own rules: a bucket name as its parameter validation accepts it, a region name as
# its endpoint resolver does.
_BUCKET_NAME = re.compile(r"[A-Za-z0-9.\-_]{1,255}")
_REGION_NAME = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9\-]{0,61}[a-zA-Z0-9])?")


# --------------------------------------------------------------------------- checks


def check_bucket_name(bucket: str, option: str) -> None:
    if not _BUCKET_NAME.fullmatch(bucket):
        raise UsageError(
            f"{option}: {shown(bucket)} is not a bucket name (letters, digits, '.', '-', '_')"
        )


def check_region(region: str, option: str) -> None:
    if not _REGION_NAME.fullmatch(region):
        raise UsageError(f"{option}: {shown(region)} is not a region name (e.g. us-east-1, auto)")


def check_endpoint_url(url: str, option: str) -> None:
    """An S3 endpoint is http(s)://host[:port][/path]; botocore's own error for anything else
    ("Invalid endpoint") names neither the option nor what is missing. Credentials in it are
    refused without showing them."""
    example = "(e.g. http://127.0.0.1:9000 or https://ACCOUNT.r2.cloudflarestorage.com)"
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise UsageError(
            f"{option}: {shown(without_userinfo(url))} is not a URL {example}"
        ) from None
    if parts.username is not None or parts.password is not None:
        raise UsageError(
            f"{option}: must not carry credentials (use AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY or a profile)"
        )
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(
            f"{option}: {shown(url)} is not an http:// or https:// URL with a host {example}"
        )
    if port is not None and not 1 <= port <= 65535:
        raise UsageError(f"{option}: port {port} is not between 1 and 65535")


def check_storage_dir(directory: Path, option: str) -> None:
    directory = directory.expanduser()
    if not directory.exists():
        raise UsageError(f"{option}: {directory} does not exist")
    if not directory.is_dir():
        raise UsageError(f"{option}: {directory} is not a directory")
    if not os.access(directory, os.R_OK | os.X_OK):
        raise UsageError(f"{option}: {directory} is not readable")


# --------------------------------------------------------------------------- database


def db_url(conf: Settings, explicit: str | None = None) -> tuple[str, str]:
    """The database URL and how to name it in messages (the explicit option, else the variable;
    the embedded default is named as the explicit option, which is where to change it)."""
    if explicit:
        return explicit, CLI_NAMES["db_url"]
    return conf.database_url, names_.ENV_DB_URL if conf.db_url else CLI_NAMES["db_url"]


def make_engine(url: str, *, option: str = "--db-url", conf: Settings | None = None) -> sa.Engine:
    """An engine for the URL, with a readable error for a missing SQLite file or a bad URL.

    `option` is where the URL came from (a flag, a resource field or the environment variable),
    for messages; the URL itself is shown only with its password hidden, or not at all when it
    cannot be parsed. A SQLite file that does not exist is an error rather than a new empty
    database, so a mistyped path is reported instead of reconciling against nothing."""
    import sqlalchemy as sa

    from integrity.database import database_url
    from integrity.inventory import safe_url

    try:
        parsed = database_url(url)
    except sa.exc.ArgumentError:
        raise UsageError(
            f"{option}: not a valid SQLAlchemy URL (e.g. postgresql://user@host/db)"
        ) from None
    except ValueError:  # SQLAlchemy reads the port with int(): 'h:notaport', '[::1' unclosed
        raise UsageError(
            f"{option}: not a valid SQLAlchemy URL: the port must be a number "
            "(e.g. postgresql://user@host:5432/db)"
        ) from None
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        raise UsageError(
            f"{option}: {safe_url(parsed)}: port {parsed.port} is not between 1 and 65535"
        )
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        local_file = database and database != ":memory:" and not database.startswith("file:")
        if local_file and Path(database).is_dir():
            raise UsageError(f"{option}: {database} is a directory, not a SQLite database file")
        if local_file and not Path(database).is_file():
            demo = conf is not None and Path(database).absolute() == conf.home / "demo.sqlite"
            hint = "run 'integrity demo' to create it" if demo else f"check {option}"
            raise DatabaseError(f"SQLite database file {database} does not exist ({hint})")
    try:
        return sa.create_engine(parsed)
    except sa.exc.ArgumentError as exc:
        reason = str(exc).splitlines()[0][:200]
        raise UsageError(f"{option}: {safe_url(url)}: {reason}") from None
    except ImportError as exc:
        raise DatabaseError(
            f"no driver for {safe_url(url)}: {exc.name or exc} is not installed"
        ) from None


def engine_limits(conf: Settings) -> EngineLimits:
    """The out-of-core diff's limits from INTEGRITY_MEMORY_LIMIT, _SPILL_DIR, _DIFF_IN_MEMORY_BELOW."""
    from integrity.engine import EngineLimits

    return EngineLimits.from_settings(conf)


# --------------------------------------------------------------------------- AWS


def s3_region(conf: Settings, explicit: str | None = None, core: Any = None) -> str:
    """The region of the storage client (see the module for the one fallback)."""
    from integrity import aws

    return explicit or conf.region or aws.profile_region(core) or DEFAULT_REGION


def s3_client(
    conf: Settings,
    endpoint_url: str | None = None,
    region: str | None = None,
    *,
    max_attempts: int = 5,
) -> Any:
    """The storage client: explicit endpoint, else AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL,
    else the AWS config file; checksums as the environment or profile say, else when_required."""
    from integrity import aws
    from integrity.storage.s3 import s3_client as build

    core = aws.botocore_session()
    return build(
        endpoint_url or conf.s3_endpoint[0],
        s3_region(conf, region, core),
        max_attempts=max_attempts,
        checksums=conf.checksums,
        core=core,
    )


def sqs_client(
    conf: Settings,
    queue_url: str | None = None,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
) -> Any:
    """The queue client: explicit endpoint, else AWS_ENDPOINT_URL_SQS, else the queue URL's own
    server (AWS_ENDPOINT_URL is the bucket's and never applies); the region an AWS queue URL
    names wins over the environment's."""
    from integrity.remediation.queue import sqs_client as build

    return build(
        endpoint_url or conf.sqs_endpoint_url,
        region,
        queue_url,
        default_region=conf.region,
        fallback_region=DEFAULT_REGION,
    )


# --------------------------------------------------------------------------- storage


def make_store(
    conf: Settings,
    *,
    bucket: str | None = None,
    storage_dir: str | Path | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
    max_attempts: int = 5,
    listing_attempts: int = 5,
    names: Mapping[str, str] = CLI_NAMES,
    check_directory: bool = True,
) -> ObjectStore:
    """S3 when a bucket is named (explicitly, else INTEGRITY_BUCKET unless a storage directory
    is explicit), else the local directory (explicit, else INTEGRITY_STORAGE_DIR, else the demo's).

    Every value is checked first, with a message naming where it came from; with
    `check_directory` off a missing directory is left to the listing, which reports it (a
    schedule tick or a step then fails with the listing's own message)."""
    if bucket and storage_dir:
        raise UsageError(
            f"{names['bucket']} and {names['storage_dir']} are mutually exclusive: choose one storage"
        )
    chosen = bucket or (None if storage_dir else conf.bucket)
    if chosen:
        check_bucket_name(chosen, names["bucket"] if bucket else names_.ENV_BUCKET)
        if endpoint_url:
            check_endpoint_url(endpoint_url, names["endpoint_url"])
        else:
            configured, variable = conf.s3_endpoint
            if configured:
                check_endpoint_url(configured, variable or names_.ENV_ENDPOINT_URL)
        if region:
            check_region(region, names["region"])
        elif conf.region:
            check_region(conf.region, conf.region_variable or names_.ENV_REGION)
        from integrity.storage.s3 import S3Storage

        client = s3_client(conf, endpoint_url, region, max_attempts=max_attempts)
        return S3Storage(client, chosen, attempts=listing_attempts)
    if endpoint_url or region:
        raise UsageError(f"{names['endpoint_url']} and {names['region']} need {names['bucket']}")
    from integrity.storage.local import LocalStorage

    if storage_dir:
        if check_directory:
            check_storage_dir(Path(storage_dir), names["storage_dir"])
        return LocalStorage(Path(storage_dir).expanduser())
    if conf.storage_dir and check_directory:
        check_storage_dir(conf.storage_dir, names_.ENV_STORAGE_DIR)
    return LocalStorage(conf.storage_directory)


def without_location(conf: Settings) -> Settings:
    """The settings with the storage location left out: a Dagster resource's own fields decide
    bucket or directory, while the AWS settings (endpoints, region, checksums) still apply."""
    return replace(conf, bucket=None, storage_dir=None)


# --------------------------------------------------------------------------- queue


def check_queue_url(url: str, option: str) -> None:
    from integrity.remediation.queue import queue_location

    try:
        queue_location(url)
    except QueueError as exc:
        raise UsageError(f"{option}: {exc}") from None


def make_queue(
    conf: Settings,
    queue_url: str | None = None,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
) -> WorkQueue:
    """SQS when a queue URL is given, else the table (the caller decides whether
    INTEGRITY_QUEUE_URL applies: the CLI only with --apply, the resource when the definitions load)."""
    from integrity.remediation.queue import SqsQueue, TableQueue

    url = queue_url
    if not url:
        return TableQueue()
    client = sqs_client(conf, url, endpoint_url=endpoint_url, region=region)
    return SqsQueue(client, url)
