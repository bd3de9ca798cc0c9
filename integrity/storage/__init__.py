"""Storage backends behind one interface: S3-compatible buckets and local directories.

The backends load on first use (PEP 562), so a local-directory run never imports botocore.
"""

from __future__ import annotations

from integrity.lazy import lazy_exports

_WHERE = {
    "ListingFailed": "integrity.storage.base",
    "ListingPage": "integrity.storage.base",
    "ObjectHead": "integrity.storage.base",
    "ObjectStore": "integrity.storage.base",
    "list_common_prefixes": "integrity.storage.base",
    "LocalStorage": "integrity.storage.local",
    "S3Storage": "integrity.storage.s3",
}

__all__ = sorted(_WHERE)


__getattr__, __dir__ = lazy_exports(__name__, _WHERE, globals())
