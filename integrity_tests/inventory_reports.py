"""S3 Inventory reports written in AWS's exact layout, for tests and benchmarks.

    prefix/source-bucket/config-id/YYYY-MM-DDTHH-MMZ/manifest.json
    prefix/source-bucket/config-id/YYYY-MM-DDTHH-MMZ/manifest.checksum
    prefix/source-bucket/config-id/data/<uuid>.csv.gz | .parquet | .orc

to a bucket (any boto3 client: moto over HTTP in the tests) or to a directory standing for the
destination bucket. Everything is vectorised over Arrow arrays (the keys' URL-encoding too), so
a benchmark can write tens of millions of keys in seconds; a report is written from one table
split into `files` data files, or from an iterable of tables (one data file each).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

CSV_FIELDS = ("Bucket", "Key", "Size", "LastModifiedDate", "ETag", "StorageClass")
VERSIONED_FIELDS = (
    "Bucket",
    "Key",
    "VersionId",
    "IsLatest",
    "IsDeleteMarker",
    "Size",
    "LastModifiedDate",
    "ETag",
    "StorageClass",
)
SUFFIX = {"CSV": ".csv.gz", "Parquet": ".parquet", "ORC": ".orc"}
_PARQUET_TYPE = {
    "bucket": "required binary bucket (UTF8)",
    "key": "required binary key (UTF8)",
    "version_id": "optional binary version_id (UTF8)",
    "is_latest": "optional boolean is_latest",
    "is_delete_marker": "optional boolean is_delete_marker",
    "size": "optional int64 size",
    "last_modified_date": "optional int64 last_modified_date (TIMESTAMP_MILLIS)",
    "e_tag": "optional binary e_tag (UTF8)",
    "storage_class": "optional binary storage_class (UTF8)",
}
_ORC_TYPE = {
    "bucket": "string",
    "key": "string",
    "version_id": "string",
    "is_latest": "boolean",
    "is_delete_marker": "boolean",
    "size": "bigint",
    "last_modified_date": "timestamp",
    "e_tag": "string",
    "storage_class": "string",
}
_ARROW_TYPE = {
    "bucket": pa.string(),
    "key": pa.string(),
    "version_id": pa.string(),
    "is_latest": pa.bool_(),
    "is_delete_marker": pa.bool_(),
    "size": pa.int64(),
    "last_modified_date": pa.timestamp("ms", tz="UTC"),
    "e_tag": pa.string(),
    "storage_class": pa.string(),
}


def snake(name: str) -> str:
    import re

    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


# --------------------------------------------------------------------------- destinations


class Destination(Protocol):
    name: str

    def put(self, key: str, data: bytes) -> None: ...

    def url(self, key: str) -> str: ...


@dataclass
class DirectoryDestination:
    """A directory standing for the destination bucket: keys are paths under it."""

    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    def put(self, key: str, data: bytes) -> None:
        path = self.root.joinpath(*key.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def url(self, key: str) -> str:
        return str(self.root.joinpath(*key.split("/")))


@dataclass
class BucketDestination:
    client: Any
    bucket: str

    @property
    def name(self) -> str:
        return self.bucket

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


# --------------------------------------------------------------------------- the columns


def objects_table(
    keys: Sequence[str] | pa.Array,
    *,
    source_bucket: str,
    sizes: Sequence[int] | pa.Array | None = None,
    etags: Sequence[str] | pa.Array | None = None,
    last_modified: Sequence[datetime] | pa.Array | None = None,
    is_latest: Sequence[bool] | pa.Array | None = None,
    is_delete_marker: Sequence[bool] | pa.Array | None = None,
    version_ids: Sequence[str | None] | pa.Array | None = None,
) -> pa.Table:
    """The inventory's columns by their Parquet/ORC names (a CSV writes them as fileSchema says)."""
    key = pa.array(keys, pa.string())
    n = len(key)
    when = (
        pa.array(last_modified, pa.timestamp("ms", tz="UTC"))
        if last_modified is not None
        else pa.array(np.full(n, 1_700_000_000_000, np.int64), pa.timestamp("ms", tz="UTC"))
    )
    columns = {
        "bucket": pa.array(np.full(n, source_bucket, object), pa.string())
        if n < 1_000_000
        else pc.fill_null(pa.nulls(n, pa.string()), source_bucket),
        "key": key,
        "version_id": pa.array(version_ids, pa.string())
        if version_ids is not None
        else pa.nulls(n, pa.string()),
        "is_latest": pa.array(is_latest, pa.bool_())
        if is_latest is not None
        else pc.fill_null(pa.nulls(n, pa.bool_()), True),
        "is_delete_marker": pa.array(is_delete_marker, pa.bool_())
        if is_delete_marker is not None
        else pc.fill_null(pa.nulls(n, pa.bool_()), False),
        "size": pa.array(sizes, pa.int64())
        if sizes is not None
        else pa.array(np.ones(n, np.int64)),
        "last_modified_date": when,
        "e_tag": pa.array(etags, pa.string())
        if etags is not None
        else pc.fill_null(pa.nulls(n, pa.string()), "d41d8cd98f00b204e9800998ecf8427e"),
        "storage_class": pc.fill_null(pa.nulls(n, pa.string()), "STANDARD"),
    }
    return pa.table(columns)


def table_from_listing(objects: Any, *, source_bucket: str) -> pa.Table:
    """The columns of an inventory of what a listing found (a StorageInventory's `objects`)."""
    return objects_table(
        list(objects["key"]),
        source_bucket=source_bucket,
        sizes=list(objects["size"]),
        etags=[str(e).strip('"') for e in objects["etag"]],
        last_modified=list(objects["last_modified"]),
    )


# --------------------------------------------------------------------------- encoding

_SAFE = np.zeros(256, bool)
for _c in b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-*_":
    _SAFE[_c] = True
_HEXDIGITS = np.frombuffer(b"0123456789ABCDEF", np.uint8)


def form_encode(keys: pa.Array) -> pa.Array:
    """URL-encode keys as an S3 Inventory CSV does (HTML form encoding of the UTF-8 bytes:
    letters, digits and '.-*_' kept, a space as '+', every other byte as %XX), vectorised."""
    keys = pa.array(keys, pa.string()) if not isinstance(keys, pa.Array) else keys
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    n = len(keys)
    _, offsets_buf, data_buf = keys.buffers()
    offsets = np.frombuffer(offsets_buf, np.int32, n + 1, keys.offset * 4).astype(np.int64)
    start, end = int(offsets[0]), int(offsets[-1])
    if data_buf is None or end == start:
        return keys
    data = np.frombuffer(data_buf, np.uint8, end - start, start)
    offsets -= start
    space = data == 0x20
    escape = ~_SAFE[data] & ~space
    at = np.concatenate(([0], np.cumsum(1 + 2 * escape.astype(np.int64))))
    out = np.empty(int(at[-1]), np.uint8)
    pos = at[:-1]
    out[pos] = data
    out[pos[space]] = 0x2B
    where, byte = pos[escape], data[escape]
    out[where] = 0x25
    out[where + 1] = _HEXDIGITS[byte >> 4]
    out[where + 2] = _HEXDIGITS[byte & 15]
    return pa.StringArray.from_buffers(
        n, pa.py_buffer(at[offsets].astype(np.int32)), pa.py_buffer(out)
    )


def _csv_bytes(table: pa.Table, fields: Sequence[str]) -> bytes:
    import pyarrow.csv as pacsv

    columns = []
    for name in fields:
        column = table.column(snake(name)).combine_chunks()
        if name == "Key":
            column = form_encode(column)
        elif name == "LastModifiedDate":
            # Arrow spells a UTC timestamp[ms] '2024-05-01 12:00:00.123Z'; AWS puts a 'T'.
            column = pc.replace_substring(column.cast(pa.string()), " ", "T", max_replacements=1)
        elif column.type == pa.bool_():
            column = pc.if_else(column, "true", "false")
        columns.append(column.cast(pa.string()))
    strings = pa.table(columns, names=list(fields))
    sink = pa.BufferOutputStream()
    pacsv.write_csv(
        strings, sink, pacsv.WriteOptions(include_header=False, quoting_style="all_valid")
    )
    # gzip at level 1: a valid .csv.gz like AWS's, written several times faster than level 9.
    return gzip.compress(sink.getvalue().to_pybytes(), compresslevel=1, mtime=0)


def _parquet_bytes(table: pa.Table, fields: Sequence[str]) -> bytes:
    import pyarrow.parquet as pq

    names = [snake(f) for f in fields]
    sink = io.BytesIO()
    pq.write_table(
        table.select(names).cast(pa.schema([(n, _ARROW_TYPE[n]) for n in names])),
        sink,
        row_group_size=64 * 1024,
    )
    return sink.getvalue()


def _orc_bytes(table: pa.Table, fields: Sequence[str]) -> bytes:
    import pyarrow.orc as orc

    names = [snake(f) for f in fields]
    # ORC timestamps carry no zone: AWS's are UTC.
    types = [pa.timestamp("ms") if n == "last_modified_date" else _ARROW_TYPE[n] for n in names]
    sink = io.BytesIO()
    orc.write_table(
        table.select(names).cast(pa.schema(list(zip(names, types)))),
        sink,
        stripe_size=4 << 20,
    )
    return sink.getvalue()


def file_schema(fmt: str, fields: Sequence[str]) -> str:
    names = [snake(f) for f in fields]
    if fmt == "CSV":
        return ", ".join(fields)
    if fmt == "Parquet":
        return "message s3.inventory { " + " ".join(f"{_PARQUET_TYPE[n]};" for n in names) + " }"
    return "struct<" + ",".join(f"{n}:{_ORC_TYPE[n]}" for n in names) + ">"


def data_bytes(fmt: str, table: pa.Table, fields: Sequence[str]) -> bytes:
    return {"CSV": _csv_bytes, "Parquet": _parquet_bytes, "ORC": _orc_bytes}[fmt](table, fields)


# --------------------------------------------------------------------------- reports


@dataclass
class WrittenReport:
    destination: str
    """The SOURCE naming the config-id folder: s3://dest/prefix/source-bucket/config-id/ or a path."""
    manifest: str
    """The SOURCE naming this report's manifest.json."""
    manifest_key: str
    checksum_key: str
    data_keys: list[str] = field(default_factory=list)
    created_at: datetime | None = None


def folder_name(created_at: datetime) -> str:
    return created_at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H-%MZ")


def write_report(
    destination: Destination,
    tables: pa.Table | Iterable[pa.Table],
    *,
    source_bucket: str,
    created_at: datetime,
    fmt: str = "CSV",
    prefix: str = "inventory",
    config_id: str = "daily",
    files: int = 1,
    fields: Sequence[str] = CSV_FIELDS,
    checksum: bool = True,
    manifest_extra: dict[str, Any] | None = None,
) -> WrittenReport:
    """One report: its data files, then manifest.json, then manifest.checksum (AWS's order)."""
    config = f"{prefix.strip('/') + '/' if prefix.strip('/') else ''}{source_bucket}/{config_id}/"
    if isinstance(tables, pa.Table):
        rows = tables.num_rows
        step = max(1, -(-rows // max(1, files)))
        tables = [tables.slice(i, step) for i in range(0, max(rows, 1), step)]
    entries = []
    report = WrittenReport(
        destination=destination.url(config)
        + ("" if destination.url(config).endswith("/") else "/"),
        manifest="",
        manifest_key="",
        checksum_key="",
        created_at=created_at,
    )
    for table in tables:
        data = data_bytes(fmt, table, fields)
        key = f"{config}data/{uuid.uuid4()}{SUFFIX[fmt]}"
        destination.put(key, data)
        report.data_keys.append(key)
        entries.append(
            {"key": key, "size": len(data), "MD5checksum": hashlib.md5(data).hexdigest()}
        )
    manifest = {
        "sourceBucket": source_bucket,
        "destinationBucket": f"arn:aws:s3:::{destination.name}",
        "version": "2016-11-30",
        "creationTimestamp": str(int(created_at.timestamp() * 1000)),
        "fileFormat": fmt,
        "fileSchema": file_schema(fmt, fields),
        "files": entries,
        **(manifest_extra or {}),
    }
    body = json.dumps(manifest, indent=2).encode()
    folder = f"{config}{folder_name(created_at)}/"
    report.manifest_key = folder + "manifest.json"
    report.checksum_key = folder + "manifest.checksum"
    report.manifest = destination.url(report.manifest_key)
    destination.put(report.manifest_key, body)
    if checksum:
        destination.put(report.checksum_key, hashlib.md5(body).hexdigest().encode())
    return report
