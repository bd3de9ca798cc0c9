"""One configuration path: Settings reads the environment once, integrity.connections builds from
it, and the CLI and the Dagster resources get the same engine, store, queue and messages.

The core (everything outside settings.py, the CLI and the Dagster layer) reads no environment:
an `ast` walk over the source checks that no core module touches os.environ or os.getenv.
"""

from __future__ import annotations

import ast
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from integrity import connections, settings
from integrity.cli.inputs import make_work_queue, resolve_store
from integrity.cli.parser import build_parser
from integrity.defs.resources import resources_from_env
from integrity.errors import DatabaseError, SpecError, UsageError
from integrity.settings import Settings

ROOT = Path(__file__).resolve().parents[1] / "integrity"
# Where the environment may be read: the settings, the two shells, and integrity.events (whose
# event-path variables are still its own).
MAY_READ = ("settings.py", "cli", "defs", "definitions.py", "events.py")
SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "aws-secret-value",
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEVALUE",
    settings.ENV_DB_URL: "postgresql://me:db-password-value@db.example/app",
    settings.ENV_ALERT_WEBHOOK_URL: "https://hooks.example/T0/webhook-secret-value",
    settings.ENV_SLACK_TOKEN: "xoxb-slack-token-value",
    settings.ENV_SMTP_PASSWORD: "smtp-password-value",
    settings.ENV_QUEUE_URL: "http://queue-user:queue-password-value@localhost:4566/0/q",
}


def _core_modules() -> list[Path]:
    return [
        path
        for path in sorted(ROOT.rglob("*.py"))
        if path.relative_to(ROOT).parts[0] not in MAY_READ
    ]


def _environment_reads(tree: ast.AST) -> list[tuple[int, str]]:
    """os.environ, os.getenv, os.putenv, os.unsetenv, and `from os import environ/getenv`."""
    found = []
    names = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in names
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
        ):
            found.append((node.lineno, f"os.{node.attr}"))
        if isinstance(node, ast.ImportFrom) and node.module == "os":
            found += [
                (node.lineno, f"from os import {a.name}") for a in node.names if a.name in names
            ]
    return found


def test_the_core_reads_no_environment() -> None:
    modules = _core_modules()
    assert len(modules) > 40 and ROOT / "connections.py" in modules
    reads = {
        str(path.relative_to(ROOT)): hits
        for path in modules
        if (hits := _environment_reads(ast.parse(path.read_text(), str(path))))
    }
    assert reads == {}


def test_the_walk_finds_every_way_of_reading_the_environment() -> None:
    source = (
        "import os\nfrom os import environ\n"
        "a = os.environ['X']\nb = os.getenv('Y')\nc = os.environ.get('Z')\n"
    )
    assert [what for _, what in _environment_reads(ast.parse(source))] == [
        "from os import environ",
        "os.environ",
        "os.getenv",
        "os.environ",
    ]


# --------------------------------------------------------------------------- Settings


def test_settings_read_every_variable_once_and_are_frozen(tmp_path: Path) -> None:
    conf = Settings.from_env(
        {
            settings.ENV_HOME: str(tmp_path),
            settings.ENV_BUCKET: "uploads",
            settings.ENV_ALLOW_WRITES: "1",
            settings.ENV_DEFAULT_REGION: "eu-central-1",
            settings.ENV_ENDPOINT_URL: "http://global:9000",
            settings.ENV_ENDPOINT_URL_S3: "http://s3-only:9000",
            settings.ENV_REQUEST_CHECKSUM: "when_supported",
            settings.ENV_STORAGE_DIR: "   ",  # blank means unset, never "this directory"
        }
    )
    assert conf.home == tmp_path and conf.home_set
    assert conf.database_url == f"sqlite:///{tmp_path / 'demo.sqlite'}"
    assert conf.storage_directory == tmp_path / "storage" / settings.DEMO_BUCKET
    assert (conf.bucket, conf.allow_writes) == ("uploads", True)
    assert (conf.region, conf.region_variable) == ("eu-central-1", settings.ENV_DEFAULT_REGION)
    assert conf.s3_endpoint == ("http://s3-only:9000", settings.ENV_ENDPOINT_URL_S3)
    assert conf.checksums == {"request_checksum_calculation": "when_supported"}
    with pytest.raises(AttributeError):
        conf.bucket = "other"  # type: ignore[misc]
    empty = Settings.from_env({})
    assert (empty.allow_writes, empty.region, empty.s3_endpoint) == (False, None, (None, None))
    assert Settings.from_env({settings.ENV_ALLOW_WRITES: "true"}).allow_writes is False


def test_secrets_never_appear_in_settings() -> None:
    conf = Settings.from_env(SECRETS)
    shown = repr(conf) + str(conf)
    for value in SECRETS.values():
        assert value not in shown
    # Alert secrets are not even kept: only that they are set.
    kept = " ".join(str(getattr(conf, f.name)) for f in fields(conf) if f.name != "db_url")
    assert "webhook-secret-value" not in kept and "xoxb-slack-token-value" not in kept
    assert conf.is_set(settings.ENV_SLACK_TOKEN) and not conf.is_set(settings.ENV_SMTP_HOST)


@pytest.mark.parametrize(
    ("variable", "value", "error", "message"),
    [
        (
            settings.ENV_RUN_LEASE,
            "soon",
            SpecError,
            "INTEGRITY_RUN_LEASE_SECONDS: must be a number of seconds",
        ),
        (
            settings.ENV_INVENTORY_MAX_AGE,
            "two days",
            UsageError,
            "INTEGRITY_INVENTORY_MAX_AGE: 'two days' is not a duration",
        ),
    ],
)
def test_a_bad_value_is_one_line_naming_its_variable(
    variable: str, value: str, error: type[Exception], message: str
) -> None:
    conf = Settings.from_env({variable: value})  # reading never fails: the use does
    with pytest.raises(error) as raised:
        conf.lease_seconds() if variable == settings.ENV_RUN_LEASE else conf.inventory_max_age_delta()
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


# --------------------------------------------------------------------------- the two paths


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """Only what a test sets: no region, endpoint, profile or project variable from outside."""
    for name in list(__import__("os").environ):
        if name.startswith(("AWS_", "INTEGRITY_")):
            monkeypatch.delenv(name)
    (tmp_path / "aws-config").write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv(settings.ENV_HOME, str(tmp_path / "home"))
    return monkeypatch


def _both_stores(*flags: str) -> tuple[Any, Any]:
    args = build_parser().parse_args(["reconcile", *flags])
    cli_store = resolve_store(args, Settings.from_env())
    with dg.build_resources(resources_from_env()) as built:
        return cli_store, built.storage.get_store()


def _client_view(client: Any) -> tuple[Any, ...]:
    config = client.meta.config
    return (
        client.meta.endpoint_url,
        client.meta.region_name,
        config.request_checksum_calculation,
        config.response_checksum_validation,
    )


def test_the_cli_and_the_resource_build_the_same_storage_client(env: pytest.MonkeyPatch) -> None:
    """The same endpoint, the same region fallback (us-east-1 on both paths when nothing names
    one) and the same checksum settings from the environment."""
    env.setenv(settings.ENV_BUCKET, "uploads")
    env.setenv(settings.ENV_ENDPOINT_URL_S3, "http://127.0.0.1:9")
    cli_store, dagster_store = _both_stores()
    assert _client_view(cli_store.client) == _client_view(dagster_store.client)
    assert _client_view(cli_store.client) == (
        "http://127.0.0.1:9",
        "us-east-1",
        "when_required",
        "when_required",
    )
    env.setenv(settings.ENV_REGION, "auto")
    env.setenv(settings.ENV_REQUEST_CHECKSUM, "when_supported")
    env.setenv(settings.ENV_RESPONSE_CHECKSUM, "when_supported")
    cli_store, dagster_store = _both_stores()
    assert _client_view(cli_store.client) == _client_view(dagster_store.client)
    assert _client_view(dagster_store.client)[1:] == ("auto", "when_supported", "when_supported")


def test_the_cli_and_the_resource_build_the_same_queue_client(env: pytest.MonkeyPatch) -> None:
    queue_url = "http://127.0.0.1:9/000000000000/requeue"
    env.setenv(settings.ENV_QUEUE_URL, queue_url)
    env.setenv(settings.ENV_ENDPOINT_URL, "http://the-bucket-endpoint:9000")  # never the queue's
    for region in (None, "eu-north-1"):
        if region:
            env.setenv(settings.ENV_REGION, region)
        cli_queue = make_work_queue(queue_url, Settings.from_env())
        with dg.build_resources(resources_from_env()) as built:
            outbox = built.queue.get_queue()
        seen = {
            where: (q.client.meta.endpoint_url, q.client.meta.region_name)
            for where, q in [
                ("cli", cli_queue),
                ("dagster", outbox),
            ]
        }
        assert seen == {p: ("http://127.0.0.1:9", region or "us-east-1") for p in seen}


def _cli_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    from integrity.cli import main

    assert main(["reconcile", *argv]) != 0
    return capsys.readouterr().err.strip().removeprefix("integrity: error: ")


def test_a_missing_sqlite_file_is_the_same_message_on_both_paths(
    env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.sqlite"
    env.setenv(settings.ENV_DB_URL, f"sqlite:///{missing}")
    env.setenv(settings.ENV_STORAGE_DIR, str(tmp_path))
    with (
        dg.build_resources(resources_from_env()) as built,
        pytest.raises(DatabaseError) as raised,
        built.database.engine(),
    ):
        pass
    expected = f"SQLite database file {missing} does not exist (check INTEGRITY_DB_URL)"
    assert str(raised.value) == expected
    assert _cli_error(capsys) == expected
    # The demo's own file, not built yet: both say how to build it.
    env.delenv(settings.ENV_DB_URL)
    demo = Settings.from_env().home / "demo.sqlite"
    with (
        dg.build_resources(resources_from_env()) as built,
        pytest.raises(DatabaseError) as raised,
        built.database.engine(),
    ):
        pass
    expected = f"SQLite database file {demo} does not exist (run 'integrity demo' to create it)"
    assert str(raised.value) == expected
    assert _cli_error(capsys) == expected


def test_a_bad_endpoint_in_the_environment_is_named_on_both_paths(env: pytest.MonkeyPatch) -> None:
    env.setenv(settings.ENV_ENDPOINT_URL_S3, "ftp://nowhere")
    with pytest.raises(UsageError) as from_cli:
        resolve_store(
            build_parser().parse_args(["reconcile", "--bucket", "b"]), Settings.from_env()
        )
    with pytest.raises(UsageError) as from_resource:
        connections.make_store(connections.without_location(Settings.from_env()), bucket="b")
    assert str(from_cli.value) == str(from_resource.value)
    assert str(from_cli.value).startswith("AWS_ENDPOINT_URL_S3: 'ftp://nowhere' is not an http://")


def test_the_configuration_table_names_exactly_the_variables_read() -> None:
    """docs/configuration.md's table cannot drift from the code: every variable the project
    reads is in it by its full name, and it names no variable nobody reads."""
    from integrity.defs.reconciliation.shards import ENV_SHARDS

    doc = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    table = "\n".join(line for line in doc.splitlines() if line.startswith("| `"))
    documented = set(re.findall(r"`((?:INTEGRITY|AWS)_[A-Z0-9_]+)`", table))
    read = {v for k, v in vars(settings).items() if k.startswith("ENV_") and isinstance(v, str)}
    read = (read | {ENV_SHARDS}) - {settings.ENV_ARROW_MEMORY_POOL}  # Arrow's own, defaulted
    credentials = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"}  # boto3 reads
    assert sorted(read - documented) == []
    assert sorted(documented - read - credentials) == []
