"""Storage backends behind one interface: S3-compatible buckets and local directories."""

from integrity.storage.base import (
    ListingFailed,
    ListingPage,
    ObjectHead,
    ObjectStore,
    list_common_prefixes,
)
from integrity.storage.local import LocalStorage
from integrity.storage.s3 import S3Storage

__all__ = [
    "ListingFailed",
    "ListingPage",
    "LocalStorage",
    "ObjectHead",
    "ObjectStore",
    "S3Storage",
    "list_common_prefixes",
]
