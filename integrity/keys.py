"""Turn the many ways a database names an object into bucket and key.

A reference may be a bare key, ``s3://bucket/key``, a path-style URL ``https://host/bucket/key``,
a virtual-hosted URL ``https://bucket.host/key``, or any of those percent-encoded. All of them
name the same object. Because a key may itself contain ``%``, the literal and the decoded
spelling are both kept as candidates and the diff takes whichever exists.

A reference that names no object at all (a URL that cannot be parsed, no key, a control
character) is not an error: it carries the reason as its `problem`, and the diff reports it.
What a key may look like also depends on the store: `key_problem` and `key_problems` say, for
each kind of backend, why a key cannot name an object there.
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


CONTROL_CHARACTERS = r"[\x00-\x1f\x7f]"
_CONTROL = re.compile(CONTROL_CHARACTERS)
# A URL, a '%', a leading '/' or a control character: values the parser must look at.
_NEEDS_PARSER = "://|%|^/|" + CONTROL_CHARACTERS
# What may make a key unusable in a directory (judged exactly, one by one, when it matches).
_LOCAL_SUSPECT = r"^/|/$|//|(^|/)\.\.?(/|$)|\x00"

S3_MAX_KEY_BYTES = 1024
LOCAL_MAX_NAME_BYTES = 255
BACKENDS = ("s3", "local")
"""The kinds of store whose key rules `key_problem` knows (an ObjectStore's `backend`)."""


@dataclass(frozen=True)
class ParsedReference:
    bucket: str | None  # None: no bucket named, so it is ours
    key: str  # the primary spelling ("" when there is a problem)
    alternative: str | None  # the other spelling (decoded or literal), if it differs
    problem: str | None = None  # why the value names no object, if it does not


def _control_problem(text: str) -> str | None:
    match = _CONTROL.search(text)
    return None if match is None else f"holds the control character U+{ord(match.group()):04X}"


def _invalid(problem: str) -> ParsedReference:
    return ParsedReference(None, "", None, problem)


def _reference(bucket: str | None, primary: str, secondary: str) -> ParsedReference:
    """The spellings that can be keys: not empty, no control character (a decoded %00, say)."""
    if not primary:
        named = f"bucket {bucket!r} but " if bucket else ""
        return _invalid(f"names {named}no key")
    usable = [s for s in dict.fromkeys((primary, secondary)) if not _CONTROL.search(s)]
    if not usable:
        return _invalid(f"the key {_control_problem(primary)}")
    return ParsedReference(bucket, usable[0], usable[1] if len(usable) > 1 else None)


def parse_reference(value: str | None, bucket: str) -> ParsedReference | None:
    """Parse one stored reference; None for NULL or blank values (they reference nothing).

    Never raises on a malformed value: the result then has a `problem` and no key.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    control = _control_problem(value)
    if control is not None:
        return _invalid(control)
    if "://" not in value:
        literal = value.lstrip("/")
        return _reference(None, literal, unquote(literal))
    scheme, _, rest = value.partition("://")
    scheme = scheme.lower()
    if scheme in ("s3", "r2", "gs"):
        ref_bucket, _, key = rest.partition("/")
        if not ref_bucket:
            return _invalid(f"names no bucket after {scheme}://")
        key = key.split("?", 1)[0] if scheme != "s3" else key
        return _reference(ref_bucket, key, unquote(key))
    if scheme not in ("http", "https"):
        return _reference(f"{scheme}://", rest, rest)
    try:
        parts = urlsplit(value)
        host = (parts.hostname or "").lower()
    except ValueError as exc:  # an unbalanced or invalid [IPv6] host, for one
        return _invalid(f"is not a valid URL ({exc})")
    return _url_reference(host, parts.path.lstrip("/"), bucket)


def _url_reference(host: str, path: str, bucket: str) -> ParsedReference:
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
    if not ref_bucket:
        return _invalid(f"names no bucket and no key (host {host!r})")
    # In a URL the path is percent-encoded by convention, so the decoded spelling comes first.
    return _reference(ref_bucket, unquote(raw), raw)


def resolve_references(values: pd.Series, bucket: str) -> pd.DataFrame:
    """Parse a column of references in bulk.

    Returns a frame aligned with ``values`` with columns ``bucket`` (None when ours), ``key``,
    ``alternative`` and ``problem`` (why a value names no object; its key is then None). Plain
    keys, the common case, take a vectorised fast path; only URLs, keys with ``%`` and values
    with a control character go through the parser.
    """
    text = values.astype("object").where(values.notna(), None).to_numpy(dtype=object)
    buckets = np.full(len(text), None, dtype=object)
    keys = text.copy()
    alternatives = np.full(len(text), None, dtype=object)
    problems = np.full(len(text), None, dtype=object)
    if len(values):
        as_str = values.astype("str")
        # One pass of the regex engine over the column finds what needs the parser.
        needs_parser = pc.match_substring_regex(
            pa.array(as_str, type=pa.string(), from_pandas=True), _NEEDS_PARSER
        )
        simple = (
            values.notna().to_numpy(dtype=bool)
            & ~needs_parser.fill_null(True).to_numpy(zero_copy_only=False)
            & (as_str.str.strip() == as_str).to_numpy(dtype=bool)
            & (as_str != "").to_numpy(dtype=bool)
        )
        for pos in np.flatnonzero(~simple):
            parsed = parse_reference(text[pos], bucket)
            if parsed is None:
                keys[pos] = None
            elif parsed.problem is not None:
                keys[pos], problems[pos] = None, parsed.problem
            else:
                buckets[pos], keys[pos], alternatives[pos] = (
                    parsed.bucket,
                    parsed.key,
                    parsed.alternative,
                )
    return pd.DataFrame(
        {"bucket": buckets, "key": keys, "alternative": alternatives, "problem": problems},
        index=values.index,
        dtype=object,
    )


# --------------------------------------------------------------------------- what a store holds


def _local_problem(path: str) -> str | None:
    """Why a relative path with '/' separators cannot name a file under a directory."""
    if "\x00" in path:
        return "holds a NUL character"
    if path.startswith("/"):
        return "is an absolute path"
    parts = path.split("/")
    for part in parts:
        if part in (".", ".."):
            return f"has a {part!r} segment"
    if "" in parts:
        return "has an empty segment ('//')"
    for part in parts:
        size = len(part.encode("utf-8", "surrogatepass"))
        if size > LOCAL_MAX_NAME_BYTES:
            return (
                f"has a segment of {size:,} bytes; a directory entry holds at most "
                f"{LOCAL_MAX_NAME_BYTES}"
            )
    return None


def key_problem(key: str, backend: str) -> str | None:
    """Why a store of this kind cannot hold an object under `key`; None if it can.

    s3: at most 1,024 bytes of UTF-8. local: a relative path inside the directory, no NUL, no
    '.', '..' or empty segment, no trailing '/', every segment at most 255 bytes.
    """
    if not key:
        return "is empty"
    if backend == "s3":
        size = len(key.encode("utf-8", "surrogatepass"))
        if size > S3_MAX_KEY_BYTES:
            return f"is {size:,} bytes of UTF-8; an S3 key holds at most {S3_MAX_KEY_BYTES:,}"
        return None
    if backend == "local":
        if key.endswith("/") and not key.startswith("/"):
            return "ends in '/' (a directory, not a file)"
        return _local_problem(key)
    raise ValueError(f"unknown storage backend {backend!r} (one of {', '.join(BACKENDS)})")


def prefix_problem(prefix: str, backend: str) -> str | None:
    """Why a store of this kind cannot list under `prefix`; None if it can ('' is the root)."""
    if backend != "local" or not prefix:
        return None
    return _local_problem(prefix.removesuffix("/") or "/")


def key_problems(keys: pd.Series, backend: str) -> pd.Series:
    """`key_problem` for a column of keys (None where valid or null), aligned with `keys`.

    The rules run vectorised over the whole column; only the few keys they flag are looked at
    one by one, for the reason.
    """
    out = np.full(len(keys), None, dtype=object)
    if keys.empty:
        return pd.Series(out, index=keys.index, dtype=object)
    array = pa.array(keys, type=pa.string(), from_pandas=True)
    size = pc.binary_length(array)
    suspect = pc.equal(size, 0)
    if backend == "s3":
        suspect = pc.or_(suspect, pc.greater(size, S3_MAX_KEY_BYTES))
    elif backend == "local":
        suspect = pc.or_(suspect, pc.match_substring_regex(array, _LOCAL_SUSPECT))
        # Only a key over 255 bytes can have a segment over 255, and only if some segment has
        # 64 characters or more (4 bytes each at most): the few such keys are judged exactly.
        long = np.flatnonzero(
            pc.greater(size, LOCAL_MAX_NAME_BYTES).fill_null(False).to_numpy(zero_copy_only=False)
        )
        if len(long):
            wide = pc.match_substring_regex(pc.take(array, long), "[^/]{64,}")
            flagged = np.zeros(len(array), dtype=bool)
            flagged[long[wide.to_numpy(zero_copy_only=False)]] = True
            suspect = pc.or_(suspect, pa.array(flagged))
    else:
        raise ValueError(f"unknown storage backend {backend!r} (one of {', '.join(BACKENDS)})")
    for pos in np.flatnonzero(suspect.fill_null(False).to_numpy(zero_copy_only=False)):
        out[pos] = key_problem(keys.iat[pos], backend)
    return pd.Series(out, index=keys.index, dtype=object)


def usable_references(values: pd.Series, bucket: str, backend: str) -> pd.DataFrame:
    """`resolve_references`, keeping only the spellings a store of this kind can hold.

    `problem` says why a reference names no object at all (None where it names one): the
    parser's reason, or the store's when neither spelling of a key in this bucket is valid.
    Keys in other buckets are not judged (their store may have other rules).
    """
    parsed = resolve_references(values, bucket)
    ours = parsed["bucket"].isna() | (parsed["bucket"] == bucket)
    key_problem = key_problems(parsed["key"].where(ours), backend)
    alternative_problem = key_problems(parsed["alternative"].where(ours), backend)
    if key_problem.isna().all() and alternative_problem.isna().all():
        return parsed
    key = parsed["key"].where(key_problem.isna(), None)
    alternative = parsed["alternative"].where(alternative_problem.isna(), None)
    promoted = key.isna() & alternative.notna()
    parsed["key"] = key.where(~promoted, alternative)
    parsed["alternative"] = alternative.where(~promoted, None)
    unusable = key_problem.loc[parsed["key"].isna() & key_problem.notna()]
    parsed.loc[unusable.index, "problem"] = "names a key that " + unusable.astype("object")
    return parsed


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
