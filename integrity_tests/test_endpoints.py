"""Where the storage and queue clients point: the CLI and every Dagster path build the same ones.

The paths: the CLI's store and queue; StorageResource's store and QueueResource's remediation
outbox, requeue_sensor and bucket_notification_sensor. Under the README's R2 set-up the built
endpoints are compared (no network). With two moto servers, one for S3 and one for SQS, a real
listing, real sends and real receives must each reach the right server: the second server runs
in its own process, because moto servers in one process share their state and a request that
reached the wrong one would go unnoticed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import pytest
import sqlalchemy as sa

from integrity import cli, connections, settings
from integrity.cli.inputs import make_work_queue, resolve_store
from integrity.defs.processing.sensors import bucket_notification_sensor, requeue_sensor
from integrity.defs.resources import resources_from_env
from integrity.remediation import ledger
from integrity.remediation.queue import QueueEntry, SqsQueue
from integrity.schema import create_reference_schema
from integrity.settings import Settings
from integrity.storage.s3 import s3_client
from integrity_tests.test_events import r2_message

R2 = "https://3f4b7e3dcab231cbfdaa90a6a28bd548.r2.cloudflarestorage.com"
AWS_QUEUE = "https://sqs.eu-west-1.amazonaws.com/123456789012/reprocess"
AWS_EVENTS = "https://sqs.eu-west-1.amazonaws.com/123456789012/uploads"
AWS_SQS = ("https://sqs.eu-west-1.amazonaws.com", "eu-west-1")
ORPHAN = "documents/org-a/orphan.pdf"
REQUEUED = "documents/org-a/again.pdf"
NOTIFIED = "documents/org-a/new.pdf"
SERVER = (
    "import sys\n"
    "from moto.server import ThreadedMotoServer\n"
    "server = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)\n"
    "server.start()\n"
    "print('http://%s:%s' % server.get_host_and_port(), flush=True)\n"
    "sys.stdin.read()  # until the test process closes the pipe (or dies)\n"
    "server.stop()\n"
)


@pytest.fixture(scope="module")
def sqs_endpoint(moto_endpoint: str) -> Iterator[str]:
    """A second moto server, in its own process: the queue's host, apart from the bucket's."""
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None and server.stdin is not None
    endpoint = server.stdout.readline().strip()
    assert endpoint.startswith("http://127.0.0.1:"), endpoint
    yield endpoint
    server.stdin.close()
    server.wait(timeout=30)


@pytest.fixture(scope="module")
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Only what a test sets: no endpoint, region, profile or project variable from outside."""
    for name in list(os.environ):
        if name.startswith(("AWS_ENDPOINT_URL", "INTEGRITY_")) and name != (
            "INTEGRITY_TEST_POSTGRES_URL"
        ):
            monkeypatch.delenv(name)
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", raising=False)
    config = tmp_path / "aws-config"
    config.write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv(settings.ENV_HOME, str(tmp_path / "home"))
    monkeypatch.setenv(settings.ENV_EVENTS_WAIT_SECONDS, "0")
    return config


def where(client: Any) -> tuple[str, str]:
    return client.meta.endpoint_url, client.meta.region_name


def storage_clients(bucket: str, *flags: str) -> dict[str, Any]:
    """The storage client of the CLI (with these flags) and of the Dagster resources."""
    args = cli.build_parser().parse_args(["reconcile", "--bucket", bucket, *flags])
    with dg.build_resources(resources_from_env()) as built:
        cli_store = resolve_store(args, Settings.from_env())
        return {"cli": cli_store.client, "dagster": built.storage.get_store().client}


def queue_clients(events_url: str) -> dict[str, Any]:
    """The queue client of the CLI and of each Dagster path, for INTEGRITY_QUEUE_URL."""
    queue_url = os.environ[settings.ENV_QUEUE_URL]
    with dg.build_resources(resources_from_env()) as built:
        outbox = built.queue.get_queue()
        assert isinstance(outbox, SqsQueue)
        return {
            "cli": make_work_queue(queue_url, Settings.from_env()).client,
            "remediation outbox": outbox.client,
            "requeue_sensor": built.queue.sqs_client(),
            "bucket_notification_sensor": built.queue.sqs_client(events_url),
        }


# --------------------------------------------------------------------------- R2, no network


def test_under_the_r2_set_up_only_the_bucket_is_r2_and_the_queue_is_where_its_url_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", R2)
    monkeypatch.setenv("AWS_REGION", "auto")
    monkeypatch.setenv(settings.ENV_BUCKET, "uploads")
    monkeypatch.setenv(settings.ENV_QUEUE_URL, AWS_QUEUE)
    monkeypatch.setenv(settings.ENV_EVENTS_QUEUE_URL, AWS_EVENTS)
    stores = storage_clients("uploads")
    assert {path: where(c) for path, c in stores.items()} == {p: (R2, "auto") for p in stores}
    queues = queue_clients(AWS_EVENTS)
    assert {path: where(c) for path, c in queues.items()} == {p: AWS_SQS for p in queues}

    # The bucket given by flags (or configured on the resource) reaches the queue no more.
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.delenv("AWS_REGION")
    by_flags = storage_clients("uploads", "--endpoint-url", R2, "--region", "auto")["cli"]
    assert where(by_flags) == (R2, "auto")
    queues = queue_clients(AWS_EVENTS)
    assert {path: where(c) for path, c in queues.items()} == {p: AWS_SQS for p in queues}


def test_an_sqs_endpoint_wins_over_the_queue_url_and_the_global_endpoint(
    monkeypatch: pytest.MonkeyPatch, aws_env: Path
) -> None:
    """boto3's order: AWS_ENDPOINT_URL_<SERVICE>, or the config file's `services` section."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", R2)
    monkeypatch.setenv("AWS_REGION", "auto")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3.internal:9000")
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", "https://vpce-1.sqs.eu-west-1.vpce.amazonaws.com")
    monkeypatch.setenv(settings.ENV_BUCKET, "uploads")
    monkeypatch.setenv(settings.ENV_QUEUE_URL, AWS_QUEUE)
    stores = storage_clients("uploads")
    assert {path: where(c) for path, c in stores.items()} == {
        p: ("http://s3.internal:9000", "auto") for p in stores
    }
    queues = queue_clients(AWS_EVENTS)
    endpoint = ("https://vpce-1.sqs.eu-west-1.vpce.amazonaws.com", "eu-west-1")
    assert {path: where(c) for path, c in queues.items()} == {p: endpoint for p in queues}
    # An explicit flag still wins over the environment for the bucket, and stays the bucket's.
    flagged = storage_clients("uploads", "--endpoint-url", "http://minio:9000")["cli"]
    assert where(flagged) == ("http://minio:9000", "auto")

    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.delenv("AWS_ENDPOINT_URL_SQS")
    aws_env.write_text(
        "[default]\nservices = local\n\n"
        "[services local]\nsqs =\n  endpoint_url = http://elasticmq:9324\n"
    )
    assert where(storage_clients("uploads")["dagster"]) == (R2, "auto")
    queues = queue_clients(AWS_EVENTS)
    local = ("http://elasticmq:9324", "eu-west-1")
    assert {path: where(c) for path, c in queues.items()} == {p: local for p in queues}
    monkeypatch.setenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")
    assert where(connections.sqs_client(Settings.from_env(), AWS_QUEUE)) == AWS_SQS


def test_a_queue_url_on_another_server_gives_its_server_and_never_a_user() -> None:
    assert where(
        connections.sqs_client(Settings.from_env(), "http://me:pw@localhost:4566/000000000000/q")
    ) == (
        "http://localhost:4566",
        "us-east-1",
    )


# --------------------------------------------------------------------------- two moto servers


@dataclass
class Servers:
    bucket: str
    s3: Any  # a client of the S3 server
    sqs: Any  # a client of the SQS server
    queue_url: str  # remediation's queue, on the SQS server
    events_url: str  # the bucket notifications' queue, on the SQS server
    db_url: str


@pytest.fixture
def servers(
    moto_endpoint: str, sqs_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Servers:
    """A bucket with one orphan on the S3 server, two queues on the SQS server, a database."""
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    bucket = f"integrity-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key=ORPHAN, Body=b"%PDF-1.4")
    sqs = boto3.client("sqs", endpoint_url=sqs_endpoint, region_name="us-east-1")
    name = f"integrity-{uuid.uuid4().hex[:12]}"
    queue_url = sqs.create_queue(QueueName=name)["QueueUrl"]
    events_url = sqs.create_queue(QueueName=f"{name}-events")["QueueUrl"]
    assert queue_url.startswith(sqs_endpoint)
    db_url = f"sqlite:///{tmp_path / 'app.sqlite'}"
    engine = sa.create_engine(db_url)
    create_reference_schema(engine)
    ledger.create_ledger(engine)
    engine.dispose()
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv(settings.ENV_BUCKET, bucket)
    monkeypatch.setenv(settings.ENV_DB_URL, db_url)
    monkeypatch.setenv(settings.ENV_ALLOW_WRITES, "1")
    return Servers(bucket, s3, sqs, queue_url, events_url, db_url)


def every_path_reaches_its_server(
    world: Servers, instance: dg.DagsterInstance, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real listing, real sends and real receives by the CLI and every Dagster path."""
    # The CLI lists the bucket on the S3 server and sends the orphan to the SQS server.
    code = cli.main(["reconcile", "--apply", "--json", "--min-age", "0s"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out)
    assert summary["checked"]["objects"] == 1 and summary["requeued"] == 1
    configured = resources_from_env()
    with dg.build_resources(configured) as built:
        # The Dagster store lists the same bucket; the outbox sends to the same queue.
        store = built.storage.get_store()
        assert [k for page in store.list_pages("") for k in page.keys] == [ORPHAN]
        outbox = built.queue.get_queue()
        outbox.check_access()
        engine = sa.create_engine(world.db_url)
        with engine.begin() as conn:
            outbox.add(
                conn,
                [QueueEntry(REQUEUED, "orphan_object")],
                bucket=world.bucket,
                run_id="r1",
                now=datetime.now(timezone.utc),
            )
        assert outbox.flush(engine) == 1
        engine.dispose()
    # requeue_sensor receives both from the SQS server, bucket_notification_sensor its event.
    world.sqs.send_message(
        QueueUrl=world.events_url, MessageBody=r2_message(NOTIFIED, bucket=world.bucket)
    )
    for sensor, expected in (
        (requeue_sensor, sorted([ORPHAN, REQUEUED])),
        (bucket_notification_sensor, [NOTIFIED]),
    ):
        with dg.build_sensor_context(
            instance=instance, resources=configured, sensor_name=sensor.name
        ) as context:
            result = sensor(context)
        assert isinstance(result, dg.SensorResult), result
        keys = [r.run_config["ops"]["process_object"]["config"]["key"] for r in result.run_requests]
        assert sorted(keys) == expected, sensor.name


@pytest.mark.e2e
def test_with_only_aws_endpoint_url_the_queue_is_on_the_server_its_url_names(
    servers: Servers,
    moto_endpoint: str,
    sqs_endpoint: str,
    instance: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv(settings.ENV_QUEUE_URL, servers.queue_url)
    monkeypatch.setenv(settings.ENV_EVENTS_QUEUE_URL, servers.events_url)
    stores = storage_clients(servers.bucket)
    assert {p: where(c) for p, c in stores.items()} == {
        p: (moto_endpoint, "us-east-1") for p in stores
    }
    queues = queue_clients(servers.events_url)
    assert {p: where(c) for p, c in queues.items()} == {
        p: (sqs_endpoint, "us-east-1") for p in queues
    }
    every_path_reaches_its_server(servers, instance, capsys)


@pytest.mark.e2e
def test_service_endpoints_win_over_aws_endpoint_url_and_the_queue_url(
    servers: Servers,
    moto_endpoint: str,
    sqs_endpoint: str,
    instance: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every wrong choice would reach a live server that lacks the bucket or the queue."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", sqs_endpoint)  # not the bucket's server
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", sqs_endpoint)
    # queue URLs naming a host that is not the queue's (as a container's name would)
    monkeypatch.setenv(
        settings.ENV_QUEUE_URL, servers.queue_url.replace(sqs_endpoint, moto_endpoint)
    )
    events_url = servers.events_url.replace(sqs_endpoint, moto_endpoint)
    monkeypatch.setenv(settings.ENV_EVENTS_QUEUE_URL, events_url)
    stores = storage_clients(servers.bucket)
    assert {p: where(c) for p, c in stores.items()} == {
        p: (moto_endpoint, "us-east-1") for p in stores
    }
    queues = queue_clients(events_url)
    assert {p: where(c) for p, c in queues.items()} == {
        p: (sqs_endpoint, "us-east-1") for p in queues
    }
    every_path_reaches_its_server(servers, instance, capsys)


def test_s3_client_is_what_the_cli_and_the_resource_share(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checksums only when required (R2, MinIO), unless the environment says otherwise."""
    client = s3_client("http://127.0.0.1:9", "auto", max_attempts=2)
    assert client.meta.config.request_checksum_calculation == "when_required"
    assert client.meta.config.response_checksum_validation == "when_required"
    assert client.meta.config.retries == {"mode": "standard", "total_max_attempts": 3}
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_supported")
    shared = connections.s3_client(Settings.from_env())
    assert shared.meta.config.request_checksum_calculation == "when_supported"
