"""The one small interface every storage backend offers, and the listing page it yields."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, TypeVar

PAGE_SIZE = 1000

T = TypeVar("T")


@dataclass
class ListingPage:
    """One page of a listing, already in columns (no dict per object)."""

    keys: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    etags: list[str] = field(default_factory=list)
    last_modified: list[datetime] = field(default_factory=list)
    common_prefixes: list[str] = field(default_factory=list)
    # False on the last page of a listing, True when more follow; None when the store cannot say.
    truncated: bool | None = None

    def __len__(self) -> int:
        return len(self.keys)


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
