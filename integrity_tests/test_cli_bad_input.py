"""Bad input to the `integrity` command, by class: spec files, flags (and the environment values
the command reads), database URLs.

Every case ends in exactly one line on stderr that names the field, flag or variable, exit
status 2, nothing on stdout, and nothing done: the reconciliation never starts, the database
file and the storage directory are byte for byte as they were, and no secret is shown. Writes
are allowed (INTEGRITY_ALLOW_WRITES=1, --apply where the command takes it), so a case that got
through would change something.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from integrity import cli
from integrity.cli import reconcile as cli_reconcile
from integrity.schema import create_reference_schema

SECRET = "hunter2"
SCRUBBED = ("INTEGRITY_", "AWS_ENDPOINT_URL")
VALID_TABLES = "tables: {documents: {table: documents, tenant: organization_id, references: [{column: r2_key}]}}\n"
TOO_LONG = "n" * 300  # longer than any file system's name limit (255 bytes)


def _nested(depth: int, open_: str, close: str, leaf: str = "x") -> str:
    return open_ * depth + leaf + close * depth


# --------------------------------------------------------------------------- the case tables

# (case, spec file text, what the one line must say after "<file>: ")
SPEC_CASES: list[tuple[str, str | bytes, str]] = [
    (
        "tenant twice in uploads.prefix",
        VALID_TABLES + "uploads: {prefix: 'documents/{tenant}/{tenant}/'}\n",
        "uploads.prefix: 'documents/{tenant}/{tenant}/': {tenant} appears more than once",
    ),
    (
        "conversion !r",
        VALID_TABLES + "uploads: {prefix: 'documents/{tenant!r}/'}\n",
        "uploads.prefix: 'documents/{tenant!r}/': conversions and format specs are not allowed",
    ),
    (
        "conversion !s",
        VALID_TABLES + "uploads: {prefix: 'documents/{tenant!s}/'}\n",
        "uploads.prefix: 'documents/{tenant!s}/': conversions and format specs",
    ),
    (
        "format spec",
        VALID_TABLES + "uploads: {prefix: 'documents/{tenant:>10}/'}\n",
        "uploads.prefix: 'documents/{tenant:>10}/': conversions and format specs",
    ),
    (
        "empty format spec",
        VALID_TABLES + "uploads: {prefix: 'documents/{tenant:}/'}\n",
        "uploads.prefix: 'documents/{tenant:}/': conversions and format specs",
    ),
    (
        "positional field",
        VALID_TABLES + "uploads: {prefix: 'documents/{0}/'}\n",
        "uploads.prefix: 'documents/{0}/': positional fields",
    ),
    (
        "automatic field",
        VALID_TABLES + "uploads: {prefix: 'documents/{}/'}\n",
        "uploads.prefix: 'documents/{}/': positional fields",
    ),
    (
        "attribute field",
        VALID_TABLES + "uploads: {prefix: 'documents/{tenant.id}/'}\n",
        "uploads.prefix: 'documents/{tenant.id}/': {tenant.id} is not a plain field name",
    ),
    (
        "unclosed brace",
        VALID_TABLES + "uploads: {prefix: 'documents/{tenant/'}\n",
        "uploads.prefix: 'documents/{tenant/' is not a valid template",
    ),
    (
        "stray closing brace",
        VALID_TABLES + "uploads: {prefix: 'documents/}/{tenant}/'}\n",
        "uploads.prefix: 'documents/}/{tenant}/' is not a valid template",
    ),
    (
        "escaped braces",
        VALID_TABLES + "uploads: {prefix: 'documents{{x}}/{tenant}/'}\n",
        "uploads.prefix: 'documents{{x}}/{tenant}/': braces",
    ),
    (
        "leading slash",
        VALID_TABLES + "uploads: {prefix: '/documents/{tenant}/'}\n",
        "uploads.prefix: '/documents/{tenant}/': a key prefix has no leading '/'",
    ),
    (
        "dot-dot segment",
        VALID_TABLES + "uploads: {prefix: 'documents/../{tenant}/'}\n",
        "uploads.prefix: 'documents/../{tenant}/': a key prefix has",
    ),
    (
        "empty segment",
        VALID_TABLES + "uploads: {prefix: 'documents//{tenant}/'}\n",
        "uploads.prefix: 'documents//{tenant}/': a key prefix has",
    ),
    (
        "plan twice in plans.sheets_prefix",
        VALID_TABLES + "plans: {sheets_prefix: 'o/{tenant}/p/{plan}/{plan}/'}\n",
        "plans.sheets_prefix: 'o/{tenant}/p/{plan}/{plan}/': {plan} appears more than once",
    ),
    (
        "index field in plans.sheets_prefix",
        VALID_TABLES + "plans: {sheets_prefix: 'o/{tenant}/p/{plan[0]}/'}\n",
        "plans.sheets_prefix: 'o/{tenant}/p/{plan[0]}/': {plan[0]} is not a plain field name",
    ),
    (
        "conversion in plans.sheets_prefix",
        VALID_TABLES + "plans: {sheets_prefix: 'o/{tenant}/p/{plan!a}/'}\n",
        "plans.sheets_prefix: 'o/{tenant}/p/{plan!a}/': conversions and format specs",
    ),
    (
        "adjacent fields",
        VALID_TABLES + "plans: {sheets_prefix: 'o/{tenant}/p/{project}{plan}/'}\n",
        "plans.sheets_prefix: 'o/{tenant}/p/{project}{plan}/': {project} and {plan} need text",
    ),
    (
        "plan before tenant",
        VALID_TABLES + "plans: {sheets_prefix: 'p/{plan}/o/{tenant}/'}\n",
        "plans.sheets_prefix: 'p/{plan}/o/{tenant}/': {tenant} must be the first field",
    ),
    (
        "tenant inside a segment",
        VALID_TABLES + "plans: {sheets_prefix: 'o/{tenant}-x/p/{plan}/'}\n",
        "plans.sheets_prefix: 'o/{tenant}-x/p/{plan}/': {tenant} must be the first field and end",
    ),
    (
        "empty descriptor suffix",
        VALID_TABLES + "plans: {descriptor_suffix: ''}\n",
        "plans.descriptor_suffix: must not be empty",
    ),
    (
        "freshness max_age that overflows",
        VALID_TABLES + "checks: {freshness: {max_age: 99999999999d}}\n",
        "checks.freshness.max_age: '99999999999d' is too long (at most 36500d)",
    ),
    (
        "sequences nested 5,000 deep",
        "tables: " + _nested(5000, "[", "]") + "\n",
        "nested more than 32 levels deep at line 1",
    ),
    (
        "mappings nested 5,000 deep",
        "tables: " + _nested(5000, "{a: ", "}") + "\n",
        "nested more than 32 levels deep at line 1",
    ),
    (
        "block mappings nested 5,000 deep",
        "".join("  " * i + f"k{i}:\n" for i in range(5000)) + "  " * 5000 + "x\n",
        "nested more than 32 levels deep at line 32",
    ),
    (
        "JSON arrays nested 5,000 deep",
        '{"tables": ' + _nested(5000, "[", "]", "1") + "}",
        "nested more than 32 levels deep at line 1",
    ),
    (
        "a table given twice",
        "tables:\n  documents: {table: documents, tenant: organization_id, references: [{column: a}]}\n"
        "  documents: {table: documents, tenant: organization_id, references: [{column: r2_key}]}\n",
        "not valid YAML or JSON at line 3: the key 'documents' appears twice in one mapping",
    ),
    (
        "a field given twice",
        VALID_TABLES + "uploads: {prefix: 'documents/{tenant}/', prefix: 'uploads/{tenant}/'}\n",
        "not valid YAML or JSON at line 2: the key 'prefix' appears twice",
    ),
    (
        "not UTF-8",
        VALID_TABLES.encode() + b"# caf\xe9\n",
        "the spec file is not UTF-8 text",
    ),
]

# (case, argv, environment, what the one line must say); {file} is a plain file, {tmp} a scratch
# directory, {world} the planted database and storage directory's parent.
FLAG_CASES: list[tuple[str, list[str], dict[str, str], str]] = [
    (
        "--min-age overflowing timedelta",
        ["reconcile", "--min-age", "99999999999d"],
        {},
        "--min-age: '99999999999d' is too long (at most 36500d)",
    ),
    (
        "--min-age in seconds overflowing a float",
        ["reconcile", "--min-age", "9" * 400],
        {},
        "--min-age: '99999",
    ),
    (
        "--stuck-after past pandas' range",
        ["reconcile", "--stuck-after", "999999999d"],
        {},
        "--stuck-after: '999999999d' is too long",
    ),
    (
        "--pause overflowing",
        ["reconcile", "--pause", "99999999999d"],
        {},
        "--pause: '99999999999d' is too long",
    ),
    (
        "--endpoint-url without a scheme",
        ["reconcile", "--bucket", "b", "--endpoint-url", "127.0.0.1:9000"],
        {},
        "--endpoint-url: '127.0.0.1:9000' is not an http:// or https:// URL with a host",
    ),
    (
        "--endpoint-url with another scheme",
        ["reconcile", "--bucket", "b", "--endpoint-url", "ftp://127.0.0.1:9000"],
        {},
        "--endpoint-url: 'ftp://127.0.0.1:9000' is not an http:// or https:// URL",
    ),
    (
        "--endpoint-url without a host",
        ["reconcile", "--bucket", "b", "--endpoint-url", "http://"],
        {},
        "--endpoint-url: 'http://' is not an http:// or https:// URL with a host",
    ),
    (
        "--endpoint-url with a port that is not a number",
        ["reconcile", "--bucket", "b", "--endpoint-url", "http://127.0.0.1:notaport"],
        {},
        "--endpoint-url: 'http://127.0.0.1:notaport' is not a URL",
    ),
    (
        "--endpoint-url with an unclosed IPv6 address",
        ["reconcile", "--bucket", "b", "--endpoint-url", f"http://u:{SECRET}@[::1:9000"],
        {},
        "--endpoint-url: 'http://***@[::1:9000' is not a URL",
    ),
    (
        "--endpoint-url port out of range",
        ["reconcile", "--bucket", "b", "--endpoint-url", "http://127.0.0.1:0"],
        {},
        "--endpoint-url: port 0 is not between 1 and 65535",
    ),
    (
        "--endpoint-url with credentials",
        ["reconcile", "--bucket", "b", "--endpoint-url", f"http://key:{SECRET}@127.0.0.1:9000"],
        {},
        "--endpoint-url: must not carry credentials",
    ),
    (
        "AWS_ENDPOINT_URL without a scheme",
        ["reconcile", "--bucket", "b"],
        {"AWS_ENDPOINT_URL": "127.0.0.1:9000"},
        "AWS_ENDPOINT_URL: '127.0.0.1:9000' is not an http:// or https:// URL",
    ),
    (
        "--region with a space",
        [
            "reconcile",
            "--bucket",
            "b",
            "--endpoint-url",
            "http://127.0.0.1:9",
            "--region",
            "us east",
        ],
        {},
        "--region: 'us east' is not a region name",
    ),
    (
        "--bucket with a space",
        ["reconcile", "--bucket", "b c", "--endpoint-url", "http://127.0.0.1:9"],
        {},
        "--bucket: 'b c' is not a bucket name",
    ),
    (
        "--bucket with a slash",
        ["reconcile", "--bucket", "b/c", "--endpoint-url", "http://127.0.0.1:9"],
        {},
        "--bucket: 'b/c' is not a bucket name",
    ),
    (
        "INTEGRITY_BUCKET with a space",
        ["reconcile", "--endpoint-url", "http://127.0.0.1:9"],
        {"INTEGRITY_BUCKET": "b c"},
        "INTEGRITY_BUCKET: 'b c' is not a bucket name",
    ),
    (
        "--storage-dir naming a file",
        ["reconcile", "--storage-dir", "{file}"],
        {},
        "--storage-dir: {file} is not a directory",
    ),
    (
        "--storage-dir that does not exist",
        ["reconcile", "--storage-dir", "{tmp}/nowhere"],
        {},
        "--storage-dir: {tmp}/nowhere does not exist",
    ),
    (
        "INTEGRITY_STORAGE_DIR naming a file",
        ["reconcile"],
        {"INTEGRITY_STORAGE_DIR": "{file}"},
        "INTEGRITY_STORAGE_DIR: {file} is not a directory",
    ),
    (
        "a newline in --storage-dir",
        ["reconcile", "--storage-dir", "{tmp}/two\nlines"],
        {},
        "--storage-dir: {tmp}/two\\nlines does not exist",
    ),
    (
        "--report on a pseudo file system",
        ["reconcile", "--report", "/proc/integrity-report.csv"],
        {},
        "--report: cannot write '/proc/integrity-report.csv'",
    ),
    (
        "--report with a name too long",
        ["reconcile", "--report", f"{{tmp}}/{TOO_LONG}.csv"],
        {},
        "(File name too long)",
    ),
    (
        "--report under a new directory with a name too long",
        ["reconcile", "--report", f"{{tmp}}/{TOO_LONG}/r.jsonl"],
        {},
        "(File name too long)",
    ),
    (
        "--queue-url with a port that is not a number",
        ["reconcile", "--queue-url", "http://127.0.0.1:notaport/123456789012/q"],
        {},
        "--queue-url: 'http://127.0.0.1:notaport/123456789012/q' is not an SQS queue URL",
    ),
    (
        "--queue-url with an unclosed IPv6 address",
        ["reconcile", "--queue-url", "http://[::1/123456789012/q"],
        {},
        "--queue-url: 'http://[::1/123456789012/q' is not an SQS queue URL",
    ),
    (
        "INTEGRITY_QUEUE_URL with a port that is not a number",
        ["reconcile"],
        {"INTEGRITY_QUEUE_URL": f"http://key:{SECRET}@127.0.0.1:x/123456789012/q"},
        "INTEGRITY_QUEUE_URL: 'http://***@127.0.0.1:x/123456789012/q' is not an SQS queue URL",
    ),
    (
        "--batch-size beyond one statement",
        ["reconcile", "--batch-size", "100000"],
        {},
        "--batch-size: must be at most 10,000, not 100,000",
    ),
    (
        "rollback --batch-size beyond one statement",
        ["rollback", "--run-id", "r1", "--batch-size", "100000"],
        {},
        "--batch-size: must be at most 10,000",
    ),
    (
        "rollback --last beyond a 64-bit integer",
        ["rollback", "--list", "--last", "1" + "0" * 20],
        {},
        "--last: must be at most 100,000",
    ),
    (
        "demo --home naming a file",
        ["demo", "--home", "{file}"],
        {},
        "--home: {file} is not a directory",
    ),
    ("empty --db-url", ["reconcile", "--db-url", ""], {}, "argument --db-url: must not be empty"),
    ("empty --spec", ["reconcile", "--spec", ""], {}, "argument --spec: must not be empty"),
    (
        "empty --storage-dir",
        ["reconcile", "--storage-dir", " "],
        {},
        "argument --storage-dir: must not be empty",
    ),
    ("empty --bucket", ["reconcile", "--bucket", ""], {}, "argument --bucket: must not be empty"),
    (
        "empty --queue-url",
        ["reconcile", "--queue-url", ""],
        {},
        "argument --queue-url: must not be empty",
    ),
    (
        "empty rollback --db-url",
        ["rollback", "--list", "--db-url", ""],
        {},
        "argument --db-url: must not be empty",
    ),
]

# (case, command, URL, through the environment?, what the one line must say)
DB_URL_CASES: list[tuple[str, str, str, bool, str]] = [
    (
        "port that is not a number",
        "reconcile",
        f"postgresql://app:{SECRET}@db.example:notaport/app",
        False,
        "--db-url: not a valid SQLAlchemy URL: the port must be a number",
    ),
    (
        "empty port",
        "reconcile",
        f"postgresql://app:{SECRET}@db.example:/app",
        False,
        "--db-url: not a valid SQLAlchemy URL: the port must be a number",
    ),
    (
        "unclosed IPv6 address",
        "reconcile",
        f"postgresql://app:{SECRET}@[::1/app",
        False,
        "--db-url: not a valid SQLAlchemy URL",
    ),
    (
        "port 0",
        "reconcile",
        f"postgresql://app:{SECRET}@db.example:0/app",
        False,
        "--db-url: postgresql://app:***@db.example:0/app: port 0 is not between 1 and 65535",
    ),
    (
        "port above 65535",
        "reconcile",
        f"postgresql+psycopg://app:{SECRET}@db.example:65536/app",
        False,
        "port 65536 is not between 1 and 65535",
    ),
    (
        "negative port",
        "reconcile",
        f"postgresql://app:{SECRET}@db.example:-1/app",
        False,
        "port -1 is not between 1 and 65535",
    ),
    (
        "SQLite path naming a directory",
        "reconcile",
        "sqlite:///{tmp}",
        False,
        "--db-url: {tmp} is a directory, not a SQLite database file",
    ),
    (
        "INTEGRITY_DB_URL with a port that is not a number",
        "reconcile",
        f"postgresql://app:{SECRET}@db.example:notaport/app",
        True,
        "INTEGRITY_DB_URL: not a valid SQLAlchemy URL: the port must be a number",
    ),
    (
        "rollback with a port that is not a number",
        "rollback",
        f"postgresql://app:{SECRET}@db.example:notaport/app",
        False,
        "--db-url: not a valid SQLAlchemy URL: the port must be a number",
    ),
    (
        "rollback with port above 65535",
        "rollback",
        f"postgresql://app:{SECRET}@db.example:99999/app",
        False,
        "port 99999 is not between 1 and 65535",
    ),
]


# --------------------------------------------------------------------------- the world


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reference-schema SQLite file with rows and a storage directory with objects."""
    root = tmp_path_factory.mktemp("bad-input-world")
    engine = sa.create_engine(f"sqlite:///{root / 'db.sqlite'}")
    create_reference_schema(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO documents VALUES ('d1', 'org-a', 'documents/org-a/gone.pdf', "
                "'complete', NULL, '2024-01-01', '2024-01-01')"
            )
        )
    engine.dispose()
    (root / "storage" / "documents" / "org-a").mkdir(parents=True)
    (root / "storage" / "documents" / "org-a" / "orphan.pdf").write_bytes(b"%PDF-1.4")
    return root


def _state(world: Path) -> dict[str, str]:
    """Every file under the world with the hash of its bytes."""
    return {
        str(p.relative_to(world)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(world.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, world: Path) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith(SCRUBBED):
            monkeypatch.delenv(name)
    monkeypatch.setenv("INTEGRITY_HOME", str(world / "home"))
    monkeypatch.setenv("INTEGRITY_ALLOW_WRITES", "1")
    return monkeypatch


def _main(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exc:  # argparse's own refusals
        return int(exc.code or 0)


def assert_refused(
    world: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    expected: str,
) -> None:
    """Run the command in-process: one line naming the input, exit 2, nothing started or changed."""
    started: list[Any] = []

    def no_run(*args: Any, **kwargs: Any) -> Any:
        started.append(args)
        raise AssertionError("the reconciliation started")

    monkeypatch.setattr(cli_reconcile, "run_reconciliation", no_run)
    before = _state(world)
    code = _main(argv)
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("integrity"), lines[0]
    assert expected in lines[0], lines[0]
    assert code == cli.EXIT_USAGE, lines[0]
    assert "Traceback" not in err and out == ""
    assert SECRET not in err
    assert not started
    assert _state(world) == before
    assert not (world / "home").exists()


def _with_world(argv: list[str], world: Path, env: dict[str, str] | None = None) -> list[str]:
    """The planted database and storage for reconcile and rollback, unless the case sets them."""
    extra: list[str] = []
    if argv[0] in ("reconcile", "rollback") and "--db-url" not in argv:
        extra += ["--db-url", f"sqlite:///{world / 'db.sqlite'}"]
    if argv[0] == "reconcile":
        storage_given = {"--storage-dir", "--bucket", "--endpoint-url"} & set(argv)
        if not storage_given and "INTEGRITY_STORAGE_DIR" not in (env or {}):
            extra += ["--storage-dir", str(world / "storage")]
        if "--apply" not in argv:
            extra.append("--apply")
    return argv + extra


# --------------------------------------------------------------------------- the tests


@pytest.mark.parametrize(("case", "text", "expected"), SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_bad_spec_is_one_line_naming_the_field(
    world: Path,
    clean_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    case: str,
    text: str | bytes,
    expected: str,
) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_bytes(text if isinstance(text, bytes) else text.encode())
    argv = _with_world(["reconcile", "--spec", str(spec)], world)
    assert_refused(world, clean_env, capsys, argv, f"{spec}: {expected}")


@pytest.mark.parametrize(
    ("case", "argv", "env", "expected"), FLAG_CASES, ids=[c[0] for c in FLAG_CASES]
)
def test_bad_flag_is_one_line_naming_the_flag(
    world: Path,
    clean_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    case: str,
    argv: list[str],
    env: dict[str, str],
    expected: str,
) -> None:
    file = tmp_path / "a-file"
    file.write_text("not a directory\n")
    values = {"tmp": tmp_path, "file": file, "world": world}
    for name, value in env.items():
        clean_env.setenv(name, value.format(**values))
    argv = _with_world([a.format(**values) for a in argv], world, env)
    assert_refused(world, clean_env, capsys, argv, expected.format(**values))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # no report, no scratch


@pytest.mark.parametrize(
    ("case", "command", "url", "from_env", "expected"),
    DB_URL_CASES,
    ids=[c[0] for c in DB_URL_CASES],
)
def test_bad_database_url_is_one_line_without_the_password(
    world: Path,
    clean_env: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    case: str,
    command: str,
    url: str,
    from_env: bool,
    expected: str,
) -> None:
    url = url.format(tmp=tmp_path)
    argv = [command] if command == "reconcile" else [command, "--list"]
    if from_env:
        clean_env.setenv("INTEGRITY_DB_URL", url)
    else:
        argv += ["--db-url", url]
    if command == "reconcile":
        argv += ["--storage-dir", str(world / "storage"), "--apply"]
    assert_refused(world, clean_env, capsys, argv, expected.format(tmp=tmp_path))


# --------------------------------------------------------------------------- as a real process


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("case", "argv", "expected"),
    [
        ("deep spec", ["--spec", "{deep}"], "nested more than 32 levels deep"),
        ("overflowing duration", ["--min-age", "99999999999d"], "--min-age: '99999999999d'"),
        (
            "endpoint without a scheme",
            ["--bucket", "b", "--endpoint-url", "127.0.0.1:9000"],
            "--endpoint-url: '127.0.0.1:9000'",
        ),
        (
            "database port that is not a number",
            ["--db-url", f"postgresql://app:{SECRET}@db.example:notaport/app"],
            "--db-url: not a valid SQLAlchemy URL",
        ),
    ],
)
def test_a_real_process_prints_one_line_and_exits_2(
    world: Path, tmp_path: Path, case: str, argv: list[str], expected: str
) -> None:
    """The console script's module in a clean environment: no traceback reaches the terminal."""
    deep = tmp_path / "deep.yaml"
    deep.write_text("tables: " + _nested(5000, "[", "]") + "\n")
    argv = [a.format(deep=deep) for a in argv]
    if "--db-url" not in argv:
        argv += ["--db-url", f"sqlite:///{world / 'db.sqlite'}"]
    if "--bucket" not in argv:
        argv += ["--storage-dir", str(world / "storage")]
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED)}
    result = subprocess.run(
        [sys.executable, "-m", "integrity.cli", "reconcile", *argv],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == cli.EXIT_USAGE, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("integrity: error: ") and expected in lines[0], lines[0]
    assert SECRET not in result.stderr
