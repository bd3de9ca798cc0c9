"""Storage backends behind one interface: S3-compatible buckets and local directories.

The backends load on first use (PEP 562), so a local-directory run never imports botocore.
"""

from __future__ import annotations

import importlib
from typing import Any

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


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
