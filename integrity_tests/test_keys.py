from __future__ import annotations

import pandas as pd
import pytest

from integrity.keys import (
    key_problem,
    key_problems,
    like_escape,
    normalized_array,
    parse_reference,
    resolve_references,
    usable_references,
)

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


MALFORMED = [
    "http://[::1/b/k.jpg",
    "https://[zz]/k",
    "https://[::1/media/a.jpg?x=1",
    "images/a\x00b.jpg",
    "s3://media/images/\x1b[2J.jpg",
    "s3://media/",
    "s3://media",
    "s3:///a.jpg",
    "https://media.s3.amazonaws.com/",
    "https://example.com/",
    "/",
]


@pytest.mark.parametrize("value", MALFORMED)
def test_a_malformed_reference_has_a_problem_and_no_key(value: str) -> None:
    parsed = parse_reference(value, BUCKET)
    assert parsed is not None and parsed.problem and parsed.key == ""
    assert not any(c in parsed.problem for c in "\x00\x1b")


def test_resolve_references_keeps_going_past_malformed_values() -> None:
    values = pd.Series(["images/a.jpg", *MALFORMED, "s3://media/images/b.jpg"], dtype="str")
    frame = resolve_references(values, BUCKET)
    assert frame["key"].tolist() == ["images/a.jpg", *[None] * len(MALFORMED), "images/b.jpg"]
    assert frame["problem"].notna().tolist() == [False, *[True] * len(MALFORMED), False]


def test_a_spelling_with_a_control_character_is_dropped_not_the_reference() -> None:
    parsed = parse_reference("images/a%00b.jpg", BUCKET)  # decoded, %00 is a NUL
    assert parsed == parse_reference("images/a%00b.jpg", BUCKET)
    assert parsed is not None and (parsed.key, parsed.alternative, parsed.problem) == (
        "images/a%00b.jpg",
        None,
        None,
    )


KEYS = [
    "images/a.jpg",
    "../../etc/hostname",
    "images/../a.jpg",
    "images/./a.jpg",
    "images/.hidden/..a",
    "/etc/hostname",
    "images//a.jpg",
    "images/",
    "images/a\x00b.jpg",
    "",
    "images/" + "x" * 255,
    "images/" + "x" * 256,
    "images/" + "\u00e9" * 127 + "x",
    "images/" + "\u00e9" * 128,
    "images/" + "\U0001f600" * 64,
    "k" * 1024,
    "k" * 1025,
    "k" * 1022 + "\u00e9",
    "/".join(["d" * 200] * 6),
]


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_key_problems_in_bulk_match_the_one_key_rule(backend: str) -> None:
    keys = pd.Series([*KEYS, None], dtype="str")
    bulk = key_problems(keys, backend)
    assert bulk.tolist() == [key_problem(k, backend) for k in KEYS] + [None]
    valid = {k for k in KEYS if key_problem(k, backend) is None}
    if backend == "local":
        assert valid == {
            "images/a.jpg",
            "images/.hidden/..a",
            "images/" + "x" * 255,
            "images/" + "\u00e9" * 127 + "x",
            "/".join(["d" * 200] * 6),
        }
    else:
        assert valid == set(KEYS) - {
            "",
            "k" * 1025,
            "/".join(["d" * 200] * 6),
        }


def test_usable_references_judge_only_this_bucket_and_keep_a_valid_spelling() -> None:
    values = pd.Series(
        [
            "../../etc/hostname",  # ours: refused by a directory
            "s3://other/../x",  # another bucket's rules are not ours to judge
            "images/a%2F..%2Fb.jpg",  # the decoded spelling has '..'; the literal one is fine
        ],
        dtype="str",
    )
    frame = usable_references(values, BUCKET, "local")
    assert frame["key"].tolist() == [None, "../x", "images/a%2F..%2Fb.jpg"]
    assert frame["alternative"].tolist() == [None, None, None]
    assert frame["problem"].tolist() == ["names a key that has a '..' segment", None, None]
    assert usable_references(values, BUCKET, "s3")["problem"].isna().all()
