"""Turn the many ways a database names an object into bucket and key.

A reference may be a bare key, ``s3://bucket/key``, a path-style URL ``https://host/bucket/key``,
a virtual-hosted URL ``https://bucket.host/key``, or any of those percent-encoded. All of them
name the same object. Because a key may itself contain ``%``, the literal and the decoded
spelling are both kept as candidates and the diff takes whichever exists.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

_VIRTUAL_HOSTED = (
    # AWS: bucket.s3.amazonaws.com, bucket.s3.eu-west-1.amazonaws.com, bucket.s3-eu-west-1.amazonaws.com
    re.compile(r"^(?P<bucket>.+?)\.s3(?:[.-][a-z0-9-]+)*\.amazonaws\.com(?:\.cn)?$"),
    # Cloudflare R2 account endpoint: bucket.<account-id>.r2.cloudflarestorage.com
    re.compile(r"^(?P<bucket>[^.]+)\.[0-9a-f]{32}\.(?:[a-z]+\.)?r2\.cloudflarestorage\.com$"),
)


@dataclass(frozen=True)
class ParsedReference:
    bucket: str | None  # None: no bucket named, so it is ours
    key: str  # the primary spelling
    alternative: str | None  # the other spelling (decoded or literal), if it differs


def _candidates(primary: str, secondary: str) -> tuple[str, str | None]:
    return primary, (secondary if secondary != primary else None)


def parse_reference(value: str | None, bucket: str) -> ParsedReference | None:
    """Parse one stored reference; None for NULL or blank values (they reference nothing)."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if "://" not in value:
        literal = value.lstrip("/")
        return ParsedReference(None, *_candidates(literal, unquote(literal)))
    scheme, _, rest = value.partition("://")
    scheme = scheme.lower()
    if scheme in ("s3", "r2", "gs"):
        ref_bucket, _, key = rest.partition("/")
        key = key.split("?", 1)[0] if scheme != "s3" else key
        return ParsedReference(ref_bucket, *_candidates(key, unquote(key)))
    if scheme not in ("http", "https"):
        return ParsedReference(f"{scheme}://", *_candidates(rest, rest))
    parts = urlsplit(value)
    host = (parts.hostname or "").lower()
    path = parts.path.lstrip("/")
    ref_bucket: str | None
    if host == bucket.lower() or host.startswith(bucket.lower() + "."):
        ref_bucket, raw = bucket, path
    else:
        for pattern in _VIRTUAL_HOSTED:
            match = pattern.match(host)
            if match:
                ref_bucket, raw = match.group("bucket"), path
                break
        else:
            ref_bucket, _, raw = path.partition("/")
    # In a URL the path is percent-encoded by convention, so the decoded spelling comes first.
    return ParsedReference(ref_bucket, *_candidates(unquote(raw), raw))


def resolve_references(values: pd.Series, bucket: str) -> pd.DataFrame:
    """Parse a column of references in bulk.

    Returns a frame aligned with ``values`` with columns ``bucket`` (None when ours), ``key``
    and ``alternative``. Plain keys, the common case, take a vectorised fast path; only URLs and
    keys with ``%`` go through the parser.
    """
    text = values.astype("object").where(values.notna(), None).to_numpy(dtype=object)
    buckets = np.full(len(text), None, dtype=object)
    keys = text.copy()
    alternatives = np.full(len(text), None, dtype=object)
    if len(values):
        as_str = values.astype("str")
        simple = (
            values.notna()
            & ~as_str.str.contains("://", regex=False)
            & ~as_str.str.contains("%", regex=False)
            & ~as_str.str.startswith("/")
            & (as_str.str.strip() == as_str)
            & (as_str != "")
        ).to_numpy(dtype=bool)
        for pos in np.flatnonzero(~simple):
            parsed = parse_reference(text[pos], bucket)
            if parsed is None:
                keys[pos] = None
            else:
                buckets[pos], keys[pos], alternatives[pos] = (
                    parsed.bucket,
                    parsed.key,
                    parsed.alternative,
                )
    return pd.DataFrame(
        {"bucket": buckets, "key": keys, "alternative": alternatives},
        index=values.index,
        dtype=object,
    )


def normalized_array(values: pd.Series | pa.Array) -> pa.Array:
    """The form two spellings share when they differ only by Unicode normalisation (NFC) or case."""
    array = (
        values
        if isinstance(values, pa.Array)
        else pa.array(values, type=pa.string(), from_pandas=True)
    )
    return pc.utf8_lower(pc.utf8_normalize(array, form="NFC"))


def like_escape(prefix: str) -> str:
    """Escape a literal prefix for ``LIKE ... ESCAPE '\\'``."""
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
