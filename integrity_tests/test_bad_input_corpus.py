"""The bad-input corpus: one table of cases per class of input, each case ending in one finding
or one line, with nothing changed where nothing should be.

- Stored URLs and keys (any store, then keys only a storage directory or only S3 refuses): the
  value in one `images` row becomes exactly one `invalid_reference` finding naming the row, the
  column and the reason, in a whole-bucket and in a tenant reconciliation; every other finding
  is what it is without that row, and `--apply` leaves the row as it is.
- Tenant values: `integrity reconcile --tenant VALUE` ends with one line on stderr and exit
  status 2, before storage or the database is read.

Add a case by adding a row to its class's table.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from integrity import cli, schema
from integrity.remediation import RemediationOptions, remediate
from integrity.storage import LocalStorage, S3Storage
from integrity_tests.world import World

TENANT = "proj-1"  # the images' tenant (their project)
COLUMN = "original_url"

# --------------------------------------------------------------------------- the cases

# Stored URLs and keys that name no object in any store: (case, stored value, reason).
# {bucket} is the bucket reconciled.
STORED_REFERENCES: list[tuple[str, str, str]] = [
    ("IPv6 host not closed", "http://[::1/b/k.jpg", "is not a valid URL (Invalid IPv6 URL)"),
    ("IPv6 host not an address", "https://[zz]/k", "is not a valid URL ('zz' does not appear"),
    ("path-style URL, IPv6 not closed", "http://[::1/{bucket}/images/p1/a.jpg", "Invalid IPv6"),
    ("NUL in a bare key", "images/p1/a\x00b.jpg", "holds the control character U+0000"),
    ("newline inside a key", "images/p1/a\nb.jpg", "holds the control character U+000A"),
    ("terminal escape in a key", "images/p1/\x1b[31mred.jpg", "holds the control character U+001B"),
    ("DEL in a URL", "s3://{bucket}/images/p1/a\x7f.jpg", "holds the control character U+007F"),
    ("s3 URL with no key", "s3://{bucket}/", "names bucket '{bucket}' but no key"),
    ("s3 URL without the slash", "s3://{bucket}", "names bucket '{bucket}' but no key"),
    ("s3 URL with no bucket", "s3:///images/p1/a.jpg", "names no bucket after s3://"),
    ("virtual-hosted URL with no key", "https://{bucket}.s3.amazonaws.com/", "but no key"),
    ("path-style URL with no key", "http://localhost:9000/{bucket}/", "but no key"),
    ("URL with no bucket or key", "https://storage.example.com/", "names no bucket and no key"),
    ("a lone slash", "/", "names no key"),
]

# Keys S3 holds but a storage directory cannot (they would lead out of it, or the file system
# refuses them): (case, stored value, reason).
LOCAL_KEYS: list[tuple[str, str, str]] = [
    ("up and out to /etc", "../../../../../etc/hostname", "names a key that has a '..' segment"),
    ("into a sibling directory", "../outside/secret.txt", "has a '..' segment"),
    ("'..' in the middle", "images/p1/../../../outside/secret.txt", "has a '..' segment"),
    ("'.' segment", "images/p1/./present.jpg", "has a '.' segment"),
    ("empty segment", "images/p1//present.jpg", "has an empty segment ('//')"),
    ("absolute path in an s3 URL", "s3://{bucket}//etc/hostname", "is an absolute path"),
    ("a directory, not a file", "images/p1/", "ends in '/' (a directory, not a file)"),
    ("256-byte segment", "images/" + "x" * 252 + ".jpg", "a segment of 256 bytes"),
    ("256-byte segment of 2-byte letters", "images/" + "é" * 128, "a segment of 256 bytes"),
]

# Keys a storage directory holds but S3 cannot: (case, stored value, reason).
S3_KEYS: list[tuple[str, str, str]] = [
    ("1,025-byte key", "images/" + "/".join(["k" * 100] * 10) + "/" + "k" * 8, "1,025 bytes"),
    (
        "over 1,024 bytes once decoded",
        "https://{bucket}.s3.amazonaws.com/images/" + "%C3%A9" * 600,
        "names a key that is 1,207 bytes of UTF-8",
    ),
]

# Tenant values that are not one segment of the storage prefixes: (case, value, message).
TENANT_VALUES: list[tuple[str, str, str]] = [
    ("trailing slash", "org-acme/", "--tenant: 'org-acme/' holds a '/'"),
    ("parent directory", "../x", "--tenant: '../x' holds a '/'"),
    ("up and out", "../../../../../etc", "holds a '/'"),
    ("two segments", "org-acme/prj-acme-tower", "holds a '/'"),
    ("dot-dot", "..", "--tenant: '..' is not a tenant"),
    ("dot", ".", "--tenant: '.' is not a tenant"),
    ("empty", "", "--tenant: is empty"),
    ("NUL", "org\x00acme", "holds the control character U+0000"),
    ("newline", "org-acme\n", "holds the control character U+000A"),
]

REFERENCE_CASES = (
    [pytest.param(backend, *case, id=f"{backend}: {case[0]}") for backend in ("local", "s3")
     for case in STORED_REFERENCES]
    + [pytest.param("local", *case, id=f"local: {case[0]}") for case in LOCAL_KEYS]
    + [pytest.param("s3", *case, id=f"s3: {case[0]}") for case in S3_KEYS]
)  # fmt: skip


# --------------------------------------------------------------------------- stored references


def _world(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> World:
    """A healthy world with one present and one missing image, on SQLite (which, unlike
    PostgreSQL, stores a NUL in text), and a file just outside the storage directory."""
    if backend == "local":
        root = tmp_path / "media"
        root.mkdir()
        store = LocalStorage(root)
    else:
        store = S3Storage(request.getfixturevalue("s3_client"), request.getfixturevalue("bucket"))
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("not in the bucket")
    world = World(request.getfixturevalue("sqlite_engine"), store)
    world.image("present", world.obj("images/p1/present.jpg"), project=TENANT)
    world.image("missing", "images/p1/missing.jpg", project=TENANT)
    world.document("doc", world.obj("documents/org-1/done.pdf"))
    return world


def _findings(findings: pd.DataFrame) -> list[tuple[str, str, str | None]]:
    return sorted(zip(findings["kind"], findings["row_id"], findings["key"]), key=str)


def _row(engine: sa.Engine, row_id: str) -> tuple[str, str]:
    images = schema.images
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(images.c.status, images.c.original_url).where(images.c.id == row_id)
        ).one()
    return tuple(row)


@pytest.mark.e2e
@pytest.mark.parametrize(("backend", "case", "value", "reason"), REFERENCE_CASES)
def test_a_stored_reference_that_names_no_object_is_one_finding(
    backend: str,
    case: str,
    value: str,
    reason: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    world = _world(backend, request, tmp_path)
    bucket = world.store.bucket
    value, reason = value.format(bucket=bucket), reason.format(bucket=bucket)
    baseline = {scope: world.reconcile(tenant=scope) for scope in (None, TENANT)}
    world.image("bad", value, project=TENANT)

    for scope in (None, TENANT):
        report = world.reconcile(tenant=scope)
        assert report.complete, report.reasons
        invalid = report.findings.loc[report.findings["kind"] == "invalid_reference"]
        assert len(invalid) == 1, (scope, report.findings[["kind", "row_id", "detail"]])
        [finding] = invalid.to_dict("records")
        assert (finding["row_id"], finding["column"], finding["table"]) == ("bad", COLUMN, "images")
        assert finding["detail"].startswith(f"{COLUMN} ") and reason in finding["detail"]
        assert (finding["key"], finding["action"], finding["tenant"]) == (None, "none", TENANT)
        # The rest of the run is reported as it was without the row; nothing outside the
        # storage directory was listed (the file next to it would be an object found).
        rest = report.findings.drop(invalid.index)
        assert _findings(rest) == _findings(baseline[scope].findings), scope
        assert report.objects_checked == baseline[scope].objects_checked
        assert not report.findings["key"].fillna("").str.contains("secret|hostname").any()

    # Remediation plans nothing for it: --apply marks the missing image and leaves this row.
    result = remediate(
        report,
        world.engine,
        world.spec,
        world.store,
        RemediationOptions(dry_run=False, max_change_ratio=1.0),
        allow_writes=True,
    )
    assert result.counts["marked_error"] == 1
    assert _row(world.engine, "bad") == ("ready", value)
    assert _row(world.engine, "missing")[0] == "error"


# --------------------------------------------------------------------------- tenant values


@pytest.mark.parametrize(
    ("case", "value", "message"), [pytest.param(*c, id=c[0]) for c in TENANT_VALUES]
)
@pytest.mark.parametrize("flag", ["--tenant", "--project-id"])
def test_a_tenant_value_that_is_not_one_segment_is_one_line_and_exit_2(
    flag: str,
    case: str,
    value: str,
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Refused before anything is read: a real storage directory and database with an upload
    that would be an orphan of every tenant, so a tenant that slipped through would report it."""
    root = tmp_path / "media"
    LocalStorage(root).put_bytes("documents/org-acme/a.pdf", b"%PDF-1.4")
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    schema.create_reference_schema(engine)
    engine.dispose()
    args = ["reconcile", "--db-url", str(engine.url), "--storage-dir", str(root), "--json"]

    code = cli.main([*args, flag, value])

    out, err = capsys.readouterr()
    assert code == cli.EXIT_USAGE, (case, err)
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("integrity: error: "), err
    assert message in err, err
    assert "\x00" not in err and "Traceback" not in err
