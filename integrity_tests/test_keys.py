from __future__ import annotations

import pandas as pd
import pytest

from integrity.keys import like_escape, normalized_array, parse_reference, resolve_references

BUCKET = "media"


@pytest.mark.parametrize(
    ("value", "bucket", "key"),
    [
        ("images/p1/a.jpg", None, "images/p1/a.jpg"),
        ("/images/p1/a.jpg", None, "images/p1/a.jpg"),
        ("s3://media/images/p1/a.jpg", "media", "images/p1/a.jpg"),
        ("http://localhost:9000/media/images/p1/a.jpg", "media", "images/p1/a.jpg"),
        ("https://media.s3.amazonaws.com/images/p1/a.jpg", "media", "images/p1/a.jpg"),
        ("https://media.s3.eu-west-1.amazonaws.com/images/p1/a.jpg", "media", "images/p1/a.jpg"),
        ("https://media.cdn.example.com/images/p1/a.jpg", "media", "images/p1/a.jpg"),
        (
            "https://s3.amazonaws.com/media/images/p1/a.jpg?X-Amz-Signature=abc",
            "media",
            "images/p1/a.jpg",
        ),
        (
            "https://media.0123456789abcdef0123456789abcdef.r2.cloudflarestorage.com/images/p1/a.jpg",
            "media",
            "images/p1/a.jpg",
        ),
        ("https://other.s3.amazonaws.com/images/p1/a.jpg", "other", "images/p1/a.jpg"),
        ("s3://other/images/p1/a.jpg", "other", "images/p1/a.jpg"),
    ],
)
def test_every_url_form_names_bucket_and_key(value: str, bucket: str | None, key: str) -> None:
    parsed = parse_reference(value, BUCKET)
    assert parsed is not None
    assert (parsed.bucket, parsed.key) == (bucket, key)


def test_percent_encoded_url_is_decoded_and_literal_kept_as_alternative() -> None:
    parsed = parse_reference("https://media.s3.amazonaws.com/images/my%20file%2B1.jpg", BUCKET)
    assert parsed is not None
    assert parsed.key == "images/my file+1.jpg"
    assert parsed.alternative == "images/my%20file%2B1.jpg"


def test_bare_key_with_percent_keeps_literal_first() -> None:
    parsed = parse_reference("images/100%25 done.jpg", BUCKET)
    assert parsed is not None
    assert parsed.key == "images/100%25 done.jpg"
    assert parsed.alternative == "images/100% done.jpg"


def test_plus_is_never_turned_into_a_space() -> None:
    parsed = parse_reference("https://media.s3.amazonaws.com/a+b.jpg", BUCKET)
    assert parsed is not None
    assert parsed.key == "a+b.jpg"
    assert parsed.alternative is None


@pytest.mark.parametrize("value", [None, "", "   "])
def test_null_and_blank_reference_nothing(value: str | None) -> None:
    assert parse_reference(value, BUCKET) is None


def test_resolve_references_matches_scalar_parser_on_mixed_column() -> None:
    values = pd.Series(
        [
            "images/a.jpg",
            None,
            "s3://media/images/b.jpg",
            "images/c%20d.jpg",
            "https://media.s3.amazonaws.com/images/%C3%A9.jpg",
            " images/padded.jpg ",
            "",
        ],
        dtype="str",
    )
    frame = resolve_references(values, BUCKET)
    assert list(frame.index) == list(values.index)
    for i, value in enumerate(values):
        parsed = parse_reference(None if pd.isna(value) else value, BUCKET)
        row = frame.iloc[i]
        if parsed is None:
            assert row["key"] is None
        else:
            assert (row["bucket"], row["key"], row["alternative"]) == (
                parsed.bucket,
                parsed.key,
                parsed.alternative,
            )
    assert frame.loc[4, "key"] == "images/é.jpg"


def test_normalized_equates_nfc_nfd_and_case() -> None:
    nfc = "images/Caf\u00e9.jpg"
    nfd = "images/Cafe\u0301.jpg"
    out = normalized_array(pd.Series([nfc, nfd, "IMAGES/CAFÉ.JPG"]))
    assert len(set(out.to_pylist())) == 1


def test_like_escape_escapes_wildcards() -> None:
    assert like_escape("documents/org_1/100%/") == "documents/org\\_1/100\\%/"
