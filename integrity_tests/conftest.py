"""Real components for the tests: moto's S3/SQS server over HTTP, SQLite files, PostgreSQL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from integrity.remediation import ledger
from integrity.schema import create_reference_schema, drop_reference_schema


def _database_of_this_worker(url: str | None) -> str | None:
    """Under pytest-xdist each worker gets a database of its own, next to the configured one.

    The PostgreSQL fixtures drop and create the reference schema and the ledger; two workers on
    one database would drop each other's tables mid-test.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not url or not worker:
        return url
    base = sa.make_url(url)
    name = f"{base.database}_{worker}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            ).scalar()
            if not exists:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


POSTGRES_URL = _database_of_this_worker(os.environ.get("INTEGRITY_TEST_POSTGRES_URL"))
if POSTGRES_URL:
    os.environ["INTEGRITY_TEST_POSTGRES_URL"] = POSTGRES_URL


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A moto server on a free loopback port; boto3 talks to it over HTTP."""
    from moto.server import ThreadedMotoServer

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
        "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
    }.items():
        os.environ[name] = value
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_client(moto_endpoint: str):
    """A boto3 client made by dagster-aws's S3Resource, pointed at the moto server."""
    from dagster_aws.s3 import S3Resource

    return S3Resource(
        endpoint_url=moto_endpoint, region_name="us-east-1", max_attempts=1
    ).get_client()


@pytest.fixture
def bucket(s3_client) -> str:
    """A fresh, empty bucket for each test."""
    name = f"integrity-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def sqs_client(moto_endpoint: str):
    """A boto3 SQS client on the same moto server."""
    import boto3

    return boto3.client("sqs", endpoint_url=moto_endpoint, region_name="us-east-1")


@pytest.fixture
def sqs_queue_url(sqs_client) -> str:
    """A fresh SQS queue for each test."""
    return sqs_client.create_queue(QueueName=f"integrity-{uuid.uuid4().hex[:12]}")["QueueUrl"]


@pytest.fixture
def sqlite_engine(tmp_path) -> Iterator[sa.Engine]:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'integrity.sqlite'}")
    create_reference_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def postgres_engine() -> Iterator[sa.Engine]:
    if not POSTGRES_URL:
        pytest.skip("INTEGRITY_TEST_POSTGRES_URL is not set")
    engine = sa.create_engine(POSTGRES_URL)
    ledger.metadata.drop_all(engine)
    drop_reference_schema(engine)
    create_reference_schema(engine)
    yield engine
    ledger.metadata.drop_all(engine)
    drop_reference_schema(engine)
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request) -> sa.Engine:
    """The reference schema, empty, on SQLite and (when configured) on PostgreSQL."""
    return request.getfixturevalue(f"{request.param}_engine")


# --------------------------------------------------------------------------- Dagster


@pytest.fixture
def instance() -> Iterator[Any]:
    """A throwaway Dagster instance with the planted world's tenant partitions (and `__all__`)."""
    import dagster as dg

    from integrity.defs.partitions import TENANTS as TENANTS_PARTITIONS
    from integrity.inventory import ALL_TENANTS
    from integrity_tests.dagster_world import TENANTS

    with dg.instance_for_test() as test_instance:
        test_instance.add_dynamic_partitions(TENANTS_PARTITIONS, [*TENANTS, ALL_TENANTS])
        yield test_instance


@pytest.fixture
def storage_root(tmp_path: Path, sqlite_engine: sa.Engine) -> Path:
    """A storage directory named like the demo bucket, with the planted drift (rows in SQLite)."""
    from integrity.storage import LocalStorage
    from integrity_tests.dagster_world import plant_drift

    root = tmp_path / "integrity-demo"
    root.mkdir()
    plant_drift(LocalStorage(root), sqlite_engine)
    return root
