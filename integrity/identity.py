"""Row identities: the column, or columns, that pick out one row of a table.

A table identified by one column (`id: id`) names a row by that column's value as text, as
reports always have. A composite identity (`id: [tenant_id, id]`, for ids unique only per
tenant) names it by a JSON array of the columns' values as text, in the spec's order:
`["org-1", "1"]`. The encoding is stable, so the report's `row_id`, the audit's `row_key` and the
re-read before every write agree on it; the audit's `key_column` is the column, or a JSON array
of the columns, in the same way. A NULL part is `null`; such a row cannot be told apart from
others and is never written.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

_NEEDS_ESCAPING = r'["\\\x00-\x1f]'


def text(value: Any) -> str | None:
    """A value as the inventory reads identities: text, None for NULL."""
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def encode(values: Sequence[Any]) -> str | None:
    """One row's identity: the value as text for one column, a JSON array for several."""
    if len(values) == 1:
        return text(values[0])
    return json.dumps([text(v) for v in values], ensure_ascii=False)


def decode(row_id: Any, size: int) -> tuple[str | None, ...] | None:
    """The identity's parts as text (None: not an identity of `size` columns)."""
    if size == 1:
        return (text(row_id),)
    if not isinstance(row_id, str):
        return None
    try:
        parts = json.loads(row_id)
    except ValueError:
        return None
    if (
        not isinstance(parts, list)
        or len(parts) != size
        or not all(p is None or isinstance(p, str) for p in parts)
    ):
        return None
    return tuple(parts)


def encode_columns(columns: Sequence[str]) -> str:
    """The audit's key_column: the column's name, or a JSON array of the names."""
    return columns[0] if len(columns) == 1 else json.dumps(list(columns))


def decode_columns(key_column: str) -> tuple[str, ...]:
    """The identity columns an audit record names (a plain name is never a JSON array)."""
    if key_column.startswith("["):
        return tuple(json.loads(key_column))
    return (key_column,)


def _quoted(values: pd.Series) -> pd.Series:
    """Each value as a JSON string (null for NULL), vectorised; only values with a quote, a
    backslash or a control character go through json.dumps."""
    array = pa.array(values, type=pa.string(), from_pandas=True)
    escape = pc.fill_null(pc.match_substring_regex(array, _NEEDS_ESCAPING), False)
    plain = pc.binary_join_element_wise('"', array, '"', "")
    quoted = pd.Series(plain.to_pandas(), index=values.index, dtype="object")
    mask = pd.Series(escape.to_numpy(zero_copy_only=False), index=values.index)
    if mask.any():
        quoted[mask] = [json.dumps(v, ensure_ascii=False) for v in values[mask]]
    return quoted.where(values.notna(), "null")


def encode_frame(parts: Sequence[pd.Series]) -> pd.Series:
    """`encode` over whole columns: the identity of every row at once."""
    if len(parts) == 1:
        return parts[0]
    joined = _quoted(parts[0])
    for part in parts[1:]:
        joined = joined + ", " + _quoted(part)
    return ("[" + joined + "]").astype("str")
