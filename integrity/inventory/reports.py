"""S3 Inventory reports as the storage side: a snapshot of the bucket instead of a listing.

A SOURCE is a report's `manifest.json` (an `s3://` URL or a local path) or an inventory
destination, `s3://dest/prefix/source-bucket/config-id/` (or a local directory laid out the
same way), in which case the newest complete report is taken. A report lives in a dated folder
`YYYY-MM-DDTHH-MMZ/` beside `data/`; it is complete once its `manifest.checksum` exists and
holds the MD5 of `manifest.json`, and every data file the manifest lists exists.

The AWS format is read exactly:
- manifest.json: sourceBucket, destinationBucket, version, creationTimestamp (milliseconds
  since the epoch, as a string), fileFormat (CSV, ORC or Parquet), fileSchema (CSV: the field
  names, comma-separated; Parquet and ORC: the schema) and files [{key, size, MD5checksum}];
- every data file is checked against its size and MD5 (streamed, never whole in memory);
- CSV files are gzip-compressed, without a header, with the fields fileSchema names and the
  object keys URL-encoded as HTML forms encode them ('+' for a space, '%2B' for a '+');
- Parquet and ORC files carry the fields as snake_case columns (key, size, e_tag,
  last_modified_date, is_latest, is_delete_marker), keys as they are;
- the optional fields Size, ETag, LastModifiedDate, IsLatest and IsDeleteMarker are used when
  present: a versioned inventory keeps the current version of each key unless it is a delete
  marker. A missing Size reads as 0 and a missing ETag as '' (as a listing that lacks them);
  a missing LastModifiedDate as unknown, which never makes an object old enough to be an orphan.

The data files are read file by file, then row group by row group (Parquet), stripe by stripe
(ORC) or block by block (CSV) into Arrow record batches of OBJECT_SCHEMA, filtered to the
prefixes asked for, so no report is ever held in Python objects. Nothing here imports Dagster.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from integrity.durations import format_duration
from integrity.errors import InventoryError, StorageError, UsageError, shown
from integrity.inventory.objects import OBJECT_SCHEMA, StorageInventory, inventory_from_batches

MANIFEST = "manifest.json"
CHECKSUM = "manifest.checksum"
FORMATS = ("CSV", "ORC", "Parquet")
DEFAULT_MAX_AGE = timedelta(hours=48)
"""How old a report may be and still drive --apply (a daily report, a day late)."""
SOURCE_PREFIX = "inventory "
"""StorageInventory.source of a report: "inventory " + the manifest's URL."""

_DATED = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}-\d{2}Z")
_MD5 = re.compile(r"[0-9a-fA-F]{32}")
_CHUNK = 8 << 20
_CSV_BLOCK = 4 << 20
_BATCH_ROWS = 128 * 1024
# The fields the storage inventory is made of, by their Parquet/ORC column names.
_USED = ("key", "size", "e_tag", "last_modified_date", "is_latest", "is_delete_marker")


# --------------------------------------------------------------------------- the manifest


@dataclass(frozen=True)
class DataFile:
    key: str
    size: int
    md5: str


@dataclass(frozen=True)
class Manifest:
    """A parsed manifest.json; `url` is where it was read from."""

    url: str
    source_bucket: str
    destination_bucket: str | None
    version: str | None
    created_at: datetime
    file_format: str
    file_schema: str
    fields: tuple[str, ...]
    """The fields of fileSchema in order, as snake_case column names (Key -> key, ETag -> e_tag)."""
    files: tuple[DataFile, ...]


def snake_case(name: str) -> str:
    """A CSV fileSchema name as the Parquet/ORC column AWS writes for it: ETag -> e_tag."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name.strip()).lower()


def schema_fields(file_format: str, file_schema: str) -> tuple[str, ...]:
    """The field names fileSchema lists, in order, as snake_case column names."""
    if file_format == "CSV":
        names = [snake_case(n) for n in file_schema.split(",")]
    elif file_format == "Parquet":
        names = re.findall(r"(?:required|optional|repeated)\s+\w+\s+(\w+)", file_schema)
    else:
        inner = re.fullmatch(r"\s*struct<(.*)>\s*", file_schema, re.S)
        names = []
        if inner is not None:
            depth, part = 0, ""
            for char in inner.group(1) + ",":
                depth += char == "<"
                depth -= char == ">"
                if char == "," and depth == 0:
                    names.append(part.split(":", 1)[0].strip())
                    part = ""
                else:
                    part += char
    if any(not n for n in names):
        names = []
    return tuple(names)


def parse_manifest(data: bytes, url: str) -> Manifest:
    """A manifest.json, checked field by field; InventoryError names the file and the field."""

    def bad(problem: str) -> InventoryError:
        return InventoryError(f"inventory manifest {url}: {problem}")

    try:
        doc = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise bad("not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise bad(f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(doc, dict):
        raise bad("not a JSON object")

    def text(name: str, *, required: bool = True) -> str | None:
        value = doc.get(name)
        if value is None and not required:
            return None
        if not isinstance(value, str) or not value.strip():
            raise bad(f"{name} is {'missing' if value is None else 'not a non-empty string'}")
        return value

    source_bucket = text("sourceBucket")
    file_format = text("fileFormat")
    canonical = {f.lower(): f for f in FORMATS}.get(file_format.strip().lower())
    if canonical is None:
        raise bad(f"fileFormat {shown(file_format)} is not one of {', '.join(FORMATS)}")
    file_schema = text("fileSchema")
    fields = schema_fields(canonical, file_schema)
    if not fields:
        raise bad(f"fileSchema {shown(file_schema)} is not a {canonical} schema")
    if len(set(fields)) != len(fields):
        raise bad(f"fileSchema {shown(file_schema)} names a field twice")
    if "key" not in fields:
        raise bad(f"fileSchema {shown(file_schema)} has no Key field")
    stamp = doc.get("creationTimestamp")
    if isinstance(stamp, bool) or not re.fullmatch(r"\d{1,15}", str(stamp or "")):
        raise bad(
            f"creationTimestamp {shown(str(stamp))} is not milliseconds since the epoch"
            if stamp is not None
            else "creationTimestamp is missing"
        )
    created_at = datetime.fromtimestamp(int(stamp) / 1000, tz=timezone.utc)
    files = doc.get("files")
    if not isinstance(files, list):
        raise bad("files is " + ("missing" if files is None else "not a list"))
    parsed: list[DataFile] = []
    for number, entry in enumerate(files):
        where = f"files[{number}]"
        if not isinstance(entry, dict):
            raise bad(f"{where} is not an object")
        key, size, md5 = entry.get("key"), entry.get("size"), entry.get("MD5checksum")
        if not isinstance(key, str) or not key:
            raise bad(f"{where}.key is missing")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise bad(f"{where}.size of {key} is not a byte count")
        if not isinstance(md5, str) or not _MD5.fullmatch(md5):
            raise bad(f"{where}.MD5checksum of {key} is not an MD5 (32 hex digits)")
        parsed.append(DataFile(key, size, md5.lower()))
    return Manifest(
        url=url,
        source_bucket=source_bucket,
        destination_bucket=text("destinationBucket", required=False),
        version=text("version", required=False),
        created_at=created_at,
        file_format=canonical,
        file_schema=file_schema,
        fields=fields,
        files=tuple(parsed),
    )


# --------------------------------------------------------------------------- where reports are


class _Place(Protocol):
    """A bucket or a directory holding inventory reports; keys are relative to its root."""

    requests: int

    def url(self, key: str) -> str: ...

    def read(self, key: str) -> bytes | None:
        """The whole (small) file, or None when it does not exist."""

    def size(self, key: str) -> int | None: ...

    def folders(self, prefix: str) -> list[str]:
        """The folder names directly under prefix."""

    def verified(self, key: str, size: int, md5: str) -> Any:
        """A context manager giving a local path to the file once its size and MD5 match."""


def _checked(url: str, size: int, md5: str, got_size: int, digest: Any) -> None:
    if got_size != size:
        raise InventoryError(
            f"inventory data file {url}: {got_size:,} bytes, but the manifest says {size:,}"
        )
    if digest.hexdigest() != md5:
        raise InventoryError(
            f"inventory data file {url}: MD5 {digest.hexdigest()} does not match the "
            f"manifest's {md5} (a damaged or replaced file)"
        )


class _Directory:
    """A local directory with the layout of an inventory destination."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # Data file keys are the destination bucket's (prefix/source-bucket/config-id/data/...)
        # and the directory stands for the config-id folder: a key is read from what follows
        # 'source-bucket/config-id/' in it.
        self.config_prefix = f"{root.parent.name}/{root.name}/"
        self.requests = 0

    def path(self, key: str) -> Path:
        at = key.rfind(self.config_prefix)
        rel = key[at + len(self.config_prefix) :] if at >= 0 else key
        parts = rel.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise InventoryError(f"inventory file key {shown(key)} is not a plain relative path")
        return self.root.joinpath(*parts)

    def url(self, key: str) -> str:
        return str(self.path(key))

    def read(self, key: str) -> bytes | None:
        try:
            return self.path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise InventoryError(f"cannot read {self.url(key)}: {exc.strerror or exc}") from None

    def size(self, key: str) -> int | None:
        try:
            path = self.path(key)
            return path.stat().st_size if path.is_file() else None
        except OSError:
            return None

    def folders(self, prefix: str) -> list[str]:
        base = self.root.joinpath(*prefix.strip("/").split("/")) if prefix else self.root
        try:
            return sorted(e.name for e in os.scandir(base) if e.is_dir())
        except OSError as exc:
            raise InventoryError(
                f"cannot read the inventory destination {base}: {exc.strerror or exc}"
            ) from None

    @contextmanager
    def verified(self, key: str, size: int, md5: str) -> Iterator[Path]:
        path = self.path(key)
        digest = hashlib.md5(usedforsecurity=False)
        got = 0
        try:
            with path.open("rb") as handle:
                while chunk := handle.read(_CHUNK):
                    digest.update(chunk)
                    got += len(chunk)
        except FileNotFoundError:
            raise InventoryError(f"inventory data file {path} is missing") from None
        except OSError as exc:
            raise InventoryError(
                f"cannot read inventory data file {path}: {exc.strerror or exc}"
            ) from None
        _checked(str(path), size, md5, got, digest)
        yield path


class _Bucket:
    """A bucket holding inventory reports, read through the storage client's retries."""

    def __init__(self, client: Any, bucket: str) -> None:
        from integrity.storage.s3 import S3Storage

        self.store = S3Storage(client, bucket)
        self.bucket = bucket

    @property
    def requests(self) -> int:
        return self.store.requests

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def _failed(self, what: str, key: str, exc: BaseException) -> InventoryError:
        from integrity.storage.s3 import _describe

        return InventoryError(f"{what} {self.url(key)} failed: {_describe(exc)}")

    def read(self, key: str) -> bytes | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self.store._call("get_object", Bucket=self.bucket, Key=key)
            return response["Body"].read()
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return None
            raise self._failed("GET", key, exc) from None
        except BotoCoreError as exc:
            raise self._failed("GET", key, exc) from None

    def size(self, key: str) -> int | None:
        try:
            head = self.store.head(key)
        except StorageError as exc:
            raise InventoryError(str(exc)) from None
        return None if head is None else head.size

    def folders(self, prefix: str) -> list[str]:
        from integrity.storage.base import list_common_prefixes

        try:
            found = list_common_prefixes(self.store, prefix)
        except Exception as exc:  # ListingFailed, StorageError: one line with the URL
            raise InventoryError(
                f"cannot list the inventory destination {self.url(prefix)}: {exc}"
            ) from None
        return sorted(p[len(prefix) :].rstrip("/") for p in found)

    @contextmanager
    def verified(self, key: str, size: int, md5: str) -> Iterator[Path]:
        """Download to a temporary file, hashing as it streams; the file goes afterwards."""
        from botocore.exceptions import BotoCoreError, ClientError

        digest = hashlib.md5(usedforsecurity=False)
        got = 0
        with tempfile.TemporaryDirectory(prefix="integrity-inventory-") as scratch:
            path = Path(scratch) / "data"
            try:
                response = self.store._call("get_object", Bucket=self.bucket, Key=key)
                with path.open("wb") as out:
                    for chunk in response["Body"].iter_chunks(_CHUNK):
                        digest.update(chunk)
                        got += len(chunk)
                        out.write(chunk)
            except ClientError as exc:
                if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                    raise InventoryError(
                        f"inventory data file {self.url(key)} is missing"
                    ) from None
                raise self._failed("GET", key, exc) from None
            except BotoCoreError as exc:
                raise self._failed("GET", key, exc) from None
            _checked(self.url(key), size, md5, got, digest)
            yield path


# --------------------------------------------------------------------------- resolving SOURCE


@dataclass
class InventoryReport:
    """One complete report: its manifest and where its files are."""

    manifest: Manifest
    place: _Place
    manifest_key: str
    skipped: list[str] = field(default_factory=list)
    """Newer reports passed over on the way to this one, each with the reason."""

    @property
    def url(self) -> str:
        return self.manifest.url

    @property
    def source(self) -> str:
        return SOURCE_PREFIX + self.url

    @property
    def created_at(self) -> datetime:
        return self.manifest.created_at

    def age(self, now: datetime | None = None) -> timedelta:
        return (now or datetime.now(timezone.utc)) - self.created_at

    def check_bucket(self, bucket: str) -> None:
        if self.manifest.source_bucket != bucket:
            raise InventoryError(
                f"inventory manifest {self.url} is a report of bucket "
                f"{shown(self.manifest.source_bucket)}, not of {shown(bucket)}: point the "
                "inventory at this bucket's reports, or the bucket at the report's"
            )

    def batches(self, prefixes: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        """Every current object of the report (under `prefixes`, None: all), as record batches
        of OBJECT_SCHEMA, one data file after the other."""
        wanted = None if prefixes is None or "" in prefixes else sorted(set(prefixes))
        for data_file in self.manifest.files:
            with self.place.verified(data_file.key, data_file.size, data_file.md5) as path:
                url = self.place.url(data_file.key)
                for raw in _read_data_file(self.manifest, path, url):
                    batch = _objects(raw, self.manifest, url, wanted)
                    if batch.num_rows:
                        yield batch

    def read(
        self,
        *,
        bucket: str,
        backend: str = "s3",
        prefixes: list[str] | None = None,
        on_progress: Callable[[str, int], None] | None = None,
    ) -> StorageInventory:
        """The storage inventory this report describes, as of its creation time."""
        self.check_bucket(bucket)
        started = time.perf_counter()
        requests_before = self.place.requests

        def counted() -> Iterator[pa.RecordBatch]:
            for batch in self.batches(prefixes):
                if on_progress is not None:
                    on_progress("objects", batch.num_rows)
                yield batch

        inventory = inventory_from_batches(
            counted(),
            bucket=bucket,
            backend=backend,
            prefixes=[""] if prefixes is None else prefixes,
            source=self.source,
            snapshot_at=self.created_at,
        )
        inventory.requests = self.place.requests - requests_before
        inventory.seconds = time.perf_counter() - started
        return inventory


def _split_s3(url: str, option: str) -> tuple[str, str]:
    rest = url[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket or not re.fullmatch(r"[A-Za-z0-9.\-_]{1,255}", bucket):
        raise UsageError(f"{option}: {shown(url)} names no bucket (s3://BUCKET/prefix/...)")
    return bucket, key


def open_report(
    source: str,
    *,
    client: Any | None = None,
    client_factory: Callable[[], Any] | None = None,
    option: str = "--inventory",
) -> InventoryReport:
    """Resolve SOURCE (a manifest.json, or a destination's config-id folder) to a complete report.

    An S3 SOURCE is read with `client` (else `client_factory()`: the listing's client settings).
    """
    source = source.strip()
    if not source:
        raise UsageError(f"{option}: must not be empty")
    if source.startswith("s3://"):
        bucket, key = _split_s3(source, option)
        if client is None:
            if client_factory is None:
                from integrity.storage.s3 import s3_client as client_factory
            client = client_factory()
        place: _Place = _Bucket(client, bucket)
        if key.endswith(".json"):
            return _explicit(place, key)
        prefix = key if key.endswith("/") or not key else key + "/"
        return _newest(place, prefix, f"s3://{bucket}/{prefix}")
    if "://" in source:
        raise UsageError(
            f"{option}: {shown(source)} is neither an s3:// URL nor a local path "
            "(a manifest.json or an inventory destination folder)"
        )
    path = Path(source).expanduser().absolute()
    if path.is_file():
        place = _Directory(path.parent.parent)
        return _explicit(place, f"{path.parent.name}/{path.name}", url=str(path))
    if path.is_dir():
        return _newest(_Directory(path), "", str(path) + "/")
    raise UsageError(f"{option}: {path} does not exist (a manifest.json or a destination folder)")


def _verify_checksum(
    place: _Place, manifest_key: str, data: bytes, checksum_key: str
) -> str | None:
    """Why the manifest's checksum file does not vouch for it, or None."""
    checksum = place.read(checksum_key)
    if checksum is None:
        return f"no {CHECKSUM} (the report may still be being written)"
    expected = checksum.decode("ascii", "replace").strip().lower()
    actual = hashlib.md5(data, usedforsecurity=False).hexdigest()
    if expected != actual:
        return f"{CHECKSUM} ({shown(expected, 40)}) is not the MD5 of {MANIFEST} ({actual})"
    return None


def _explicit(place: _Place, key: str, *, url: str | None = None) -> InventoryReport:
    url = url or place.url(key)
    data = place.read(key)
    if data is None:
        raise InventoryError(f"inventory manifest {url} does not exist")
    manifest = parse_manifest(data, url)
    checksum_key = key.rsplit("/", 1)[0] + "/" + CHECKSUM if "/" in key else CHECKSUM
    if place.size(checksum_key) is not None:
        problem = _verify_checksum(place, key, data, checksum_key)
        if problem is not None:
            raise InventoryError(f"inventory manifest {url}: {problem}")
    return InventoryReport(manifest, place, key)


def _newest(place: _Place, prefix: str, where: str) -> InventoryReport:
    dated = sorted((f for f in place.folders(prefix) if _DATED.fullmatch(f)), reverse=True)
    if not dated:
        raise InventoryError(
            f"no inventory report under {where}: expected dated folders (YYYY-MM-DDTHH-MMZ/) "
            f"holding {MANIFEST}; name a {MANIFEST} or the destination's "
            "prefix/source-bucket/config-id/ folder"
        )
    skipped: list[str] = []
    for folder in dated:
        key = f"{prefix}{folder}/{MANIFEST}"
        problem, report = _complete(place, key, f"{prefix}{folder}/{CHECKSUM}")
        if report is not None:
            report.skipped = skipped
            return report
        skipped.append(f"{folder}: {problem}")
    shown_reasons = "; ".join(skipped[:5]) + (
        f"; and {len(skipped) - 5} more" if len(skipped) > 5 else ""
    )
    raise InventoryError(f"no complete inventory report under {where}: {shown_reasons}")


def _complete(place: _Place, key: str, checksum_key: str) -> tuple[str, InventoryReport | None]:
    data = place.read(key)
    if data is None:
        return f"no {MANIFEST}", None
    problem = _verify_checksum(place, key, data, checksum_key)
    if problem is not None:
        return problem, None
    try:
        manifest = parse_manifest(data, place.url(key))
    except InventoryError as exc:
        return str(exc).removeprefix(f"inventory manifest {place.url(key)}: "), None
    for data_file in manifest.files:
        size = place.size(data_file.key)
        if size is None:
            return f"data file {data_file.key} is missing", None
        if size != data_file.size:
            return (
                f"data file {data_file.key} is {size:,} bytes, not the {data_file.size:,} "
                "its manifest lists"
            ), None
    return "", InventoryReport(manifest, place, key)


# --------------------------------------------------------------------------- data files


def _read_data_file(manifest: Manifest, path: Path, url: str) -> Iterator[pa.RecordBatch]:
    """The data file's used columns, in batches, named by their Parquet/ORC names."""
    try:
        if manifest.file_format == "CSV":
            yield from _read_csv(manifest, path, url)
        elif manifest.file_format == "Parquet":
            yield from _read_parquet(manifest, path, url)
        else:
            yield from _read_orc(manifest, path, url)
    except InventoryError:
        raise
    except (pa.ArrowException, OSError, EOFError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise InventoryError(
            f"inventory data file {url}: cannot be read as {manifest.file_format} "
            f"with the manifest's fileSchema: {first}"
        ) from None


_CSV_TYPES = {
    "key": pa.string(),
    "size": pa.int64(),
    "e_tag": pa.string(),
    "last_modified_date": pa.timestamp("ms", tz="UTC"),
    "is_latest": pa.bool_(),
    "is_delete_marker": pa.bool_(),
}


def _read_csv(manifest: Manifest, path: Path, url: str) -> Iterator[pa.RecordBatch]:
    import pyarrow.csv as pacsv

    used = [f for f in manifest.fields if f in _USED]
    stream = pa.input_stream(str(path), compression="gzip")
    reader = pacsv.open_csv(
        stream,
        read_options=pacsv.ReadOptions(
            column_names=list(manifest.fields), block_size=_CSV_BLOCK, use_threads=False
        ),
        parse_options=pacsv.ParseOptions(newlines_in_values=False),
        convert_options=pacsv.ConvertOptions(
            column_types={f: _CSV_TYPES[f] for f in used},
            include_columns=used,
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
            true_values=["true", "TRUE", "True"],
            false_values=["false", "FALSE", "False"],
        ),
    )
    with reader:
        for batch in reader:
            key = batch.column("key")
            if key.null_count:
                raise InventoryError(f"inventory data file {url}: a row has no key")
            yield batch.set_column(
                batch.schema.get_field_index("key"), "key", decode_form_keys(key)
            )


def _check_columns(manifest: Manifest, names: list[str], url: str) -> list[str]:
    missing = [f for f in manifest.fields if f in _USED and f not in names]
    if missing:
        raise InventoryError(
            f"inventory data file {url}: no column {missing[0]!r}, which the manifest's "
            "fileSchema names"
        )
    return [f for f in manifest.fields if f in _USED]


def _read_parquet(manifest: Manifest, path: Path, url: str) -> Iterator[pa.RecordBatch]:
    import pyarrow.parquet as pq

    with pq.ParquetFile(str(path)) as data:
        columns = _check_columns(manifest, data.schema_arrow.names, url)
        for index in range(data.num_row_groups):
            yield from data.read_row_group(index, columns=columns).to_batches(_BATCH_ROWS)


def _read_orc(manifest: Manifest, path: Path, url: str) -> Iterator[pa.RecordBatch]:
    import pyarrow.orc as orc

    data = orc.ORCFile(str(path))
    columns = _check_columns(manifest, data.schema.names, url)
    for index in range(data.nstripes):
        yield data.read_stripe(index, columns=columns)


def _objects(
    batch: pa.RecordBatch, manifest: Manifest, url: str, prefixes: list[str] | None
) -> pa.RecordBatch:
    """One batch of AWS columns as OBJECT_SCHEMA: current versions, under the prefixes."""
    names = set(batch.schema.names)
    n = batch.num_rows
    key = batch.column("key")
    if key.null_count:
        raise InventoryError(f"inventory data file {url}: a row has no key")
    key = key.cast(pa.string())
    keep = None
    if "is_latest" in names:
        keep = pc.fill_null(batch.column("is_latest"), True)
    if "is_delete_marker" in names:
        live = pc.invert(pc.fill_null(batch.column("is_delete_marker"), False))
        keep = live if keep is None else pc.and_(keep, live)
    if prefixes is not None:
        under = pc.starts_with(key, prefixes[0])
        for prefix in prefixes[1:]:
            under = pc.or_(under, pc.starts_with(key, prefix))
        keep = under if keep is None else pc.and_(keep, under)
    size = (
        pc.fill_null(batch.column("size").cast(pa.int64()), 0)
        if "size" in names
        else pa.array(np.zeros(n, np.int64))
    )
    if "e_tag" in names:
        raw = pc.fill_null(batch.column("e_tag").cast(pa.string()), "")
        # Listings carry ETags quoted ("..."); an inventory writes them bare.
        quoted = pc.binary_join_element_wise('"', raw, '"', "")
        bare = pc.or_(pc.equal(raw, ""), pc.starts_with(raw, '"'))
        etag = pc.if_else(bare, raw, quoted)
    else:
        etag = pc.fill_null(pa.nulls(n, pa.string()), "")
    if "last_modified_date" in names:
        modified = batch.column("last_modified_date")
        if not pa.types.is_timestamp(modified.type):
            modified = modified.cast(pa.timestamp("ms", tz="UTC"))
        if modified.type.tz is None:  # Parquet/ORC timestamps without a zone are UTC
            modified = modified.cast(pa.timestamp(modified.type.unit, tz="UTC"))
        modified = modified.cast(pa.timestamp("us", tz="UTC"))
    else:
        modified = pa.nulls(n, pa.timestamp("us", tz="UTC"))
    out = pa.record_batch([key, size, etag, modified], schema=OBJECT_SCHEMA)
    return out if keep is None else out.filter(keep)


# --------------------------------------------------------------------------- URL-encoded keys

_HEX = np.full(256, -1, np.int16)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = _i + 10


def decode_form_keys(keys: pa.Array | pa.ChunkedArray) -> pa.Array:
    """URL-decode keys as an S3 Inventory CSV encodes them: '+' is a space, %XX a byte, and the
    bytes UTF-8. Vectorised over the Arrow buffers; a '%' without two hex digits or bytes that
    are not UTF-8 raise ValueError."""
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks() if keys.num_chunks else pa.array([], pa.string())
    keys = keys.cast(pa.string())
    n = len(keys)
    _, offsets_buf, data_buf = keys.buffers()
    offsets = np.frombuffer(offsets_buf, np.int32, n + 1, keys.offset * 4).astype(np.int64)
    start, end = int(offsets[0]), int(offsets[-1])
    if data_buf is None or end == start:
        return keys
    data = np.frombuffer(data_buf, np.uint8, end - start, start).copy()
    offsets -= start
    plus = data == 0x2B
    percent = np.flatnonzero(data == 0x25)
    if not plus.any() and not percent.size:
        return keys
    data[plus] = 0x20
    if percent.size:
        # An escape needs two more bytes in its own key: none starts in a key's last two bytes.
        near_end = np.zeros(len(data) + 2, bool)
        near_end[offsets[1:] - 1] = True
        near_end[np.maximum(offsets[1:] - 2, 0)] = True
        hi = _HEX[data[np.minimum(percent + 1, len(data) - 1)]]
        lo = _HEX[data[np.minimum(percent + 2, len(data) - 1)]]
        wrong = near_end[percent] | (hi < 0) | (lo < 0)
        if wrong.any():
            at = percent[np.argmax(wrong)]
            first = int(np.searchsorted(offsets, at, side="right") - 1)
            raise ValueError(
                f"key {shown(keys[first].as_py())} is not URL-encoded: a '%' without two hex digits"
            )
        data[percent] = (hi * 16 + lo).astype(np.uint8)
        keep = np.ones(len(data), bool)
        keep[percent + 1] = False
        keep[percent + 2] = False
        removed = np.concatenate(([0], np.cumsum(~keep)))
        offsets = offsets - removed[offsets]
        data = data[keep]
    decoded = pa.StringArray.from_buffers(
        n, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data)
    )
    try:
        decoded.validate(full=True)
    except pa.ArrowInvalid:
        raise ValueError("a key is not UTF-8 once URL-decoded") from None
    return decoded


# --------------------------------------------------------------------------- the age limit


def age_text(as_of: datetime, now: datetime | None = None) -> str:
    """How old a snapshot is, for people: '3h12m', '2d4h'."""
    age = (now or datetime.now(timezone.utc)) - as_of
    if age.total_seconds() < 0:
        return "0s (created in the future by this clock)"
    whole = timedelta(seconds=int(age.total_seconds()) // 60 * 60 or int(age.total_seconds()))
    return format_duration(whole)


def too_old(
    source: str, as_of: datetime | None, max_age: timedelta, now: datetime | None = None
) -> str | None:
    """Why a storage side from an inventory report is too old to drive writes, or None."""
    if not source.startswith(SOURCE_PREFIX) or as_of is None:
        return None
    now = now or datetime.now(timezone.utc)
    if now - as_of <= max_age:
        return None
    return (
        f"the inventory report {source[len(SOURCE_PREFIX) :]} is {age_text(as_of, now)} old "
        f"(created {as_of.astimezone(timezone.utc):%Y-%m-%dT%H:%MZ}), more than the "
        f"{format_duration(max_age)} limit: storage may have changed too much since to act on "
        "it. Use a newer report or a listing, or raise the limit (--inventory-max-age, "
        "INTEGRITY_INVENTORY_MAX_AGE, or inventory_report.max_age in the spec)"
    )
