"""The one small interface every storage backend offers, and the listing page it yields."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

import pyarrow as pa

PAGE_SIZE = 1000

T = TypeVar("T")


PAGE_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("size", pa.int64()),
        ("etag", pa.string()),
        ("last_modified", pa.timestamp("us", tz="UTC")),
    ]
)
"""The columns of a listing page in Arrow (those of the storage inventory)."""


class ListingPage:
    """One page of a listing, already in columns (no dict per object).

    A backend fills either Python lists (keys, sizes, etags, last_modified) or one Arrow record
    batch of PAGE_SCHEMA; `to_batch()` gives the batch either way, without a Python object per
    key when the page came as a batch, and the list attributes read a batch as lists on first use.
    """

    def __init__(
        self,
        keys: list[str] | None = None,
        sizes: list[int] | None = None,
        etags: list[str] | None = None,
        last_modified: list[datetime] | None = None,
        common_prefixes: list[str] | None = None,
        truncated: bool | None = None,
        *,
        batch: pa.RecordBatch | None = None,
    ) -> None:
        if batch is not None:
            if any(column is not None for column in (keys, sizes, etags, last_modified)):
                raise ValueError("a listing page is either lists or one record batch")
            if not batch.schema.equals(PAGE_SCHEMA):
                raise ValueError(f"a listing page's batch has the schema {batch.schema}")
        self._batch = batch
        self._lists: list[list[Any]] | None = (
            None
            if batch is not None
            else [keys or [], sizes or [], etags or [], last_modified or []]
        )
        self.common_prefixes: list[str] = common_prefixes or []
        # False on the last page of a listing, True when more follow; None when the store cannot say.
        self.truncated = truncated

    def _column(self, index: int) -> list[Any]:
        if self._lists is None:
            assert self._batch is not None
            self._lists = [column.to_pylist() for column in self._batch.columns]
        return self._lists[index]

    @property
    def keys(self) -> list[str]:
        return self._column(0)

    @property
    def sizes(self) -> list[int]:
        return self._column(1)

    @property
    def etags(self) -> list[str]:
        return self._column(2)

    @property
    def last_modified(self) -> list[datetime]:
        return self._column(3)

    def to_batch(self) -> pa.RecordBatch:
        """The page as one record batch of PAGE_SCHEMA."""
        if self._batch is not None:
            return self._batch
        keys, sizes, etags, last_modified = (
            self._column(0),
            self._column(1),
            self._column(2),
            self._column(3),
        )
        return pa.record_batch(
            [
                pa.array(keys, pa.string()),
                pa.array(sizes, pa.int64()),
                pa.array(etags, pa.string()),
                pa.array(last_modified, pa.timestamp("us", tz="UTC")),
            ],
            schema=PAGE_SCHEMA,
        )

    def __len__(self) -> int:
        return (
            self._batch.num_rows
            if self._lists is None and self._batch is not None
            else len(self.keys)
        )

    def __repr__(self) -> str:
        return f"ListingPage({len(self)} keys, {len(self.common_prefixes)} prefixes, truncated={self.truncated})"


@dataclass(frozen=True)
class ObjectHead:
    key: str
    size: int
    etag: str
    last_modified: datetime


class ListingFailed(Exception):
    """A listing request failed after its retries; the listing is incomplete."""


class ObjectStore(Protocol):
    """An S3-compatible bucket or a local directory, as the reconciliation sees it."""

    bucket: str
    requests: int
    backend: str
    """The kind of store ('s3' or 'local'), whose rules integrity.keys.key_problem knows."""

    @property
    def description(self) -> str:
        """Where this store is, safe to print (no credentials)."""

    def check_access(self) -> None:
        """Raise StorageError with one readable line if the store cannot be listed at all."""

    def list_pages(
        self, prefix: str = "", delimiter: str | None = None, *, start_after: str | None = None
    ) -> Iterator[ListingPage]:
        """Yield pages under prefix, in key order, until the listing says it is complete.

        start_after: list only keys sorting after this one (S3's StartAfter), to resume a pass.
        """

    def head(self, key: str) -> ObjectHead | None:
        """The object's metadata, or None if it does not exist."""

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None: ...

    def get_bytes(self, key: str) -> bytes: ...


def with_retries(
    call: Callable[[], T],
    is_retryable: Callable[[BaseException], bool],
    *,
    attempts: int = 5,
    base_delay: float = 0.2,
    max_delay: float = 5.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call, retrying retryable failures with exponential backoff and full jitter."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as exc:
            if attempt == attempts or not is_retryable(exc):
                raise
            sleep(random.uniform(0, min(max_delay, base_delay * 2 ** (attempt - 1))))
    raise AssertionError("unreachable")


def list_common_prefixes(store: ObjectStore, prefix: str) -> list[str]:
    """The 'directories' directly under prefix (one delimiter listing)."""
    found: list[str] = []
    for page in store.list_pages(prefix, delimiter="/"):
        found.extend(page.common_prefixes)
    return found
